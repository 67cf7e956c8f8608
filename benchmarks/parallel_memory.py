"""Memory per rank of the training modes (training.parallel), side by side in one run.

One optimizer step of MLM training (AdamW, one 4,096-token row per data-parallel rank,
sliding window 512 through the torch backend) of a RoBERTa-base-sized long model (hidden 768,
12 layers, 12 heads, FFN 3072, vocabulary 50,265, 4,098 positions) in each mode:

- `1 process`: the plain model;
- `ddp`, `fsdp`, `tp`: 2 ranks under torchrun (gloo, CPU).

`--model led`: instead, one summarization step of an LED-base-sized encoder-decoder (d_model
768, 6 + 6 layers, 12 heads, FFN 3072, vocabulary 50,265): the encoder reads `--seq` tokens
(global attention on the first), the decoder is teacher-forced on a 256-token target.

Per rank it reports the model state it holds (parameters + gradients + AdamW's two moments, from
the local tensors: a sharded parameter counts only its shard) and the process's peak resident
memory (`ru_maxrss`: model state + activations + the Python/torch runtime), with the ratio to
the 1-process run. Both ranks run on the same machine, so the machine holds twice the per-rank
figure. Speed is not measured (the 2 cores are shared with other jobs).

    .venv/bin/python benchmarks/parallel_memory.py                    # all four, ~5-10 min
    .venv/bin/python benchmarks/parallel_memory.py --seq 1024 --modes fsdp tp
    .venv/bin/python benchmarks/parallel_memory.py --checkpointing    # recompute activations
    .venv/bin/python benchmarks/parallel_memory.py --model led        # the encoder-decoder
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_flags, load_average  # noqa: E402

MODES = ("single", "ddp", "fsdp", "tp")


#: LED step: target tokens the decoder is teacher-forced on (a summary's length).
TARGET = 256


def _led(seq: int):
    from longdoc.components.modeling.led import LEDForConditionalGeneration, LongdocLEDConfig

    config = LongdocLEDConfig(
        vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6,
        encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
        decoder_ffn_dim=3072, max_encoder_position_embeddings=seq, attention_window=512,
        max_decoder_position_embeddings=1024, attention_backend="torch",
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    )  # fmt: skip
    return LEDForConditionalGeneration(config)


def _loss(model, wrapped, seq: int, gen):
    """One training forward: MLM on a `seq`-token row, or the LED's summarization loss."""
    import torch

    ids = torch.randint(3, 50265, (1, seq), generator=gen)
    if not hasattr(model, "led"):
        labels = torch.where(torch.rand(1, seq, generator=gen) < 0.15, ids, -100)
        return wrapped(input_ids=ids, labels=labels, labelled_logits_only=True).loss
    glob = torch.zeros_like(ids)
    glob[:, 0] = 1
    labels = torch.randint(3, 50265, (1, TARGET), generator=gen)
    return wrapped(input_ids=ids, global_attention_mask=glob, labels=labels).loss


def _model(seq: int, checkpointing: bool, kind: str = "longformer"):
    if kind == "led":
        model = _led(seq)
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        return model
    from longdoc.components.core.config import ModelParams
    from longdoc.components.modeling.model import LongformerForMaskedLM, make_config

    params = ModelParams(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        attention_window=512,
        max_position_embeddings=max(4098, seq + 2),
        attention_backend="torch",
    )
    config = make_config(params, vocab_size=50265, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model = LongformerForMaskedLM(config)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _state_bytes(model, optimizer) -> int:
    """Parameters, gradients and optimizer state this rank holds (local shards only)."""
    from longdoc.components.training.parallel import _local

    total = 0
    for p in model.parameters():
        total += _local(p.data).nbytes
        if p.grad is not None:
            total += _local(p.grad).nbytes
    for state in optimizer.state.values():
        for value in state.values():
            if hasattr(value, "nbytes"):
                total += _local(value).nbytes
    return total


def worker(mode: str, seq: int, checkpointing: bool, kind: str, out: Path) -> None:
    import torch

    from longdoc.components.training import parallel
    from longdoc.components.training.common import adamw

    env = parallel.DistEnv("ddp" if mode == "single" else mode)
    torch.manual_seed(0)
    model = _model(seq, checkpointing, kind)
    parallel.prepare(model, env)
    wrapped = parallel.wrap_ddp(model, env)
    optimizer = adamw(model, 1e-4, 0.01)
    gen = torch.Generator().manual_seed(env.dp_rank)
    _loss(model, wrapped, seq, gen).backward()
    parallel.sync_gradients(model, env, wrapped=wrapped is not model)
    parallel.clip_grad_norm(model, 1.0)
    optimizer.step()
    record = {
        "mode": mode,
        "rank": env.rank,
        "state_mib": _state_bytes(model, optimizer) / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    with open(out, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    env.close()


def _launch(mode: str, args, out: Path) -> None:
    me = [
        str(Path(__file__).resolve()),
        "--worker",
        mode,
        "--seq",
        str(args.seq),
        "--out",
        str(out),
        "--model",
        args.model,
    ]
    me += ["--checkpointing"] if args.checkpointing else []
    if mode == "single":
        cmd = [sys.executable, *me]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        cmd += me
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--model", choices=("longformer", "led"), default="longformer")
    ap.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.seq, args.checkpointing, args.model, args.out)
        return
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "records.jsonl"
        for mode in args.modes:
            _launch(mode, args, out)
        records = [json.loads(line) for line in out.read_text().splitlines()]
    shape = "hidden 768 x 12 layers" if args.model == "longformer" else "LED 768, 6 + 6 layers"
    target = f" -> {TARGET} target tokens" if args.model == "led" else ""
    print(
        f"{shape}, {args.seq} tokens{target}, 2 ranks (CPU, gloo)"
        f"{', gradient checkpointing' if args.checkpointing else ''}"
    )
    print(f"cpu flags: {cpu_flags()}; load average before {load_before}, after {load_average()}")
    base = {r["mode"]: r for r in records if r["rank"] == 0}.get("single")
    header = ("mode", "rank", "model state MiB", "ratio", "peak RSS MiB", "ratio")
    print(
        "".join(
            f"{h:<10}" if i == 0 else f"{h:>{w}}"
            for i, (h, w) in enumerate(zip(header, (10, 5, 17, 7, 14, 7), strict=True))
        )
    )
    for r in records:
        ratios = ("", "")
        if base:
            ratios = (
                f"{r['state_mib'] / base['state_mib']:.2f}",
                f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}",
            )
        print(
            f"{r['mode']:<10}{r['rank']:>5}{r['state_mib']:>17.0f}{ratios[0]:>7}"
            f"{r['peak_rss_mib']:>14.0f}{ratios[1]:>7}"
        )


if __name__ == "__main__":
    main()
