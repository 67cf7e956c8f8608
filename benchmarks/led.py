"""LED benchmark (issue 16): our LEDForConditionalGeneration vs transformers', same weights, same
inputs, one run: an encoder–decoder training step and beam-search generation.

Usage::

    .venv/bin/python benchmarks/led.py                         # train 4096 + 16384, generate
    .venv/bin/python benchmarks/led.py --train-seqs 4096 --gen-seq 4096 --no-append

Training step: batch 1, `seq` input tokens with global attention on `<s>` (as summarization
fine-tuning does), 256 target tokens (labels; the decoder reads them shifted right), forward
with labels, backward, clip, AdamW step. `torch` / `tvm` are our model with that encoder
attention backend; `hf` is transformers' model called the usual way. tokens/s = input tokens /
median step time (at least 3 steps and ~10 s per worker, after one warm-up step that also
allocates the optimizer state). Peak memory = peak RSS growth (``VmHWM`` reset through
``/proc/self/clear_refs``) during one step after warm-up, in a fresh subprocess per row with
``MALLOC_MMAP_THRESHOLD_=65536`` so freed tensors leave RSS.

Generation: one `gen-seq`-token document, global attention on `<s>`, 4 beams, exactly 128 new
tokens (`min_new_tokens` = `max_new_tokens` = 128, so neither side stops early), fp32, no
gradient. `ours` uses the default backend (`auto`: the compiled TVM kernel for the encoder when
it is in the kernel cache, else torch). tokens/s = new tokens / wall time of `generate()` after
a short warm-up call; the generated ids of both sides are compared.

Model (default): d_model 256, 3 encoder + 3 decoder layers, 4 heads (head_dim 64), FFN 1024,
vocab 8000, encoder window 512 (256 on each side), dropout 0.1 (attention-probability dropout 0:
our local kernel has none). The weights are drawn once by transformers, saved, and loaded by
every worker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rss import peak_extra_mb

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
TRAIN_IMPLS = ("torch", "tvm", "hf")
GEN_IMPLS = ("ours", "hf")
TARGET_TOKENS = 256
BEAMS, NEW_TOKENS = 4, 128
CONFIG = dict(
    vocab_size=8000,
    d_model=256,
    encoder_layers=3,
    decoder_layers=3,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=1024,
    decoder_ffn_dim=1024,
    attention_window=512,
    max_decoder_position_embeddings=1024,
    dropout=0.1,
    attention_dropout=0.0,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=2,
)


def cpu_flags() -> str:
    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0]
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile")
    return " ".join(f for f in wanted if f" {f}" in flags) or "none of avx2/avx512"


def make_weights(path: Path, max_seq: int) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LEDConfig(**CONFIG, max_encoder_position_embeddings=max_seq)
    transformers.LEDForConditionalGeneration(cfg).save_pretrained(path)


def load_model(impl: str, weights: str):
    if impl == "hf":
        import transformers

        return transformers.LEDForConditionalGeneration.from_pretrained(weights)
    from longdoc import kernels
    from longdoc.components.modeling.led import LEDForConditionalGeneration, LongdocLEDConfig

    if impl in ("tvm", "ours"):  # compiled kernels: built once, cached between runs
        kernels.configure(cache_dir=os.environ.get("BENCH_KERNEL_CACHE", "data/kernels"))
        kernels.build_kernels(kernels.settings.cache_dir(), dtypes=("float32",), head_dims=(64,))
    config = LongdocLEDConfig.from_pretrained(weights)
    config.attention_backend = "auto" if impl == "ours" else impl
    return LEDForConditionalGeneration.from_pretrained(weights, config=config)


def make_inputs(n: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, CONFIG["vocab_size"], (1, n), generator=g)
    ids[0, 0], ids[0, -1] = CONFIG["bos_token_id"], CONFIG["eos_token_id"]
    glob = torch.zeros_like(ids)
    glob[:, 0] = 1
    labels = torch.randint(5, CONFIG["vocab_size"], (1, TARGET_TOKENS), generator=g)
    return ids, glob, labels


def train_worker(impl: str, n: int, weights: str) -> dict:
    import torch

    model = load_model(impl, weights).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids, glob, labels = make_inputs(n)

    def step() -> float:
        loss = model(input_ids=ids, global_attention_mask=glob, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    loss0 = step()  # warm-up: kernels, thread pools, optimizer state
    peak = peak_extra_mb(step)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < 10 and len(times) < 10):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"step_s": t, "tokens_s": n / t, "peak_mb": peak, "loss0": loss0, "steps": len(times)}


def generate_worker(impl: str, n: int, weights: str) -> dict:
    import torch

    model = load_model(impl, weights).eval()
    ids, glob, _ = make_inputs(n, seed=1)
    settings = dict(num_beams=BEAMS, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    out: dict = {}

    def run() -> None:
        t0 = time.perf_counter()
        out["ids"] = model.generate(input_ids=ids, global_attention_mask=glob, **settings)
        out["s"] = time.perf_counter() - t0

    with torch.no_grad():
        model.generate(  # warm-up: thread pools, kernels
            input_ids=ids[:, :64], global_attention_mask=glob[:, :64], max_new_tokens=2
        )
        peak = peak_extra_mb(run)
    new = out["ids"].shape[1] - 1  # minus the decoder start token
    return {
        "gen_s": out["s"],
        "tokens_s": new / out["s"],
        "peak_mb": peak,
        "new_tokens": new,
        "ids": out["ids"][0].tolist(),
    }


def run_worker(mode: str, impl: str, n: int, threads: int, weights: Path, timeout: float):
    env = dict(os.environ)
    env.update(
        MALLOC_MMAP_THRESHOLD_="65536", TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads)
    )
    cmd = [sys.executable, __file__, "--worker", mode, impl, str(n), str(weights)]
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


def ratio(r: dict, ref: dict | None, key: str) -> str:
    if not isinstance(ref, dict) or r is ref or ref[key] <= 0:
        return "—"
    return f"{r[key] / ref[key]:.2f}×"


def train_table(results: dict, seqs: list[int]) -> str:
    lines = [
        "| input tokens | impl | step s | input tokens/s | tokens/s vs hf | peak extra MiB "
        "| memory vs hf | first loss |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n in seqs:
        ref = results.get(("train", n, "hf"))
        for impl in TRAIN_IMPLS:
            r = results.get(("train", n, impl))
            if not isinstance(r, dict):
                lines.append(f"| {n} | {impl} | {r or 'skipped'} | | | | | |")
                continue
            lines.append(
                f"| {n} | {impl} | {r['step_s']:.2f} | {r['tokens_s']:,.0f} | "
                f"{ratio(r, ref, 'tokens_s')} | {r['peak_mb']:.0f} | {ratio(r, ref, 'peak_mb')} | "
                f"{r['loss0']:.4f} |"
            )
    return "\n".join(lines)


def generate_table(results: dict, n: int) -> str:
    lines = [
        "| input tokens | impl | generate s | new tokens/s | tokens/s vs hf | peak extra MiB "
        "| memory vs hf | ids identical to hf |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    ref = results.get(("generate", n, "hf"))
    for impl in GEN_IMPLS:
        r = results.get(("generate", n, impl))
        if not isinstance(r, dict):
            lines.append(f"| {n} | {impl} | {r or 'skipped'} | | | | | |")
            continue
        same = "—" if impl == "hf" or not isinstance(ref, dict) else str(r["ids"] == ref["ids"])
        lines.append(
            f"| {n} | {impl} | {r['gen_s']:.2f} | {r['tokens_s']:.1f} | "
            f"{ratio(r, ref, 'tokens_s')} | {r['peak_mb']:.0f} | {ratio(r, ref, 'peak_mb')} | "
            f"{same} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-seqs", type=int, nargs="*", default=[4096, 16384])
    ap.add_argument("--gen-seq", type=int, default=16384, help="0: skip generation")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--timeout", type=float, default=900.0, help="per worker, seconds")
    ap.add_argument("--no-append", action="store_true", help="don't append to RESULTS.md")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import torch

        mode, impl, n, weights = args.worker
        torch.set_num_threads(args.threads)
        sys.path.insert(0, str(ROOT))
        fn = train_worker if mode == "train" else generate_worker
        print(json.dumps(fn(impl, int(n), weights)))
        return

    start, load_start = time.perf_counter(), os.getloadavg()
    jobs = [("train", n, impl) for n in args.train_seqs for impl in TRAIN_IMPLS]
    if args.gen_seq:
        jobs += [("generate", args.gen_seq, impl) for impl in GEN_IMPLS]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights"
        make_weights(weights, max([*args.train_seqs, args.gen_seq]))
        for done, (mode, n, impl) in enumerate(jobs, 1):
            t0 = time.perf_counter()
            r = results[(mode, n, impl)] = run_worker(
                mode, impl, n, args.threads, weights, args.timeout
            )
            summary = (
                f"{r['tokens_s']:,.1f} tokens/s, {r['peak_mb']:.0f} MiB"
                if isinstance(r, dict)
                else r
            )
            print(
                f"[{done}/{len(jobs)}] {mode} {n} {impl}: {summary} "
                f"({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    load_end = os.getloadavg()
    parts = []
    if args.train_seqs:
        parts.append(
            f"Training step ({TARGET_TOKENS} target tokens):\n\n"
            + train_table(results, args.train_seqs)
        )
    if args.gen_seq:
        parts.append(
            f"Generation ({BEAMS} beams, {NEW_TOKENS} new tokens):\n\n"
            + generate_table(results, args.gen_seq)
        )
    import torch

    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, flags: "
        f"{cpu_flags()}; torch {torch.__version__}; load average (1/5/15 min) at start "
        f"{load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, at end "
        f"{load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}"
    )
    text = "\n\n".join(parts)
    print()
    print(text)
    print(f"\n{machine}\ntotal {time.perf_counter() - start:.0f} s")
    if not args.no_append:
        cmd = "python benchmarks/led.py " + " ".join(sys.argv[1:])
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(
                f"\n## LED, ours vs transformers' LEDForConditionalGeneration (issue 16), "
                f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\nCommand: `{cmd.strip()}`  \n"
                f"Machine: {machine}.  \nModel: d_model 256, 3+3 layers, 4 heads, FFN 1024, "
                f"vocab 8000, window 512, fp32, batch 1, global attention on `<s>`; same "
                f"weights for all; a fresh process per row.\n\n{text}\n"
            )
        print(f"appended to {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
