"""Batch scoring throughput: ours versus transformers' text-classification pipeline (issue 7).

Same weights, same documents (1k-16k tokens), same predictions, side by side in one run:

- `transformers pipeline`: `pipeline("text-classification")` over transformers' own
  `LongformerForSequenceClassification` loaded from the checkpoint directory; batch size 1 (its
  default: no padding waste; `--hf-batch N` adds a padded-batch row);
- `ours, engine fp32` / `ours, engine bf16`: `components.inference.serving.InferenceEngine` on
  the same texts (tokenize once, sort by length, token-budget batches, `torch.inference_mode`);
- `ours, longdoc score`: the whole stage, `components.inference.score.score`, from a tar.gz of
  the same documents through the registered MLflow model to Parquet parts (reading, errors,
  manifest and the one-off model load included).

The model is random-init but not a toy (hidden 256, 4 layers, 4 heads, FFN 1024, window 256,
16k positions) with a byte-level BPE trained on the synthetic documents. Every contender runs
`--reps` times, alternating (the machine may be shared); a row reports its best repetition and
the ratio to the pipeline. Predictions are compared (labels equal, max probability difference).

    .venv/bin/python benchmarks/score.py                  # 16 documents, ~90k tokens
    .venv/bin/python benchmarks/score.py --docs 8 --reps 1 --no-append

`--max-len N` (below `--max-tokens`) gives the model N tokens of positions and records windows of
N tokens (overlap `--overlap`) in the checkpoint, as fine-tuning does: ours then reads a longer
document as overlapping windows (what the model's dev metric measured) while the pipeline
truncates it at N, so that row compares more work against less; the labels may differ.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ou")]


def make_texts(rng: np.random.Generator, n_docs: int, lo: int, hi: int) -> list[str]:
    """Documents of made-up Zipf-distributed words; word counts log-uniform in [lo, hi] so the
    token counts span roughly the same range (trimmed to `hi` tokens later)."""
    vocab = np.array(
        ["".join(rng.choice(_SYLLABLES, size=int(rng.integers(1, 4)))) for _ in range(6000)]
    )
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()
    texts = []
    for _ in range(n_docs):
        n = int(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        words = rng.choice(vocab, size=n, p=weights)
        sents = [" ".join(words[i : i + 12]).capitalize() + "." for i in range(0, n, 12)]
        texts.append(" ".join(sents))
    return texts


def make_checkpoint(
    path: Path, texts: list[str], max_tokens: int, windows: tuple[int, int] | None = None
) -> None:
    import torch

    from longdoc.components.core.config import ModelParams
    from longdoc.components.data.tokenize import train_tokenizer
    from longdoc.components.modeling.model import LongformerForSequenceClassification, make_config

    tokenizer = train_tokenizer(iter(texts), vocab_size=4000, min_frequency=2)
    config = make_config(
        ModelParams(
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=1024,
            attention_window=256,
            max_position_embeddings=max_tokens + 2,
        ),
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=2,
        id2label={0: "neg", 1: "pos"},
        label2id={"neg": 0, "pos": 1},
    )
    if windows is not None:  # as fine-tuning records them
        from longdoc.components.training.windows import record_window_settings

        record_window_settings(config, windows[0], windows[1], True)
    torch.manual_seed(0)
    LongformerForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def trim(texts: list[str], tokenizer, max_tokens: int) -> list[str]:
    """Cut each text at a word boundary so it has at most `max_tokens` tokens (no truncation
    differences between the contenders)."""
    out = []
    for t in texts:
        enc = tokenizer(t, return_offsets_mapping=True)
        if len(enc["input_ids"]) > max_tokens:
            end = enc["offset_mapping"][max_tokens - 2][1]
            t = t[:end].rsplit(" ", 1)[0]
        out.append(t)
    return out


def memory_worker(archive: Path, ckpt: Path, out: Path) -> dict:
    """Run the whole stage on `archive` in this (fresh) process; return its peak RSS."""
    import mlflow

    from longdoc.components.core import tracking
    from longdoc.components.core.config import ScoreParams, TrackingParams
    from longdoc.components.inference.score import score
    from longdoc.components.inference.serving import log_longdoc_model

    store = TrackingParams(uri=f"sqlite:///{out.parent / (out.name + '.db')}", experiment="mem")
    os.environ["MLFLOW_TRACKING_URI"] = store.uri
    tracking.setup(store)
    with mlflow.start_run():
        info = log_longdoc_model(ckpt, "longdoc-mem")
    uri = f"models:/longdoc-mem/{info.registered_model_version}"
    t0 = time.perf_counter()
    manifest = score(ScoreParams(inputs=[archive], model_uri=uri, out=out, max_len=1024), store)
    return {
        "docs": manifest["counts"]["scored"],
        "tokens": manifest["tokens"],
        "seconds": time.perf_counter() - t0,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def memory_table(base_docs: int, factors: list[int]) -> str:
    """Peak RSS of the stage (a fresh process each) on archives of growing size: flat = bounded.
    Small model (hidden 64, 2 layers, 1k positions), documents of 1k-6k words, truncated to
    1,024 tokens."""
    import json
    import subprocess

    from longdoc.components.core.config import ModelParams
    from longdoc.components.data.tokenize import train_tokenizer
    from longdoc.components.modeling.model import LongformerForSequenceClassification, make_config

    rng = np.random.default_rng(1)
    lines = [
        "| documents | archive MiB (text MiB) | tokens scored | seconds | peak RSS MiB |",
        "|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        pool = make_texts(rng, 64, 1000, 6000)
        tokenizer = train_tokenizer(iter(pool), vocab_size=2000, min_frequency=2)
        config = make_config(
            ModelParams(
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=128,
                attention_window=64,
                max_position_embeddings=1026,
            ),
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            num_labels=2,
        )
        ckpt = tmp / "ckpt"
        LongformerForSequenceClassification(config).save_pretrained(ckpt)
        tokenizer.save_pretrained(ckpt)
        for factor in factors:
            n = base_docs * factor
            archive = tmp / f"docs{n}.tar.gz"
            text_bytes = 0
            with tarfile.open(archive, "w:gz") as tar:
                for i in range(n):
                    data = pool[i % len(pool)].encode() + f" {i}".encode()
                    text_bytes += len(data)
                    info = tarfile.TarInfo(f"doc{i:06d}.txt")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            res = subprocess.run(
                [sys.executable, __file__, "--memory-worker", str(archive), str(ckpt)],
                capture_output=True,
                text=True,
                check=True,
                cwd=tmp,
            )
            r = json.loads(res.stdout.strip().splitlines()[-1])
            lines.append(
                f"| {r['docs']:,} | {archive.stat().st_size / 2**20:.1f} "
                f"({text_bytes / 2**20:.1f}) | {r['tokens']:,} | {r['seconds']:.0f} | "
                f"{r['peak_mib']:,.0f} |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--min-tokens", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=0, help="model positions; 0 = --max-tokens")
    ap.add_argument("--overlap", type=int, default=256, help="window overlap with --max-len")
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--hf-batch", type=int, default=0, help="also a padded pipeline batch")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--no-append", action="store_true", help="don't append to RESULTS.md")
    ap.add_argument(
        "--memory",
        type=int,
        nargs="*",
        metavar="FACTOR",
        help="instead: the stage's peak RSS on archives of 256 x FACTOR documents (default 1 8)",
    )
    ap.add_argument("--memory-worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_worker:
        import json

        archive, ckpt = map(Path, args.memory_worker)
        print(json.dumps(memory_worker(archive, ckpt, Path.cwd() / f"out-{archive.stem}")))
        return
    if args.memory is not None:
        table = memory_table(256, args.memory or [1, 8])
        print()
        print(table)
        if not args.no_append:
            cmd = "python benchmarks/score.py " + " ".join(sys.argv[1:])
            with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
                f.write(
                    f"\n## Batch scoring memory, growing archives (issue 7), "
                    f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\nCommand: `{cmd.strip()}`. "
                    f"{memory_table.__doc__.split(chr(10), 1)[1].strip()} chunk_docs 256, "
                    f"a fresh process per row.\n\n{table}\n"
                )
        return

    import mlflow
    import torch
    from transformers import AutoTokenizer, pipeline
    from transformers import LongformerForSequenceClassification as HFLongformer

    from longdoc.components.core import tracking
    from longdoc.components.core.config import ScoreParams, TrackingParams
    from longdoc.components.inference.score import score
    from longdoc.components.inference.serving import InferenceEngine, log_longdoc_model
    from longdoc.components.modeling.model import quiet_loading

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        ckpt = tmp / "ckpt"
        # ~1.3 tokens a word with this vocabulary: aim the word counts at the token range.
        texts = make_texts(rng, args.docs, int(args.min_tokens / 1.2), int(args.max_tokens / 1.2))
        max_len = args.max_len or args.max_tokens
        windowed = max_len < args.max_tokens
        make_checkpoint(ckpt, texts, max_len, (max_len, args.overlap) if windowed else None)
        tokenizer = AutoTokenizer.from_pretrained(ckpt)
        texts = trim(texts, tokenizer, args.max_tokens)
        lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
        total_tokens = sum(lengths)
        print(
            f"{len(texts)} documents, {total_tokens:,} tokens "
            f"(min {min(lengths):,}, median {int(np.median(lengths)):,}, max {max(lengths):,})",
            flush=True,
        )

        with quiet_loading():
            hf_model = HFLongformer.from_pretrained(ckpt).eval()
        pipes = {
            "transformers pipeline (batch 1)": pipeline(
                "text-classification", model=hf_model, tokenizer=tokenizer, device="cpu", top_k=None
            )
        }
        if args.hf_batch:
            pipes[f"transformers pipeline (batch {args.hf_batch})"] = pipes[
                "transformers pipeline (batch 1)"
            ]
        fp32 = InferenceEngine.from_checkpoint(ckpt, device="cpu")
        bf16 = InferenceEngine.from_checkpoint(ckpt, device="cpu", bf16=True)

        archive = tmp / "docs.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for i, t in enumerate(texts):
                data = t.encode()
                info = tarfile.TarInfo(f"doc{i:03d}.txt")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        store = TrackingParams(uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="bench")
        os.environ["MLFLOW_TRACKING_URI"] = store.uri
        tracking.setup(store)
        with mlflow.start_run():
            info = log_longdoc_model(ckpt, "longdoc-bench")
        mlflow.MlflowClient().set_registered_model_alias(
            "longdoc-bench", "champion", info.registered_model_version
        )

        def run_pipe(name: str) -> list[list[float]]:
            batch = args.hf_batch if "batch 1)" not in name else 1
            out = pipes[name](texts, batch_size=batch, truncation=True, max_length=max_len)
            return [
                [next(d["score"] for d in o if d["label"] == lab) for lab in ("neg", "pos")]
                for o in out
            ]

        def run_engine(engine) -> list[list[float]]:
            return [
                p["probabilities"]
                for p in engine.predict_texts(texts, batch_tokens=args.batch_tokens)
            ]

        runs = [0]

        def run_stage() -> list[list[float]]:
            runs[0] += 1
            out = tmp / f"pred{runs[0]}"
            params = ScoreParams(
                inputs=[archive],
                model_uri="models:/longdoc-bench@champion",
                out=out,
                max_len=max_len,
                batch_tokens=args.batch_tokens,
                device="cpu",
            )
            score(params, store)
            import pyarrow.parquet as pq

            rows = sorted(
                pq.read_table(out / "predictions.parquet").to_pylist(), key=lambda r: r["member"]
            )
            return [r["probabilities"] for r in rows]

        contenders = {name: (lambda n=name: run_pipe(n)) for name in pipes}
        contenders["ours, engine fp32"] = lambda: run_engine(fp32)
        contenders["ours, engine bf16"] = lambda: run_engine(bf16)
        contenders["ours, `longdoc score` stage (fp32)"] = run_stage

        # warm-up: one short document each (lazy inits, kernel selection)
        short = [texts[int(np.argmin(lengths))]]
        pipes["transformers pipeline (batch 1)"](short, truncation=True, max_length=max_len)
        fp32.predict_texts(short)
        bf16.predict_texts(short)

        best: dict[str, float] = {}
        preds: dict[str, list[list[float]]] = {}
        for rep in range(args.reps):
            for name, fn in contenders.items():
                t0 = time.perf_counter()
                preds[name] = fn()
                dt = time.perf_counter() - t0
                best[name] = min(best.get(name, dt), dt)
                print(f"[rep {rep + 1}] {name}: {dt:.1f} s", flush=True)

    base_name = "transformers pipeline (batch 1)"
    base = best[base_name]
    ref = np.array(preds[base_name])
    lines = [
        "| contender | seconds | docs/s | tokens/s | speed-up | labels = pipeline "
        "| max abs dprob |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, secs in best.items():
        p = np.array(preds[name])
        same = int((p.argmax(1) == ref.argmax(1)).sum())
        lines.append(
            f"| {name} | {secs:.1f} | {len(texts) / secs:.2f} | {total_tokens / secs:,.0f} | "
            f"{base / secs:.2f}x | {same}/{len(texts)} | {np.abs(p - ref).max():.1e} |"
        )
    table = "\n".join(lines)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print()
    print(table)
    print(f"total {time.perf_counter() - t_start:.0f} s, peak RSS {peak:,.0f} MiB")
    if windowed:
        n_win = sum(len(e.windows) for e in fp32.encode(texts))
        over = sum(n > max_len for n in lengths)
        print(f"{over}/{len(texts)} documents over max_len={max_len}: ours reads {n_win} windows")
    if not args.no_append:
        cmd = "python benchmarks/score.py " + " ".join(sys.argv[1:])
        entry = (
            f"\n## Batch scoring, ours vs transformers' text-classification pipeline (issue 7), "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
            f"Command: `{cmd.strip()}`\n"
            f"Machine: {platform.machine()}, {args.threads} threads (shared with other jobs), "
            f"torch {torch.__version__}. {len(texts)} documents, {total_tokens:,} tokens "
            f"({min(lengths):,}-{max(lengths):,} a document); random-init classifier, hidden 256, "
            f"4 layers, 4 heads, FFN 1024, window 256, the same safetensors for every row; "
            f"best of {args.reps} alternating repetitions; token budget {args.batch_tokens:,}. "
            f"The stage row includes reading the tar.gz, the MLflow model load and the Parquet "
            f"writes.\n\n{table}\n"
        )
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(entry)
        print(f"appended to {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
