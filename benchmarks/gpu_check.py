"""The `tvm` backend's CUDA kernels on a GPU (issue 18): build, exactness, timing, in one run.

Usage, on a machine with an NVIDIA GPU (`benchmarks/gpu_check.sh` runs the first line)::

    .venv/bin/python benchmarks/gpu_check.py
    .venv/bin/python benchmarks/gpu_check.py --seqs 4096 16384 65536 --reps 10
    .venv/bin/python benchmarks/gpu_check.py --device cpu --seqs 512 --reps 2   # dry run here

1. **Environment.** The GPU, its compute capability, torch and TVM. TVM runs CUDA kernels
   through the wheel's CUDA runtime sidecar (`libtvm_runtime_cuda.so`, which needs the NVIDIA
   driver and `libcudart.so.13`). Where it did not load, the script prints why
   (`tvm_backend.cuda_runtime_error`) and exits 3. Without a GPU it exits 2.
2. **Build.** `build_kernels(targets=("cuda:sm_XX",))` for this GPU's architecture, into
   `--cache` (TVM's CUDA code generator and `nvcc`; cached after the first run, so a cache
   built elsewhere for the same architecture and TVM serves too).
3. **Exactness.** Forward and gradients of `kernels.attention(..., backend="tvm")` on the
   device, against the float64 reference of the tests (`tests/kernels/reference.py`, on the
   CPU). Patterns: a sliding window, and a per-head dilated causal one; with global tokens and
   padding, odd lengths. Pass: relative error <= 1e-4, as the CPU tests. Any failure: exit 1.
4. **Timing** at `--seqs` (batch 1, `--heads`, `--head-dim`, `SlidingWindow(--window)`, fp32,
   one global token at position 0). Contenders:
   - `tvm`: the compiled CUDA kernels through `kernels.attention`;
   - `flex`: `torch.compile`d `flex_attention` with a sliding-window + global `BlockMask`;
   - `sdpa`: dense `scaled_dot_product_attention` with the boolean mask, skipped where it does
     not fit.
   Forward and forward+backward, CUDA-event medians after warm-up, and each contender's time
   over `tvm`'s.

`--device cpu` runs the same steps on the CPU kernels (no build step, and FlexAttention has no
CPU backward): a dry run of the script where no GPU is.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longdoc import kernels  # noqa: E402
from longdoc.kernels import SlidingWindow, tvm_backend  # noqa: E402
from tests.kernels.reference import reference_attention, rel_err  # noqa: E402

TOLERANCE = 1e-4


def environment(device: str) -> str:
    if device == "cpu":
        return f"CPU dry run: {platform.processor() or platform.machine()}"
    if not torch.cuda.is_available():
        print("no CUDA device: run this on a machine with an NVIDIA GPU (or --device cpu)")
        sys.exit(2)
    why = tvm_backend.cuda_runtime_error()
    if why is not None:
        print(f"the tvm backend cannot run CUDA kernels here: {why}")
        sys.exit(3)
    props = torch.cuda.get_device_properties(0)
    return (
        f"{props.name}, compute capability {props.major}.{props.minor}, "
        f"{props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, TVM "
        f"{tvm_backend.tvm_version()}"
    )


def build(device: str, cache: Path, head_dims: tuple[int, ...]) -> str:
    kernels.configure(cache_dir=cache)
    if device == "cpu":
        target = "llvm"
    else:
        major, minor = torch.cuda.get_device_capability(0)
        target = f"cuda:sm_{major}{minor}"
    start = time.perf_counter()
    summary = kernels.build_kernels(cache, head_dims=head_dims, targets=(target,))
    states = sorted({v["status"] for v in summary["variants"].values()})
    return f"{target}: {', '.join(states)} in {time.perf_counter() - start:.1f} s"


def exactness(device: str) -> list[str]:
    """One line per case; raises SystemExit(1) after printing them if any case fails."""
    cases = [
        (SlidingWindow(16), 257, 3, 64),
        (SlidingWindow(5, dilation=(1, 2, 3), causal=True), 301, 3, 16),
    ]
    lines, failed = [], False
    for pattern, n, heads, dim in cases:
        gen = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(2, n, heads, dim, generator=gen) for _ in range(3))
        glob = torch.zeros(2, n, dtype=torch.bool)
        glob[0, 0] = glob[1, n // 3] = True
        pad = torch.zeros(2, n, dtype=torch.bool)
        pad[1, n - 40 :] = True
        cot = torch.randn(2, n, heads, dim, generator=gen)
        qd, kd, vd = (x.to(device).requires_grad_() for x in (q, k, v))
        out = kernels.attention(
            qd,
            kd,
            vd,
            pattern,
            global_mask=glob.to(device),
            key_padding_mask=pad.to(device),
            backend="tvm",
        )
        grads = torch.autograd.grad((out * cot.to(device)).sum(), (qd, kd, vd))
        qr, kr, vr = (x.double().requires_grad_() for x in (q, k, v))
        ref = reference_attention(qr, kr, vr, pattern, glob, pad)
        refs = torch.autograd.grad((ref * cot.double()).sum(), (qr, kr, vr))
        scale = max(r.abs().max().item() for r in refs)
        errs = [rel_err(out.cpu(), ref)] + [
            (g.cpu().double() - r).abs().max().item() / scale
            for g, r in zip(grads, refs, strict=True)
        ]
        ok = max(errs) <= TOLERANCE
        failed |= not ok
        lines.append(
            f"{pattern}, n {n}, heads {heads}, head_dim {dim}: out {errs[0]:.1e}, dq "
            f"{errs[1]:.1e}, dk {errs[2]:.1e}, dv {errs[3]:.1e}: {'ok' if ok else 'FAILED'}"
        )
    if failed:
        print("\n".join(lines))
        sys.exit(1)
    return lines


def _median_ms(fn, device: str, reps: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        if device == "cpu":
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        else:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(begin.elapsed_time(end))
    return statistics.median(times)


def _contenders(n: int, heads: int, dim: int, window: int, device: str) -> dict:
    """name -> (forward, forward+backward) callables on fresh inputs of shape (1, n, heads, dim)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v, cot = (torch.randn(1, n, heads, dim, generator=gen).to(device) for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_()
    glob = torch.zeros(1, n, dtype=torch.bool, device=device)
    glob[0, 0] = True
    pattern = SlidingWindow(window)

    def tvm_fwd():
        with torch.no_grad():
            kernels.attention(q, k, v, pattern, global_mask=glob, backend="tvm")

    def tvm_fwdbwd():
        out = kernels.attention(q, k, v, pattern, global_mask=glob, backend="tvm")
        torch.autograd.grad(out, (q, k, v), cot)

    def allowed(b, h, qi, ki):
        return ((qi - ki).abs() <= window) | (qi == 0) | (ki == 0)

    block_mask = create_block_mask(allowed, None, None, n, n, device=device)
    # a fresh compile per length: reusing the last one's cache gave a kernel 10x slower here
    torch._dynamo.reset()
    flex = torch.compile(flex_attention, dynamic=False)
    qh, kh, vh, coth = (x.transpose(1, 2) for x in (q, k, v, cot))  # (1, heads, n, dim)

    def flex_fwd():  # detached: on the CPU, inputs that require grad are refused
        flex(qh.detach(), kh.detach(), vh.detach(), block_mask=block_mask)

    def flex_fwdbwd():
        out = flex(qh, kh, vh, block_mask=block_mask)
        torch.autograd.grad(out, (q, k, v), coth)

    found = {"tvm": (tvm_fwd, tvm_fwdbwd), "flex": (flex_fwd, flex_fwdbwd)}
    try:  # |i - j| <= window, built in booleans (index differences would be 8 bytes a pair)
        mask = torch.ones(n, n, dtype=torch.bool, device=device).tril(window).triu(-window)
        mask[0, :] = True
        mask[:, 0] = True
    except torch.OutOfMemoryError:
        return found
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def sdpa_fwd():
        with torch.no_grad():
            sdpa(qh, kh, vh, attn_mask=mask)

    def sdpa_fwdbwd():
        out = sdpa(qh, kh, vh, attn_mask=mask)
        torch.autograd.grad(out, (q, k, v), coth)

    found["sdpa"] = (sdpa_fwd, sdpa_fwdbwd)
    return found


def _timed(fn, device: str, reps: int) -> float | str:
    try:
        return _median_ms(fn, device, reps)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "out of memory"
    except NotImplementedError:
        return "no backward"  # FlexAttention on the CPU


def timing(args) -> list[str]:
    rows = [
        "| seq | contender | fwd ms | fwd+bwd ms | fwd vs tvm | fwd+bwd vs tvm |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for n in args.seqs:
        found = _contenders(n, args.heads, args.head_dim, args.window, args.device)
        times = {
            name: (_timed(f, args.device, args.reps), _timed(fb, args.device, args.reps))
            for name, (f, fb) in found.items()
        }
        if "sdpa" not in times:
            times["sdpa"] = ("mask does not fit", "mask does not fit")
        base = times["tvm"]
        for name, (fwd, fwdbwd) in times.items():
            cells = [f"{t:.2f}" if isinstance(t, float) else t for t in (fwd, fwdbwd)]
            ratios = [
                f"{t / b:.2f}x" if isinstance(t, float) and isinstance(b, float) else "-"
                for t, b in zip((fwd, fwdbwd), base, strict=True)
            ]
            rows.append(f"| {n} | {name} | {cells[0]} | {cells[1]} | {ratios[0]} | {ratios[1]} |")
        if args.device != "cpu":
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--seqs", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--window", type=int, default=256, help="one-sided window")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--cache", type=Path, default=ROOT / "data" / "kernels")
    ap.add_argument("--out", type=Path, help="also write the report here")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 throughout, as the kernels
    report = [f"# tvm CUDA kernels: {environment(args.device)}"]
    head_dims = tuple(sorted({args.head_dim, 16, 64}))  # 16 and 64: the exactness cases
    report.append(f"build: {build(args.device, args.cache, head_dims)}")
    print("\n".join(report), flush=True)
    lines = exactness(args.device)
    report += ["exactness against the float64 reference (max relative error):"] + lines
    print("\n".join(lines), flush=True)
    table = timing(args)
    report += [
        f"timing: batch 1, {args.heads} heads, head_dim {args.head_dim}, window "
        f"{args.window} each side, one global token, fp32, median of {args.reps}",
        *table,
    ]
    print("\n".join(table))
    if args.out:
        args.out.write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main()
