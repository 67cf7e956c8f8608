"""The CPU kernels of a git revision against the working tree's, in one process (issue 18).

Usage::

    .venv/bin/python benchmarks/kernel_ab.py --base d7efc9e                    # backward, 4096
    .venv/bin/python benchmarks/kernel_ab.py --base d7efc9e --part fwd --seqs 4096 16384
    .venv/bin/python benchmarks/kernel_ab.py --base d7efc9e --mcpu haswell     # AVX2 code

Both sides are compiled in this process:
- the kernel source, `longdoc/kernels/tvm_source.py` of `--base` (from `git show`) and of the
  working tree;
- each with its own Python side, the `tvm_backend` functions that pack buffers and call the
  kernels (`_band_forward`, `_band_backward` and their helpers), taken from that revision's
  `tvm_backend.py`.

Both run the band of `SlidingWindow(--window)` on the same random `(1, n, heads, 64)` inputs,
taking turns call by call (the order flips every round). The table gives each side's minimum
and median, the base's time over the working tree's, and the largest difference between the
two sides' outputs (0 when a change is bitwise neutral). Compiled in memory (`tvm.compile`),
both run on TVM's own thread pool, `--threads` threads (default 1: no thread-pool effects).
`--mcpu` compiles both for another CPU model (e.g. `haswell`: AVX2 code on an AVX-512 host).
That checks code generation, not speed on the other kind of CPU: AVX2 code whose register blocks
spilled timed "no worse" on the Intel AVX-512 host and a third slower on an AVX2-only AMD EPYC
(benchmarks/RESULTS.md, "Kernels on an AVX2-only CPU"). Time a schedule on the CPU it is for.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# the band path's Python side, taken from each revision's tvm_backend.py (those it defines)
BAND_FUNCTIONS = (
    "_band_forward",
    "_band_backward",
    "_band_len",
    "_fwd_band_len",
    "_private_rows",
    "_pack",
    "_scratch",
    "_workspace_store",
    "_band_ok",
)


def _git_show(rev: str, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def _side(name: str, source: str, backend: str, tb, tvm, target: dict, lanes: int) -> dict:
    """Compile `source` (a tvm_source.py) and bind `backend`'s band functions to it."""
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    lib = tvm.compile(
        module.sliding_window(64, vector_lanes=lanes), target=tvm.target.Target(target)
    )
    fns = tb.cpu_kernel_fns(lib)
    namespace = dict(vars(tb))  # constants and helpers the band functions did not change
    for node in ast.parse(backend).body:
        if isinstance(node, ast.FunctionDef) and node.name in BAND_FUNCTIONS:
            code = ast.get_source_segment(backend, node)  # without decorators (lru_cache)
            exec(code.replace("from .tvm_source import", f"from {name} import"), namespace)
    return {"fns": fns, "fwd": namespace["_band_forward"], "bwd": namespace["_band_backward"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision to compare with")
    ap.add_argument("--part", choices=("fwd", "bwd"), default="bwd")
    ap.add_argument("--seqs", type=int, nargs="+", default=[4096])
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--window", type=int, default=256, help="one-sided")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--mcpu", help="compile both for this CPU model instead of the host's")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM loads
    import torch
    from machine import cpu_flags

    from longdoc.kernels import tvm_backend as tb

    torch.set_num_threads(args.threads)
    tvm = tb._import_tvm()
    _, target = tb.resolve_target("llvm")
    if args.mcpu:
        target = {"kind": "llvm", "mcpu": args.mcpu}
    lanes = tb._vector_lanes(target)
    src = "longdoc/kernels/tvm_source.py"
    sides = {
        "base": _side(
            "kernel_ab_base",
            _git_show(args.base, src),
            _git_show(args.base, "longdoc/kernels/tvm_backend.py"),
            tb, tvm, target, lanes,
        ),
        "tree": _side(
            "kernel_ab_tree",
            (ROOT / src).read_text(),
            (ROOT / "longdoc/kernels/tvm_backend.py").read_text(),
            tb, tvm, target, lanes,
        ),
    }  # fmt: skip
    print(
        f"CPU flags: {cpu_flags()}; target {target}; {args.threads} thread(s); "
        f"load average at the start {os.getloadavg()[0]:.2f}"
    )
    print(f"`{args.part}` of SlidingWindow({args.window}), {args.heads} heads, head_dim 64\n")
    print(
        "| seq | base ms (min / median) | tree ms (min / median) | base / tree (min) | max diff |"
    )
    print("|---:|---:|---:|---:|---:|")
    for n in args.seqs:
        torch.manual_seed(0)
        q, k, v, g_out = (torch.randn(1, n, args.heads, 64) for _ in range(4))
        key_ok = torch.ones(1, n, dtype=torch.bool)
        spec = tb._BandSpec(window=args.window)
        out, lse = sides["tree"]["fwd"](
            q, k, v, key_ok, None, None, None, sides["tree"]["fns"], spec
        )
        delta = (g_out * out).sum(-1)

        def call(side, q=q, k=k, v=v, g_out=g_out, key_ok=key_ok, spec=spec, lse=lse, delta=delta):
            if args.part == "fwd":
                return side["fwd"](q, k, v, key_ok, None, None, None, side["fns"], spec)
            return side["bwd"](q, k, v, key_ok, g_out, lse, delta, side["fns"], spec)

        results = {name: call(side) for name, side in sides.items()}
        diff = max(
            (a - b).abs().max().item()
            for a, b in zip(results["base"], results["tree"], strict=True)
        )
        times = {"base": [], "tree": []}
        for r in range(args.reps):
            for name in ("base", "tree") if r % 2 == 0 else ("tree", "base"):
                start = time.perf_counter()
                call(sides[name])
                times[name].append((time.perf_counter() - start) * 1e3)
        b, t = times["base"], times["tree"]
        print(
            f"| {n} | {min(b):.1f} / {statistics.median(b):.1f} | {min(t):.1f} / "
            f"{statistics.median(t):.1f} | {min(b) / min(t):.2f}x | {diff:.1e} |"
        )
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
