"""Attention benchmark (issue 3): our backends vs transformers' Longformer attention core vs SDPA.

Usage::

    .venv/bin/python benchmarks/attention.py                 # seq 1024, 4096, 16384 (~10 min)
    .venv/bin/python benchmarks/attention.py --seqs 1024 4096 --no-append
    .venv/bin/python benchmarks/attention.py --rounds 2   # median of 2 rounds (~20 min)

Shape (issue 3): batch 1, heads 12, head_dim 64, window 256 one-sided (transformers'
``attention_window`` = 512), fp32, one global token (position 0).

Implementations:

* ``tvm``, ``torch``: ``kernels.attention(..., backend=...)`` on ``(1, n, 12, 64)`` q, k, v.
* ``tvm-block`` (issue 18): ``tvm`` with ``BlockLocal(block=256, neighbors=0)``, the disjoint
  block pattern of the same reach as the window (a query sees at most 255 positions away, the
  window 256) at half its keys (256 per query instead of 513). Opt-in: ``--impls ... tvm-block``.
* ``hf-core``: transformers' ``LongformerSelfAttention`` minus its projections. The module also
  does the q/k/v and global q/k/v projections (5 full ``n x 768 x 768`` matmuls + 1 for the
  global query), which a model needs with any attention. They are timed separately in the same
  worker (same input, same layers) and subtracted: core = module - projections, for time and
  for peak memory (an approximation for memory: the two peaks need not coincide).
* ``sdpa-dense``: ``torch.nn.functional.scaled_dot_product_attention`` with a dense boolean
  ``n x n`` mask (the mask itself is built outside the measurement; it is ``n^2`` bytes).
* ``flex`` (issue 18): PyTorch's FlexAttention, ``torch.compile(flex_attention)`` with a
  sliding-window + global-token ``BlockMask`` (``create_block_mask`` on the CPU, block 128,
  built outside the measurement; the compile happens in the warm-up). **Forward only**: torch
  2.13 has no FlexAttention backward on CPU (the worker checks: ``NotImplementedError``), so
  its forward+backward columns are empty and the comparison with it is ``tvm`` forward vs
  ``flex`` forward, printed after the table.

How each number is taken:

* Every (implementation, seq) runs in two *fresh subprocesses*: times with glibc's default
  malloc settings, memory with ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc returns freed tensors
  to the OS and RSS follows live memory (until 2026-12-06 the times were taken in the memory
  worker too, paying a page fault per 4 KiB of every fresh output). Peak extra memory =
  peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` just before) minus RSS before the
  call, with inputs already allocated and one warm-up call done. Tracemalloc does not see torch
  allocations, and the torch profiler misses TVM's; RSS sees both.
* forward = inference (``torch.no_grad``); forward+backward = forward with grad, then
  ``backward`` of a random output gradient. Times are medians over repeats (at least 3 and
  about 2 s per measurement, at most 15; 2 when one call takes over 3 s).
* Useful GFLOP/s = ``4 * n * keys * d * heads`` / forward time (keys per query: ``2w+1``, or
  the block's 256 for ``tvm-block``; global token ignored), shown next to a fp32 matmul rate
  (``2048^3`` ``torch.mm``) measured in the same run.

Threads: torch and TVM use ``--threads`` (default: usable cores). On a shared machine numbers
are noisy; compare the ratios printed side by side.

OpenMP wait policy: torch's OpenMP threads (libgomp) spin after each parallel region before they
sleep. ``tvm`` runs its kernels on TVM's own thread pool, so on a 2-core machine the spinning
threads take cores from the kernel (on a shared machine they also fight the other jobs, which
slows every implementation). ``--omp-passive`` runs every worker with
``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once); the default leaves the environment as it
is, so both settings can be compared in one table each.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_flags, load_average
from rss import peak_extra_mb

HEADS, HEAD_DIM, WINDOW = 12, 64, 256
IMPLS = ("tvm", "torch", "hf-core", "sdpa-dense", "flex", "tvm-block")
DEFAULT_IMPLS = ("tvm", "torch", "hf-core", "sdpa-dense", "flex")
ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


# ---- worker (one implementation, one seq, fresh process) -------------------------------------


def _median_time(fn, budget_s: float = 2.0, min_reps: int = 3, max_reps: int = 15) -> float:
    """Median time of ``fn``: at least ``min_reps`` calls (2 when one call takes over 3 s, to
    keep a full run near 10 minutes), more while within ``budget_s``, at most ``max_reps``."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (
        len(times) < min_reps or time.perf_counter() - start < budget_s
    ):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if times[0] > 3.0:
            min_reps = min(min_reps, 2)
    return statistics.median(times)


#: What this worker process measures (``--measure``): ``time`` or ``memory`` (see
#: ``run_worker``: the two need different malloc settings).
MEASURE = {"what": "time"}


def _measure(fwd, fwdbwd) -> dict[str, float | None]:
    """Times (``MEASURE["what"] == "time"``) or peak extra memory (``"memory"``) of ``fwd`` and
    ``fwdbwd`` (None: the implementation has no backward here; its fields are None)."""
    if fwdbwd is not None:
        fwdbwd()  # warm-up: kernel loading, thread pools
    fwd()
    if MEASURE["what"] == "memory":
        return {
            "fwd_mb": peak_extra_mb(fwd),
            "fwdbwd_mb": None if fwdbwd is None else peak_extra_mb(fwdbwd),
        }
    return {
        "fwd_s": _median_time(fwd),
        "fwdbwd_s": None if fwdbwd is None else _median_time(fwdbwd),
    }


def _sliding_window_with_global(b, h, q_idx, kv_idx):
    return ((q_idx - kv_idx).abs() <= WINDOW) | (q_idx == 0) | (kv_idx == 0)


def flex_forward(q, k, v):
    """A no-grad FlexAttention forward on ``(B, H, n, D)`` tensors with the sliding-window +
    global-token (position 0) BlockMask, built on the CPU here; the compile happens on the first
    call. Also used by ``tvm_vs_torch.py --part forward``."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n = q.shape[2]
    block_mask = create_block_mask(_sliding_window_with_global, None, None, n, n, device="cpu")
    flex = torch.compile(flex_attention, dynamic=False)

    def fwd():
        with torch.no_grad():
            flex(q, k, v, block_mask=block_mask)

    return fwd


def _flex_worker(n: int) -> dict[str, float | None]:
    """FlexAttention forward (``flex_forward``; see the module docstring); checks that its CPU
    backward is still missing (fails loudly once it exists, so this benchmark gets its
    forward+backward columns)."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q, k, v = (torch.randn(1, HEADS, n, HEAD_DIM) for _ in range(3))
    res = _measure(flex_forward(q, k, v), None)
    flex = torch.compile(flex_attention, dynamic=False)
    probe = torch.randn(1, 1, 128, 16, requires_grad=True)
    small = create_block_mask(_sliding_window_with_global, None, None, 128, 128, device="cpu")
    try:
        flex(probe, probe, probe, block_mask=small).sum().backward()
    except NotImplementedError:
        return res
    raise RuntimeError("FlexAttention now has a CPU backward: time it here (fwdbwd)")


def worker(impl: str, n: int, threads: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if impl in ("tvm", "torch", "tvm-block"):
        sys.path.insert(0, str(ROOT))
        from longdoc import kernels

        backend = impl.split("-")[0]
        if backend == "tvm":
            kernels.configure(cache_dir=os.environ.get("BENCH_KERNEL_CACHE", "data/kernels"))
            kernels.build_kernels(
                kernels.settings.cache_dir(), dtypes=("float32",), head_dims=(HEAD_DIM,)
            )
        q, k, v = (torch.randn(1, n, HEADS, HEAD_DIM, requires_grad=True) for _ in range(3))
        gmask = torch.zeros(1, n, dtype=torch.bool)
        gmask[0, 0] = True
        if impl == "tvm-block":
            pattern = kernels.BlockLocal(block=WINDOW, neighbors=0)
        else:
            pattern = kernels.SlidingWindow(WINDOW)
        gout = torch.randn(1, n, HEADS, HEAD_DIM)

        def run():
            return kernels.attention(q, k, v, pattern, global_mask=gmask, backend=backend)

        def fwd():
            with torch.no_grad():
                run()

        def fwdbwd():
            run().backward(gout)
            q.grad = k.grad = v.grad = None

        return _measure(fwd, fwdbwd)

    if impl == "sdpa-dense":
        import torch.nn.functional as F

        q, k, v = (torch.randn(1, HEADS, n, HEAD_DIM, requires_grad=True) for _ in range(3))
        idx = torch.arange(n)
        mask = (idx.view(-1, 1) - idx.view(1, -1)).abs() <= WINDOW
        mask[0, :] = True
        mask[:, 0] = True
        gout = torch.randn(1, HEADS, n, HEAD_DIM)

        def run():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

        def fwd():
            with torch.no_grad():
                run()

        def fwdbwd():
            run().backward(gout)
            q.grad = k.grad = v.grad = None

        return _measure(fwd, fwdbwd)

    if impl == "hf-core":
        from transformers import LongformerConfig
        from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

        hidden = HEADS * HEAD_DIM
        config = LongformerConfig(
            hidden_size=hidden,
            num_attention_heads=HEADS,
            attention_window=[2 * WINDOW],
            attention_probs_dropout_prob=0.0,
        )
        module = LongformerSelfAttention(config, layer_id=0)
        x = torch.randn(1, n, hidden, requires_grad=True)
        amask = torch.zeros(1, n)
        amask[0, 0] = 10000.0  # transformers' encoding: > 0 global, < 0 padding, 0 local
        is_masked, is_global = amask < 0, amask > 0
        gout = torch.randn(1, n, hidden)

        def run():
            return module(
                x,
                attention_mask=amask,
                is_index_masked=is_masked,
                is_index_global_attn=is_global,
                is_global_attn=True,
            )[0]

        def fwd():
            with torch.no_grad():
                run()

        def fwdbwd():
            run().backward(gout)
            module.zero_grad(set_to_none=True)
            x.grad = None

        full = _measure(fwd, fwdbwd)

        # the projections the module does, on the same input and layers (seq-first, as inside)
        proj_g = [torch.randn(n, 1, hidden) for _ in range(5)]
        g_first = torch.randn(1, 1, hidden)

        def proj_run():
            xt = x.transpose(0, 1)
            outs = [
                lin(xt)
                for lin in (
                    module.query,
                    module.key,
                    module.value,
                    module.key_global,
                    module.value_global,
                )
            ]
            return outs, module.query_global(xt[:1])

        def proj_fwd():
            with torch.no_grad():
                proj_run()

        def proj_fwdbwd():
            outs, qg = proj_run()
            torch.autograd.backward([*outs, qg], [*proj_g, g_first])
            module.zero_grad(set_to_none=True)
            x.grad = None

        proj = _measure(proj_fwd, proj_fwdbwd)
        res = {key: max(0.0, full[key] - proj[key]) for key in full}
        res.update({f"module_{key}": val for key, val in full.items()})
        res.update({f"proj_{key}": val for key, val in proj.items()})
        return res

    if impl == "flex":
        return _flex_worker(n)

    raise ValueError(f"unknown implementation {impl!r}")


# ---- driver ----------------------------------------------------------------------------------


def matmul_gflops(threads: int, size: int = 2048) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    t = _median_time(lambda: torch.mm(a, b), budget_s=1.5, min_reps=5, max_reps=40)
    return 2 * size**3 / t / 1e9


def useful_gflop(n: int, impl: str = "tvm") -> float:
    keys = WINDOW if impl == "tvm-block" else 2 * WINDOW + 1
    return 4 * n * keys * HEAD_DIM * HEADS / 1e9


def run_worker(
    impl: str, n: int, threads: int, timeout: float, omp_passive: bool = False
) -> dict | str:
    """Times and peak memory of one (implementation, length), each from its own fresh process:
    memory with ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc then returns every freed tensor to the
    OS, so RSS follows live memory), times with glibc's defaults, as a user's process runs (the
    low threshold makes every large allocation fresh pages: a page fault per 4 KiB of each
    output, about 9% of a ``tvm`` forward at 4096 tokens with one thread)."""
    times = _run_worker(impl, n, threads, timeout, omp_passive, "time")
    if not isinstance(times, dict):
        return times
    memory = _run_worker(impl, n, threads, timeout, omp_passive, "memory")
    if not isinstance(memory, dict):
        return memory
    return {**times, **memory}


def _run_worker(
    impl: str, n: int, threads: int, timeout: float, omp_passive: bool, what: str
) -> dict | str:
    env = dict(os.environ)
    if what == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    if omp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["TVM_NUM_THREADS"] = str(threads)
    env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, __file__, "--worker", impl, "--n", str(n), "--threads", str(threads)]
    cmd += ["--measure", what]
    try:
        proc = subprocess.run(
            cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return f"failed (rc {proc.returncode}): {tail[0][:120]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _torch_version() -> str:
    import torch

    return torch.__version__


def _fmt_ms(s: float | None) -> str:
    return "—" if s is None else (f"{s * 1e3:.0f}" if s >= 0.1 else f"{s * 1e3:.1f}")


def table(results: dict, seqs: list[int], impls: list[str], mm: float) -> str:
    """Markdown table: one row per (seq, impl), ratios against hf-core."""
    lines = [
        "| seq | impl | fwd ms | fwd+bwd ms | fwd+bwd vs hf-core | peak extra MiB (fwd / fwd+bwd)"
        " | mem vs hf-core | useful GFLOP/s fwd | % of matmul |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in seqs:
        ref = results.get((n, "hf-core"))
        ref = ref if isinstance(ref, dict) else None
        for impl in impls:
            r = results.get((n, impl))
            if not isinstance(r, dict):
                lines.append(f"| {n} | {impl} | {r or 'skipped'} | | | | | | |")
                continue
            ratio = mem = "—"
            has_bwd = r["fwdbwd_s"] is not None
            if ref and impl != "hf-core" and has_bwd:
                ratio = f"{ref['fwdbwd_s'] / r['fwdbwd_s']:.2f}× faster"
                if ref["fwdbwd_mb"] > 0:
                    mem = f"{r['fwdbwd_mb'] / ref['fwdbwd_mb']:.0%}"
            gf = useful_gflop(n, impl) / r["fwd_s"] if r["fwd_s"] > 0 else float("nan")
            bwd_ms = _fmt_ms(r["fwdbwd_s"]) if has_bwd else "no CPU backward"
            bwd_mb = f"{r['fwdbwd_mb']:.0f}" if has_bwd else "—"
            lines.append(
                f"| {n} | {impl} | {_fmt_ms(r['fwd_s'])} | {bwd_ms} | {ratio} | "
                f"{r['fwd_mb']:.0f} / {bwd_mb} | {mem} | {gf:.0f} | {gf / mm:.0%} |"
            )
    return "\n".join(lines)


def plot(results: dict, seqs: list[int], impls: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for impl in impls:
        pts = [(n, results[(n, impl)]) for n in seqs if isinstance(results.get((n, impl)), dict)]
        if not pts:
            continue
        ns = [n for n, _ in pts]
        axes[0].plot(ns, [r["fwd_s"] * 1e3 for _, r in pts], "o-", label=impl)
        bwd = [(m, r) for m, r in pts if r["fwdbwd_s"] is not None]
        if bwd:
            axes[1].plot(
                [m for m, _ in bwd], [r["fwdbwd_s"] * 1e3 for _, r in bwd], "o-", label=impl
            )
            axes[2].plot(
                [m for m, _ in bwd], [max(r["fwdbwd_mb"], 1) for _, r in bwd], "o-", label=impl
            )
    titles = ("forward time (ms)", "forward+backward time (ms)", "peak extra memory, fwd+bwd (MiB)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"banded attention, heads {HEADS}, head_dim {HEAD_DIM}, window {WINDOW}, batch 1, fp32"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqs", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--impls", nargs="+", default=list(DEFAULT_IMPLS), choices=IMPLS)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument(
        "--dense-max-seq",
        type=int,
        default=4096,
        help="skip sdpa-dense above this length (O(n^2): ~0.8 TFLOP forward at 16384)",
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="per worker, seconds")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every (seq, impl) this many times, in reversed order on every other round, "
        "and report the median: on a shared machine the load drifts between implementations",
    )
    ap.add_argument(
        "--omp-passive",
        action="store_true",
        help="run every worker with OMP_WAIT_POLICY=PASSIVE (torch's OpenMP threads sleep instead "
        "of spinning between parallel regions; see the module docstring)",
    )
    ap.add_argument("--no-append", action="store_true", help="don't append to RESULTS.md")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--measure", choices=("time", "memory"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        MEASURE["what"] = args.measure
        print(json.dumps(worker(args.worker, args.n, args.threads)))
        return

    start = time.perf_counter()
    load_at_start = load_average()  # other jobs on the cores make every figure noisier
    print(f"CPU flags: {cpu_flags()}; load average (1/5/15 min): {load_at_start}", flush=True)
    mm = matmul_gflops(args.threads)
    print(f"fp32 matmul (2048^3 torch.mm, {args.threads} threads): {mm:.0f} GFLOP/s", flush=True)
    results: dict = {}
    samples: dict = {}
    base_jobs = [(n, impl) for n in args.seqs for impl in args.impls]
    jobs = [
        job
        for rnd in range(args.rounds)
        for job in (base_jobs if rnd % 2 == 0 else base_jobs[::-1])
    ]
    for done, (n, impl) in enumerate(jobs, 1):
        if impl == "sdpa-dense" and n > args.dense_max_seq:
            results[(n, impl)] = f"skipped (n > --dense-max-seq {args.dense_max_seq})"
            continue
        t0 = time.perf_counter()
        r = run_worker(impl, n, args.threads, args.timeout, args.omp_passive)
        samples.setdefault((n, impl), []).append(r)
        elapsed = time.perf_counter() - start
        summary = (
            f"fwd {_fmt_ms(r['fwd_s'])} ms, fwd+bwd {_fmt_ms(r['fwdbwd_s'])} ms, "
            f"{r['fwdbwd_mb'] or 0:.0f} MiB"
            if isinstance(r, dict)
            else r
        )
        print(
            f"[{done}/{len(jobs)}] seq {n} {impl}: {summary} "
            f"({time.perf_counter() - t0:.0f} s; {elapsed:.0f} s elapsed)",
            flush=True,
        )
    for key, runs in samples.items():
        ok = [r for r in runs if isinstance(r, dict)]
        if not ok:
            results[key] = runs[-1]
            continue
        results[key] = {
            f: None if ok[0][f] is None else statistics.median(r[f] for r in ok) for f in ok[0]
        }
    mm_after = matmul_gflops(args.threads)
    mm = statistics.median([mm, mm_after])
    text = table(results, args.seqs, args.impls, mm)
    print()
    print(text)
    hf = [n for n in args.seqs if isinstance(results.get((n, "hf-core")), dict)]
    for n in hf:
        r = results[(n, "hf-core")]
        print(
            f"hf-core {n}: module fwd {_fmt_ms(r['module_fwd_s'])} ms / fwd+bwd "
            f"{_fmt_ms(r['module_fwdbwd_s'])} ms, minus projections fwd "
            f"{_fmt_ms(r['proj_fwd_s'])} ms / fwd+bwd {_fmt_ms(r['proj_fwdbwd_s'])} ms"
        )
    growth = []
    for impl in args.impls:
        a, b = results.get((4096, impl)), results.get((16384, impl))
        if isinstance(a, dict) and isinstance(b, dict):
            bwd = (
                f", fwd+bwd ×{b['fwdbwd_s'] / a['fwdbwd_s']:.2f}"
                if a["fwdbwd_s"] and b["fwdbwd_s"]
                else ""
            )
            growth.append(f"{impl}: fwd ×{b['fwd_s'] / a['fwd_s']:.2f}{bwd}")
    vs_flex = []
    for n in args.seqs:
        ours, flex = results.get((n, "tvm")), results.get((n, "flex"))
        if isinstance(ours, dict) and isinstance(flex, dict):
            vs_flex.append(f"{n}: {flex['fwd_s'] / ours['fwd_s']:.2f}x")
    if vs_flex:
        print(
            "tvm forward vs FlexAttention forward (flex has no CPU backward): " + ", ".join(vs_flex)
        )
    block_cost = []
    for n in args.seqs:
        slide, block = results.get((n, "tvm")), results.get((n, "tvm-block"))
        if isinstance(slide, dict) and isinstance(block, dict):
            block_cost.append(
                f"{n}: fwd {block['fwd_s'] / slide['fwd_s']:.2f}, "
                f"fwd+bwd {block['fwdbwd_s'] / slide['fwdbwd_s']:.2f}"
            )
    if block_cost:
        print(
            "tvm BlockLocal(256, 0) time / tvm SlidingWindow(256) time (same reach, half the "
            "keys): " + "; ".join(block_cost)
        )
    if growth:
        print("time growth 4096 -> 16384: " + "; ".join(growth))
    print(f"fp32 matmul: {mm:.0f} GFLOP/s (median of before/after: {mm_after:.0f} after)")
    print(f"total {time.perf_counter() - start:.0f} s")

    if not args.no_plot:
        plot(results, args.seqs, args.impls, HERE / "attention.png")
        print(f"wrote {HERE / 'attention.png'}")
    if not args.no_append:
        policy = (
            "`OMP_WAIT_POLICY=PASSIVE` (`--omp-passive`)"
            if args.omp_passive
            else f"`{os.environ.get('OMP_WAIT_POLICY', 'unset (libgomp default: spin)')}`"
        )
        cmd = "python benchmarks/attention.py " + " ".join(sys.argv[1:])
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        extra = "\n".join(
            [
                f"\n## Attention kernels (issues 3, 18), {when}\n",
                f"Command: `{cmd.strip()}`  ",
                f"Machine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
                f"no GPU, CPU flags: {cpu_flags()}; load average (1/5/15 min) at the start "
                f"{load_at_start}, at the end {load_average()} (above ~0.5 other jobs share the "
                "cores: compare ratios).  ",
                f"Each figure: median of {args.rounds} round(s), every other round in reverse "
                "order.  ",
                f"Workers' OpenMP wait policy: {policy}.  ",
                f"fp32 matmul in the same run: {mm:.0f} GFLOP/s. Shape: batch 1, heads {HEADS}, "
                f"head_dim {HEAD_DIM}, window {WINDOW} one-sided, one global token.\n",
                text,
                *(["", "Time growth 4096 → 16384: " + "; ".join(growth)] if growth else []),
                *(
                    [
                        "",
                        "`tvm` forward vs FlexAttention forward (FlexAttention has no CPU "
                        "backward in torch " + _torch_version() + "): " + ", ".join(vs_flex),
                    ]
                    if vs_flex
                    else []
                ),
                *(
                    [
                        "",
                        "`tvm` BlockLocal(256, 0) time / `tvm` SlidingWindow(256) time (same "
                        "reach, half the keys): " + "; ".join(block_cost),
                    ]
                    if block_cost
                    else []
                ),
                "",
            ]
        )
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(extra)
        print(f"appended to {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
