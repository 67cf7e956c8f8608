"""bf16 vs fp32 attention forward on the `tvm` backend (issue 18): the same bf16 numbers given
to `attention()` as bf16 (on a CPU with AMX-BF16: the AMX kernel, bf16 products accumulated in
fp32 by the tile unit) and as float32 (the fp32 kernel, AVX-512 FMAs), with transformers'
convention of a 512-key window (256 each side), 12 heads of 64, batch 1, one global token, no
gradient (inference, as `longdoc score` with `score.bf16: true` runs it). Also the torch
backend in bf16 as the in-house reference.

Usage::

    .venv/bin/python benchmarks/bf16_attention.py                       # 4096 and 16384 tokens
    .venv/bin/python benchmarks/bf16_attention.py --seqs 4096 --reps 5

Prints which instructions the bf16 path used (``tdpbf16ps`` found in the compiled library by
``objdump``, or "fp32 kernel" where the CPU has no AMX), the CPU flags and the load average,
and the max difference between the two `tvm` outputs (bf16 rounding of the softmax weights).
Compiled kernels: data/kernels (built on first use).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_flags, load_average  # noqa: E402
from longdoc import kernels  # noqa: E402
from longdoc.kernels import SlidingWindow, attention, tvm_amx  # noqa: E402

HEADS, HEAD_DIM, WINDOW = 12, 64, 256


def _time(fn, reps: int) -> float:
    fn()  # warm-up (and the compile, on first use)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _instructions() -> str:
    if not tvm_amx.amx_usable():
        return "fp32 kernel (no AMX-BF16 on this CPU: bf16 inputs are upcast)"
    lib = next(Path(kernels.settings.cache_dir()).rglob(f"*_d{HEAD_DIM}.so"), None)
    if lib is None or shutil.which("objdump") is None:
        return "AMX kernel (not disassembled)"
    asm = subprocess.run(["objdump", "-d", str(lib)], capture_output=True, text=True).stdout
    used = [x for x in ("ldtilecfg", "tileloadd", "tdpbf16ps", "tilestored") if x in asm]
    return "AMX: " + ", ".join(used)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    kernels.configure("data/kernels")
    pattern = SlidingWindow(WINDOW)
    rows = []
    for n in args.seqs:
        gen = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(1, n, HEADS, HEAD_DIM, generator=gen).bfloat16() for _ in range(3))
        glob = torch.zeros(1, n, dtype=torch.bool)
        glob[0, 0] = True
        inputs = {"bf16": (q, k, v), "fp32": tuple(x.float() for x in (q, k, v))}

        def run(backend: str, dtype: str, inputs=inputs, glob=glob) -> torch.Tensor:
            return attention(*inputs[dtype], pattern, global_mask=glob, backend=backend)

        with torch.no_grad():
            cases = {"tvm bf16": ("tvm", "bf16"), "tvm fp32": ("tvm", "fp32"),
                     "torch bf16": ("torch", "bf16")}  # fmt: skip
            secs = {name: _time(lambda c=c: run(*c), args.reps) for name, c in cases.items()}
            diff = (run("tvm", "bf16").float() - run("tvm", "fp32")).abs().max().item()
        rows.append((n, secs, diff))
    print(f"bf16 vs fp32 attention forward, tvm backend ({HEADS} heads x {HEAD_DIM}, window "
          f"{2 * WINDOW}, 1 global token, batch 1, no grad)")  # fmt: skip
    print(f"CPU flags: {cpu_flags()}; load {load_average()}; bf16 path: {_instructions()}")
    print(f"{'tokens':>7} {'tvm bf16 ms':>12} {'tvm fp32 ms':>12} {'torch bf16 ms':>14} "
          f"{'bf16/fp32 speed':>16} {'bf16/torch':>11} {'max |diff|':>11}")  # fmt: skip
    for n, secs, diff in rows:
        b, f, t = secs["tvm bf16"], secs["tvm fp32"], secs["torch bf16"]
        print(f"{n:>7} {b * 1e3:>12.1f} {f * 1e3:>12.1f} {t * 1e3:>14.1f} {f / b:>15.2f}x "
              f"{t / b:>10.2f}x {diff:>11.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
