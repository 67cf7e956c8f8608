"""In-process A/B of the `tvm` and `torch` backends for training (issue 18): attention
forward+backward, and the whole MLM training step.

Usage::

    .venv/bin/python benchmarks/tvm_vs_torch.py                      # both parts (~3 min idle)
    .venv/bin/python benchmarks/tvm_vs_torch.py --part attention --seqs 4096 16384 --reps 6
    .venv/bin/python benchmarks/tvm_vs_torch.py --part step --seqs 4096 --reps 5
    .venv/bin/python benchmarks/tvm_vs_torch.py --dtype bfloat16 --part forward   # bf16 inference

Why in one process: on a shared machine, runs minutes apart see different loads. Here the two
backends take turns call by call (the order flips every repetition) on the same inputs, and the
table gives the minimum (the call least disturbed by other jobs) and the median of each, and
their ratio. The separate-process benchmarks (``attention.py``, ``train.py``) also measure peak
memory; this one only time.

* ``attention``: ``kernels.attention(q, k, v, SlidingWindow(256), global_mask=<position 0>)`` on
  ``(1, n, 12, 64)`` float32 tensors (``attention.py``'s shape), then ``backward`` of a fixed
  output gradient.
* ``forward``: the same call without gradients (inference), in ``--dtype``; in float32 also
  against FlexAttention (``attention.flex_forward``: ``torch.compile``d, sliding-window +
  global-token BlockMask, on ``(1, 12, n, 64)`` copies of the same numbers), taking turns with
  the other two: the issue-18 target ``tvm`` >= 2.5x flex in one process, on a host whose speed
  drifts between the separate processes of ``attention.py``.
* ``step``: ``train.py``'s model (hidden 256, 4 layers, 4 heads of 64, window 512, FFN 1024,
  vocabulary 8000) with one global token at position 0, one MLM step (forward with 15% labels,
  backward, clipping, AdamW), two copies of the same weights, one per backend.

The `tvm` kernel is compiled into ``BENCH_KERNEL_CACHE`` (default ``data/kernels``) if missing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from machine import cpu_flags, load_average

ROOT = Path(__file__).resolve().parents[1]
HEADS, HEAD_DIM, WINDOW = 12, 64, 256


def _alternate(calls: dict, reps: int) -> dict[str, list[float]]:
    """Time each callable ``reps`` times, taking turns (order flipped every repetition), after
    one warm-up call each."""
    for fn in calls.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def attention_calls(n: int, grad: bool, dtype) -> dict:
    import torch

    from longdoc import kernels

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, n, HEADS, HEAD_DIM, dtype=dtype, requires_grad=grad) for _ in "qkv")
    gmask = torch.zeros(1, n, dtype=torch.bool)
    gmask[0, 0] = True
    gout = torch.randn(1, n, HEADS, HEAD_DIM, dtype=dtype)
    pattern = kernels.SlidingWindow(WINDOW)

    def call(backend):
        def run():
            if not grad:
                with torch.no_grad():
                    kernels.attention(q, k, v, pattern, global_mask=gmask, backend=backend)
                return
            out = kernels.attention(q, k, v, pattern, global_mask=gmask, backend=backend)
            out.backward(gout)
            q.grad = k.grad = v.grad = None

        return run

    calls = {"tvm": call("tvm"), "torch": call("torch")}
    if not grad and dtype == torch.float32:
        from attention import flex_forward

        calls["flex"] = flex_forward(*(x.detach().transpose(1, 2).contiguous() for x in (q, k, v)))
    return calls


def step_calls(n: int) -> dict:
    import torch
    import transformers

    from longdoc.components.modeling.model import LongdocConfig, LongformerForMaskedLM

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train import CONFIG

    torch.manual_seed(0)
    weights = transformers.LongformerForMaskedLM(
        transformers.LongformerConfig(**CONFIG, max_position_embeddings=n + 2)
    ).state_dict()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, CONFIG["vocab_size"], (1, n), generator=gen)
    ids[0, 0] = 0
    labels = torch.full_like(ids, -100)
    picked = torch.rand(ids.shape, generator=gen) < 0.15
    labels[picked] = ids[picked]
    gmask = torch.zeros_like(ids)
    gmask[0, 0] = 1  # one global token, as in attention.py and fine-tuning

    def call(backend):
        config = LongdocConfig(**CONFIG, max_position_embeddings=n + 2)
        config.attention_backend = backend
        model = LongformerForMaskedLM(config)
        model.load_state_dict(weights, strict=False)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def run():
            loss = model(
                input_ids=ids, global_attention_mask=gmask, labels=labels, labelled_logits_only=True
            ).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    return {"tvm": call("tvm"), "torch": call("torch")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("attention", "forward", "step", "both"), default="both")
    ap.add_argument("--seqs", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--reps", type=int, default=6, help="timed calls per backend")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    import torch

    sys.path.insert(0, str(ROOT))
    from longdoc import kernels

    torch.set_num_threads(args.threads)
    kernels.configure(cache_dir=os.environ.get("BENCH_KERNEL_CACHE", "data/kernels"))
    kernels.build_kernels(kernels.settings.cache_dir(), dtypes=(args.dtype,), head_dims=(64,))
    dtype = getattr(torch, args.dtype)
    parts = ["attention", "step"] if args.part == "both" else [args.part]
    policy = os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default: spin)")
    print(f"CPU flags: {cpu_flags()}; {args.threads} threads; OMP_WAIT_POLICY {policy}")
    print(f"load average (1/5/15 min) at the start: {load_average()}\n")
    print(
        "| part | seq | tvm ms (min / median) | torch ms (min / median) | torch / tvm (min / med) |"
    )
    print("|---|---:|---:|---:|---:|")
    for part in parts:
        for n in args.seqs:
            if part == "step":
                calls = step_calls(n)
            else:
                calls = attention_calls(n, part == "attention", dtype)
            times = _alternate(calls, args.reps)
            lo = {k: min(v) * 1e3 for k, v in times.items()}
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            print(
                f"| {part} | {n} | {lo['tvm']:.0f} / {med['tvm']:.0f} | "
                f"{lo['torch']:.0f} / {med['torch']:.0f} | "
                f"{lo['torch'] / lo['tvm']:.2f}x / {med['torch'] / med['tvm']:.2f}x |",
                flush=True,
            )
            if "flex" in times:
                print(
                    f"|  | flex (FlexAttention) | {lo['flex']:.0f} / {med['flex']:.0f} ms | "
                    f"flex / tvm | {lo['flex'] / lo['tvm']:.2f}x / "
                    f"{med['flex'] / med['tvm']:.2f}x |",
                    flush=True,
                )
    print(f"\nload average (1/5/15 min) at the end: {load_average()}")


if __name__ == "__main__":
    main()
