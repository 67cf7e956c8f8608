"""MLM training benchmark (issue 4): our LongformerForMaskedLM (tvm, torch backends) vs
transformers' LongformerForMaskedLM, same config and same weights, in one run.

Usage::

    .venv/bin/python benchmarks/train.py                     # seq 4096 (a few minutes)
    .venv/bin/python benchmarks/train.py --seqs 4096 16384 --no-append

What is measured: one full MLM training step (forward with labels, backward, clip, AdamW step)
on batch 1 at the given length, 15% of the tokens labelled, no global tokens (as in MLM
pretraining). Ours runs the step as `longdoc pretrain` does, projecting to the vocabulary only
at the labelled positions (`labelled_logits_only=True`), with its optimizer
(`training.common.adamw`: torch's fused AdamW since 2026-12-07); `hf` is transformers' model
called the usual way (`model(input_ids, labels=labels).loss`, torch's default AdamW), and
`hf-masked-head` applies the same head trick by hand to transformers' model, so the table
separates what the head trick gives from what our attention gives. tokens/s = seq / median
step time (at least 3 steps and ~10 s per worker, after one warm-up step that also allocates
the optimizer state). Peak memory = peak RSS growth
(``VmHWM`` reset through ``/proc/self/clear_refs``) during one step after warm-up, in a fresh
subprocess per implementation with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed tensors leave RSS;
RSS sees both torch's and TVM's allocations. Times come from another fresh subprocess with
glibc's default malloc settings (until 2026-12-06 they were taken in the memory process, where
every large allocation is fresh pages: a page fault per 4 KiB).

Model (default): hidden 256, 4 layers, 4 heads (head_dim 64), FFN 1024, vocab 8000, window 512
(256 on each side, transformers' convention), fp32, hidden dropout 0.1, attention-probability
dropout 0 (our local kernel has none, so both run without it). The weights are drawn once by
transformers, saved, and loaded by every worker.
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
import tempfile
import time
from pathlib import Path

from rss import peak_extra_mb

IMPLS = ("tvm", "torch", "hf", "hf-masked-head")
ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
CONFIG = dict(
    vocab_size=8000,
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=1024,
    attention_window=512,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.0,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    sep_token_id=2,
)


def make_weights(path: Path, max_seq: int) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LongformerConfig(**CONFIG, max_position_embeddings=max_seq + 2)
    transformers.LongformerForMaskedLM(cfg).save_pretrained(path)


def worker(impl: str, n: int, threads: int, weights: str, measure: str = "time") -> dict:
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    if impl.startswith("hf"):
        import transformers

        model = transformers.LongformerForMaskedLM.from_pretrained(weights)
    else:
        from longdoc import kernels
        from longdoc.components.modeling.model import LongdocConfig, LongformerForMaskedLM

        if impl == "tvm":
            kernels.configure(cache_dir=os.environ.get("BENCH_KERNEL_CACHE", "data/kernels"))
            kernels.build_kernels(
                kernels.settings.cache_dir(), dtypes=("float32",), head_dims=(64,)
            )
        config = LongdocConfig.from_pretrained(weights)
        config.attention_backend = impl
        model = LongformerForMaskedLM.from_pretrained(weights, config=config)
    model.train()
    if impl.startswith("hf"):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    else:  # pretraining's optimizer: fused AdamW, no decay on biases and LayerNorms
        from longdoc.components.training.common import adamw

        opt = adamw(model, 1e-4, 0.01)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, CONFIG["vocab_size"], (1, n), generator=g)
    ids[0, 0] = 0
    labels = torch.full_like(ids, -100)
    picked = torch.rand(ids.shape, generator=g) < 0.15
    labels[picked] = ids[picked]

    def loss_fn():
        if impl == "hf":
            return model(input_ids=ids, labels=labels).loss
        if impl == "hf-masked-head":  # our pretraining's head trick, applied by hand to theirs
            hidden = model.longformer(input_ids=ids).last_hidden_state
            keep = labels != -100
            return torch.nn.functional.cross_entropy(model.lm_head(hidden[keep]), labels[keep])
        return model(input_ids=ids, labels=labels, labelled_logits_only=True).loss

    def step():
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    loss0 = step()  # warm-up: kernels, thread pools, optimizer state
    if measure == "memory":
        return {"peak_mb": peak_extra_mb(step), "loss0": loss0}
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < 10 and len(times) < 10):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"step_s": t, "tokens_s": n / t, "loss0": loss0, "steps": len(times)}


def run_worker(impl: str, n: int, threads: int, weights: Path, timeout: float) -> dict | str:
    """Step time and peak memory of one (implementation, length), each from its own fresh
    process: memory with ``MALLOC_MMAP_THRESHOLD_=65536`` (RSS then follows live memory), time
    with glibc's defaults, as a training process runs (the low threshold turns every large
    allocation into fresh pages, a page fault per 4 KiB)."""
    times = _run_worker(impl, n, threads, weights, timeout, "time")
    if not isinstance(times, dict):
        return times
    memory = _run_worker(impl, n, threads, weights, timeout, "memory")
    if not isinstance(memory, dict):
        return memory
    return {**times, **memory}


def _run_worker(
    impl: str, n: int, threads: int, weights: Path, timeout: float, measure: str
) -> dict | str:
    env = dict(os.environ)
    env.update(TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    if measure == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        "--n",
        str(n),
        "--threads",
        str(threads),
        "--weights",
        str(weights),
        "--measure",
        measure,
    ]
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


def table(results: dict, seqs: list[int], impls: list[str]) -> str:
    lines = [
        "| seq | impl | step s | tokens/s | tokens/s vs hf | peak extra MiB | memory vs hf "
        "| first loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in seqs:
        ref = results.get((n, "hf"))
        ref = ref if isinstance(ref, dict) else None
        for impl in impls:
            r = results.get((n, impl))
            if not isinstance(r, dict):
                lines.append(f"| {n} | {impl} | {r or 'skipped'} | | | | | |")
                continue
            speed = mem = "—"
            if ref and impl != "hf":
                speed = f"{r['tokens_s'] / ref['tokens_s']:.2f}×"
                mem = f"{r['peak_mb'] / ref['peak_mb']:.2f}×" if ref["peak_mb"] > 0 else "—"
            lines.append(
                f"| {n} | {impl} | {r['step_s']:.2f} | {r['tokens_s']:,.0f} | {speed} | "
                f"{r['peak_mb']:.0f} | {mem} | {r['loss0']:.4f} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqs", type=int, nargs="+", default=[4096])
    ap.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--timeout", type=float, default=600.0, help="per worker, seconds")
    ap.add_argument("--no-append", action="store_true", help="don't append to RESULTS.md")
    ap.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--measure", choices=("time", "memory"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.threads, args.weights, args.measure)))
        return

    from machine import cpu_flags, load_average

    print(f"CPU flags: {cpu_flags()}; load average (1/5/15 min): {load_average()}", flush=True)
    start = time.perf_counter()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights"
        make_weights(weights, max(args.seqs))
        jobs = [(n, impl) for n in args.seqs for impl in args.impls]
        for done, (n, impl) in enumerate(jobs, 1):
            t0 = time.perf_counter()
            r = results[(n, impl)] = run_worker(impl, n, args.threads, weights, args.timeout)
            summary = (
                f"{r['tokens_s']:,.0f} tokens/s, {r['peak_mb']:.0f} MiB, loss {r['loss0']:.4f}"
                if isinstance(r, dict)
                else r
            )
            print(
                f"[{done}/{len(jobs)}] seq {n} {impl}: {summary} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    text = table(results, args.seqs, args.impls)
    for n in args.seqs:  # issue 18's comparison: the compiled path against the torch one
        tvm, tch = results.get((n, "tvm")), results.get((n, "torch"))
        if isinstance(tvm, dict) and isinstance(tch, dict):
            text += f"\n\nseq {n}: tvm / torch tokens/s = {tvm['tokens_s'] / tch['tokens_s']:.2f}x"
    print()
    print(text)
    print(f"total {time.perf_counter() - start:.0f} s; load average at the end: {load_average()}")
    if not args.no_append:
        import torch

        cmd = "python benchmarks/train.py " + " ".join(sys.argv[1:])
        entry = (
            f"\n## MLM training step, ours vs transformers' LongformerForMaskedLM (issue 4)\n\n"
            f"Command: `{cmd.strip()}`\n"
            f"Machine: {platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
            f"{datetime.date.today()}. Model: hidden 256, 4 layers, 4 heads, FFN 1024, window "
            f"512 (256 a side), fp32, batch 1, no global tokens; same weights for all; fresh "
            f"processes per row (times with glibc's default malloc, memory with "
            f"MALLOC_MMAP_THRESHOLD_=65536); peak = RSS growth during one step after "
            f"warm-up.\n\n{text}\n"
        )
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(entry)
        print(f"appended to {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
