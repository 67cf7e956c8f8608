"""Cost of a `pretrain.piece_len` step against the demo's whole-row step (issue 19).

A/B in one process, interleaved: the demo's fresh model (params.yaml `model`) takes optimizer
steps (MLM forward + backward + AdamW, as `pretrain` does) on whole packed rows (1,024 tokens x
`pretrain.batch_size`) and on short pieces cut from the same rows; each variant keeps its own
model and optimizer, and the table gives the minimum over the repetitions of the mean seconds
per step, and the ratio to the whole-row step. Multiply the ratio by the step counts to estimate
what a piece setting adds to the pretrain stage.

    python benchmarks/piece_steps.py --shards data/shards --reps 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from machine import cpu_flags, load_average  # noqa: E402

from longdoc.components.core.config import load_params  # noqa: E402
from longdoc.components.data import tokenize as tok  # noqa: E402
from longdoc.components.training.common import adamw  # noqa: E402
from longdoc.components.training.pretrain import (  # noqa: E402
    MaskedLM,
    PackedRows,
    PiecedRows,
    build_model,
)

#: (piece_len or None for whole rows, rows or pieces a step)
VARIANTS = ((None, 4), (32, 32), (32, 16), (64, 16))


def _setup(params, shards: Path, tokenizer, piece_len: int | None):
    torch.manual_seed(0)
    model = build_model(params.pretrain, params.model, tokenizer)
    model.train()
    data = PackedRows(shards)
    if piece_len:
        data = PiecedRows(data, piece_len)
    objective = MaskedLM(tokenizer, len(tokenizer), params.pretrain.mlm_probability)
    return model, adamw(model, 1e-3, 0.01), data, objective


def _time_steps(setup, first: int, batch: int, steps: int) -> float:
    model, optimizer, data, objective = setup
    start = time.perf_counter()
    for i in range(steps):
        b = objective.batch(data, first + i * batch, batch, 0)
        loss = objective.loss_sum(model, b, torch.device("cpu")) / objective.targets(b)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=Path, default=Path("data/shards"))
    ap.add_argument("--params", type=Path, default=HERE.parent / "params.yaml")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="steps per variant per repetition")
    args = ap.parse_args()
    params = load_params(args.params, [])
    tokenizer = tok.load_tokenizer(args.shards)
    setups = {v: _setup(params, args.shards, tokenizer, v[0]) for v in VARIANTS}
    best = dict.fromkeys(VARIANTS, float("inf"))
    for rep in range(args.reps):
        for v in VARIANTS:
            seconds = _time_steps(setups[v], rep * args.steps * v[1], v[1], args.steps)
            best[v] = min(best[v], seconds)
    row_len = setups[VARIANTS[0]][2].seq_len
    print(f"CPU flags: {cpu_flags()}; threads {torch.get_num_threads()}; "
          f"load {load_average()} (pid {os.getpid()})")  # fmt: skip
    print(f"| variant | tokens/step | s/step (min of {args.reps} x {args.steps}) | vs rows |")
    print("|---|---:|---:|---:|")
    for (piece, batch), seconds in best.items():
        name = f"rows {row_len}" if piece is None else f"pieces {piece}"
        tokens = (piece or row_len) * batch
        ratio = seconds / best[VARIANTS[0]]
        print(f"| {name} x {batch} | {tokens:,} | {seconds:.4f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
