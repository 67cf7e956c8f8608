"""Short inputs (issue 18): our LongformerModel forward vs transformers' RobertaModel and
LongformerModel, same weights, at 128, 256 and 512 tokens.

Usage::

    .venv/bin/python benchmarks/short_inputs.py                    # base size, ~3 min
    .venv/bin/python benchmarks/short_inputs.py --layers 4 --no-append

The model is Longformer-base shaped (hidden 768, 12 heads, FFN 3072, 12 layers by default),
random-init from a fixed seed, fp32, eval mode, ``torch.inference_mode``. One transformers
``LongformerModel`` is built and its state dict is loaded into ours (``attention_backend`` auto)
and into transformers' ``RobertaModel`` (every RoBERTa weight; the ``*_global`` projections have
no place there).

``--window`` is transformers' ``attention_window`` (full window; Longformer-base uses 512). At
``n <= window / 2 + 1`` the window covers the whole input and ours runs one fused SDPA call per
layer with no mask (full attention: it computes exactly what RoBERTa computes); up to
``n <= window + 1`` the band spans the input and ours runs one SDPA call with the band's mask
(what Longformer computes; RoBERTa's numbers then differ, its cost is the same). Transformers'
Longformer pads every input to a multiple of ``window`` and runs its chunked banded attention.

Scenarios: ``plain`` (no padding, no global token: MLM-style) and ``cls`` (global attention on
``<s>`` and the last quarter of the second row padded: the classification setting; RoBERTa sees
the same padding, and has no global projections to run, which ours and transformers' Longformer
do). The models run alternately, ``--reps`` rounds; each figure is the median. Outputs are
compared (max absolute difference of the last hidden state, padding rows excluded).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from machine import cpu_flags, load_average

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VOCAB, PAD, BOS, EOS = 50265, 1, 0, 2


def build_models(args: argparse.Namespace):
    import transformers

    from longdoc.components.modeling import model as M

    fields = dict(
        vocab_size=VOCAB,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden,
        max_position_embeddings=args.max_len + PAD + 2,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        sep_token_id=EOS,
    )
    torch.manual_seed(0)
    hf_long = transformers.LongformerModel(
        transformers.LongformerConfig(attention_window=args.window, **fields),
        add_pooling_layer=False,
    ).eval()
    state = hf_long.state_dict()
    ours = M.LongformerModel(
        M.LongdocConfig(attention_window=args.window, attention_backend="auto", **fields),
        add_pooling_layer=False,
    ).eval()
    ours.load_state_dict(state)
    roberta = transformers.RobertaModel(
        transformers.RobertaConfig(**fields), add_pooling_layer=False
    ).eval()
    missing, unexpected = roberta.load_state_dict(state, strict=False)
    if missing or any("_global" not in k for k in unexpected):
        raise RuntimeError(f"RoBERTa weights did not line up: {missing} {unexpected}")
    return {"ours": ours, "roberta": roberta, "hf-longformer": hf_long}


def make_inputs(n: int, batch: int, scenario: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(n)
    ids = torch.randint(3, VOCAB, (batch, n), generator=gen)
    ids[:, 0], ids[:, -1] = BOS, EOS
    mask = torch.ones(batch, n, dtype=torch.long)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if scenario == "cls":
        if batch > 1:
            cut = n - n // 4
            ids[-1, cut:], mask[-1, cut:] = PAD, 0
            ids[-1, cut - 1] = EOS
        glob = torch.zeros(batch, n, dtype=torch.long)
        glob[:, 0] = 1
        inputs["global_attention_mask"] = glob
    return inputs


def call(name: str, model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if name == "roberta":
        inputs = {k: v for k, v in inputs.items() if k != "global_attention_mask"}
    return model(**inputs).last_hidden_state


def measure(models, inputs, reps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for name, model in models.items():  # warm-up
            call(name, model, inputs)
        for rnd in range(reps):
            order = list(models) if rnd % 2 == 0 else list(models)[::-1]
            for name in order:
                t0 = time.perf_counter()
                call(name, models[name], inputs)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def agreement(models, inputs) -> dict[str, float]:
    """Max |difference| of ours against each peer on the non-padding rows."""
    keep = inputs["attention_mask"].bool()
    with torch.inference_mode():
        outs = {name: call(name, m, inputs)[keep] for name, m in models.items()}
    return {
        name: (outs["ours"] - o).abs().max().item() for name, o in outs.items() if name != "ours"
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqs", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--scenarios", nargs="+", default=["plain", "cls"], choices=["plain", "cls"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--window", type=int, default=512, help="attention_window (full, HF sense)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--no-append", action="store_true", help="don't append to RESULTS.md")
    args = ap.parse_args()
    args.max_len = max(args.seqs)
    torch.set_num_threads(args.threads)

    from longdoc.kernels import SlidingWindow, select_backend

    load_start = load_average()
    models = build_models(args)
    rows = []
    for scenario in args.scenarios:
        for n in args.seqs:
            inputs = make_inputs(n, args.batch, scenario)
            t = measure(models, inputs, args.reps)
            diff = agreement(models, inputs)
            probe = torch.empty(1, n, args.heads, args.hidden // args.heads)
            path = select_backend(probe, SlidingWindow(args.window // 2), needs_grad=False)
            rows.append((scenario, n, path, t, diff))
            print(
                f"{scenario} {n}: ours {t['ours'] * 1e3:.1f} ms ({path}), roberta "
                f"{t['roberta'] * 1e3:.1f} ms, hf-longformer {t['hf-longformer'] * 1e3:.1f} ms",
                flush=True,
            )
    load_end = load_average()
    lines = [
        "| scenario | tokens | ours: attention | ours ms | RoBERTa ms | HF Longformer ms "
        "| ours vs RoBERTa | ours vs HF Longformer | max abs diff vs RoBERTa / HF Longformer |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for scenario, n, path, t, diff in rows:
        lines.append(
            f"| {scenario} | {n} | {path} | {t['ours'] * 1e3:.1f} | {t['roberta'] * 1e3:.1f} | "
            f"{t['hf-longformer'] * 1e3:.1f} | {t['roberta'] / t['ours']:.2f}x | "
            f"{t['hf-longformer'] / t['ours']:.2f}x | {diff['roberta']:.1e} / "
            f"{diff['hf-longformer']:.1e} |"
        )
    table = "\n".join(lines)
    setup = (
        f"batch {args.batch}, hidden {args.hidden}, {args.layers} layers, {args.heads} heads, "
        f"attention_window {args.window}, fp32, {args.threads} threads, median of {args.reps}"
    )
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, flags: {cpu_flags()}; load average "
        f"(1/5/15 min) at start {load_start}, at end {load_end}"
    )
    print(f"\n{setup}\n{machine}\n\n{table}")
    print("(ratios > 1: ours faster; RoBERTa differs from ours where the band does not cover)")
    if not args.no_append:
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        cmd = "python benchmarks/short_inputs.py " + " ".join(sys.argv[1:])
        text = (
            f"\n### Short inputs: LongformerModel forward vs RoBERTa (issue 18), {when}\n\n"
            f"Command: `{cmd.strip()}`  \n{setup}.  \nMachine: {machine}.\n\n{table}\n"
        )
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(text)
        print(f"appended to {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
