"""bf16 vs fp32 attention forward on the `tvm` backend (issue 18): the same bf16 numbers given
to `attention()` as bf16 (on a CPU with AMX-BF16: the bf16 kernel on AMX tiles; with
AVX512-BF16: the bf16 kernel on `vdpbf16ps` vectors; bf16 products accumulated in fp32 either
way) and as float32 (the fp32 kernel, FMAs), with transformers' convention of a 512-key window
(256 each side), 12 heads of 64, batch 1, one global token, no gradient (inference, as
`longdoc score` with `score.bf16: true` runs it). Also the torch backend in bf16 as the
in-house reference.

Usage::

    .venv/bin/python benchmarks/bf16_attention.py                       # 4096 and 16384 tokens
    .venv/bin/python benchmarks/bf16_attention.py --seqs 4096 --reps 5

Prints which instructions the bf16 path used (``tdpbf16ps`` or ``vdpbf16ps`` found in the
compiled library by ``objdump``, or "fp32 kernel" where the CPU has neither), the CPU flags
and the load average, and the max difference between the two `tvm` outputs (bf16 rounding of
the softmax weights).
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
from longdoc.kernels import SlidingWindow, attention, tvm_backend, tvm_bf16  # noqa: E402

HEADS, HEAD_DIM, WINDOW = 12, 64, 256


def _time(cases: dict, reps: int) -> dict[str, tuple[float, float]]:
    """Seconds per call of each case, (min, median): the cases take turns, so that a host
    whose speed drifts (the shared 2-core guests do, by 10-30%) slows them all alike."""
    for fn in cases.values():
        fn()  # warm-up (and the compile, on first use)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


def _instructions() -> str:
    probe = torch.zeros(1, 1, 1, HEAD_DIM, dtype=torch.bfloat16)
    fns = tvm_backend._kernel(HEAD_DIM)
    if not tvm_bf16.applies(probe, fns):
        return "fp32 kernel (neither AMX-BF16 nor AVX512-BF16 here: bf16 inputs are upcast)"
    engine = fns["bf16_engine"]
    lib = next(Path(kernels.settings.cache_dir()).rglob(f"*_d{HEAD_DIM}.so"), None)
    if lib is None or shutil.which("objdump") is None:
        return f"bf16 kernel, {engine} (not disassembled)"
    asm = subprocess.run(["objdump", "-d", str(lib)], capture_output=True, text=True).stdout
    wanted = ("ldtilecfg", "tileloadd", "tdpbf16ps", "tilestored", "vdpbf16ps")
    return f"bf16 kernel, {engine}: " + ", ".join(x for x in wanted if x in asm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--reps", type=int, default=20)
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
            # the two tvm paths take turns; the torch reference (5-7x slower, and it evicts the
            # caches the others would find warm) runs on its own after them
            secs = _time({"tvm bf16": lambda: run("tvm", "bf16"),
                          "tvm fp32": lambda: run("tvm", "fp32")}, args.reps)  # fmt: skip
            secs |= _time({"torch bf16": lambda: run("torch", "bf16")}, max(3, args.reps // 4))
            diff = (run("tvm", "bf16").float() - run("tvm", "fp32")).abs().max().item()
        rows.append((n, secs, diff))
    print(f"bf16 vs fp32 attention forward, tvm backend ({HEADS} heads x {HEAD_DIM}, window "
          f"{2 * WINDOW}, 1 global token, batch 1, no grad)")  # fmt: skip
    print(f"CPU flags: {cpu_flags()}; load {load_average()}; bf16 path: {_instructions()}")
    print("ms per call as min / median (the tvm paths taking turns); speeds from the mins")
    print(f"{'tokens':>7} {'tvm bf16 ms':>14} {'tvm fp32 ms':>14} {'torch bf16 ms':>15} "
          f"{'bf16/fp32 speed':>16} {'bf16/torch':>11} {'max |diff|':>11}")  # fmt: skip
    for n, secs, diff in rows:
        (b, bm), (f, fm), (t, tm) = secs["tvm bf16"], secs["tvm fp32"], secs["torch bf16"]
        print(f"{n:>7} {b * 1e3:>6.1f} / {bm * 1e3:>5.1f} {f * 1e3:>6.1f} / {fm * 1e3:>5.1f} "
              f"{t * 1e3:>6.1f} / {tm * 1e3:>6.1f} {f / b:>15.2f}x {t / b:>10.2f}x "
              f"{diff:>11.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
