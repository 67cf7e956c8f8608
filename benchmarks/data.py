"""Ingest and tokenize throughput and memory on a generated corpus (issue 5, Performance).

One run, side by side (the machine may be shared: the encode comparison alternates the three
contenders `--reps` times in one process and reports each one's best and the median ratio):
- ingest: text MB/s (decompressed), input MB/s (on disk), docs/s and peak RSS of the stage;
- tokenize: the stage's encode pass (read corpus, encode, map sentence offsets, write Arrow) in
  tokens/s, versus raw `tokenizer.encode_batch` on the same texts (target >= 0.85x; shown too:
  `encode_batch_fast`, which the stage uses for byte-level tokenizers) and versus a
  `datasets.Dataset.map(batched=True)` baseline with the same tokenizer (target >= 1.5x); peak
  RSS of the whole stage (tokenizer training, encoding, packing).

Every measurement runs in a fresh spawned process so its peak RSS is its own. The corpus is
synthetic (Zipf-distributed made-up words, sentences and paragraphs, long-tailed document
lengths, 2% exact duplicates) in two container kinds: gzipped JSONL and a tar.gz of .txt files.

    .venv/bin/python benchmarks/data.py                 # 200 MB of text (the issue's size)
    .venv/bin/python benchmarks/data.py --mb 40         # a quicker look
    .venv/bin/python benchmarks/data.py --mb 200 --append-results
    .venv/bin/python benchmarks/data.py --mb 2500 --no-compare --tokenizer-sample-mb 50  # RSS
    .venv/bin/python benchmarks/data.py --mb 1000 --no-compare --tokenizer-sample-mb 20 \
        --skip-ingest                                    # tokenize alone (corpus written directly)

`--append-results` appends the table, with the command, to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


# --------------------------------------------------------------------------------------------
# Corpus generation
# --------------------------------------------------------------------------------------------


def _vocab(rng: np.random.Generator, n: int = 30_000) -> tuple[np.ndarray, np.ndarray]:
    words = set()
    while len(words) < n:
        k = int(rng.integers(1, 5))
        words.add("".join(rng.choice(_SYLLABLES, size=k)))
    vocab = np.array(sorted(words))
    ranks = np.arange(1, n + 1, dtype=np.float64)
    p = 1.0 / ranks**1.07
    return vocab[rng.permutation(n)], p / p.sum()


def _document(rng: np.random.Generator, vocab: np.ndarray, p: np.ndarray) -> str:
    n_words = int(np.clip(rng.lognormal(7.6, 0.9), 200, 60_000))  # median ~2k words, long tail
    words = vocab[rng.choice(len(vocab), size=n_words, p=p)].tolist()
    out: list[str] = []
    i = 0
    para: list[str] = []
    while i < n_words:
        n = int(rng.integers(6, 28))
        sent = words[i : i + n]
        i += n
        sent[0] = sent[0].capitalize()
        para.append(" ".join(sent) + (". " if rng.random() < 0.85 else "? "))
        if rng.random() < 0.15:
            out.append("".join(para).strip())
            para = []
    if para:
        out.append("".join(para).strip())
    return "\n\n".join(out)


def generate(src: Path, mb: float, seed: int = 0) -> dict[str, Any]:
    """Write about `mb` MB of text under `src`: 4 .jsonl.gz files and one .tar.gz of .txt."""
    rng = np.random.default_rng(seed)
    vocab, p = _vocab(rng)
    src.mkdir(parents=True, exist_ok=True)
    target = int(mb * 1e6)
    jsonl = [gzip.open(src / f"part-{k}.jsonl.gz", "wt", compresslevel=3) for k in range(4)]
    tar_buf = open(src / "pages.tar.gz", "wb")  # noqa: SIM115 - closed below
    tar_gz = gzip.GzipFile(fileobj=tar_buf, mode="wb", compresslevel=3)
    tar = tarfile.open(fileobj=tar_gz, mode="w|")
    total = docs = dups = 0
    recent: list[str] = []
    t0 = time.monotonic()
    while total < target:
        if recent and rng.random() < 0.02:
            text = recent[int(rng.integers(len(recent)))]
            dups += 1
        else:
            text = _document(rng, vocab, p)
            recent = (recent + [text])[-50:]
        data = text.encode()
        if docs % 10 < 3:
            info = tarfile.TarInfo(f"pages/{docs // 1000:03d}/doc-{docs:07d}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        else:
            rec = {"id": docs, "title": f"Document {docs}", "text": text}
            jsonl[docs % 4].write(json.dumps(rec, ensure_ascii=False) + "\n")
        total += len(data)
        docs += 1
    for f in jsonl:
        f.close()
    tar.close()
    tar_gz.close()
    tar_buf.close()
    on_disk = sum(f.stat().st_size for f in src.iterdir())
    return {
        "docs": docs,
        "exact_duplicates": dups,
        "text_bytes": total,
        "disk_bytes": on_disk,
        "generate_s": round(time.monotonic() - t0, 1),
    }


def write_corpus_directly(corpus: Path, mb: float, seed: int = 0) -> dict[str, Any]:
    """About `mb` MB of generated text written straight into ingest's output format (Parquet
    shards of 2,000 documents + manifest), sentences cut after ". " / "? ": for `--skip-ingest`,
    which measures the tokenize stage alone (ingest runs ~10x slower than tokenize here)."""
    import re

    import pyarrow as pa
    import pyarrow.parquet as pq

    from longdoc.components.core.io import sha256_bytes, sha256_file, write_manifest
    from longdoc.components.data.ingest import CORPUS_SCHEMA, SENTENCE_TYPE

    rng = np.random.default_rng(seed)
    vocab, p = _vocab(rng)
    corpus.mkdir(parents=True)
    ends = re.compile(r"[.?](?= |$)")
    shards, total, docs, t0 = [], 0, 0, time.monotonic()
    while total < mb * 1e6:
        texts = []
        while len(texts) < 2000 and total < mb * 1e6:
            texts.append(_document(rng, vocab, p))
            total += len(texts[-1])
        sentences = []
        for t in texts:
            spans, start = [], 0
            for m in ends.finditer(t):
                spans.append({"start": start, "end": m.end()})
                start = m.end() + 1
            sentences.append(spans)
        table = pa.table(
            {
                "doc_id": [sha256_bytes(t.encode()) for t in texts],
                "source": ["generated"] * len(texts),
                "member": [f"{docs + i}" for i in range(len(texts))],
                "text": texts,
                "n_chars": [len(t) for t in texts],
                "sentences": pa.array(sentences, pa.list_(SENTENCE_TYPE)),
                "meta": ["{}"] * len(texts),
            },
            schema=CORPUS_SCHEMA,
        )
        name = f"part-{len(shards):05d}.parquet"
        pq.write_table(table, corpus / name, compression="zstd")
        shards.append({"name": name, "rows": len(texts), "sha256": sha256_file(corpus / name)})
        docs += len(texts)
    write_manifest(corpus, stage="ingest (written directly by benchmarks/data.py)", shards=shards)
    on_disk = sum(f.stat().st_size for f in corpus.glob("*.parquet"))
    return {
        "docs": docs,
        "exact_duplicates": 0,
        "text_bytes": total,
        "disk_bytes": on_disk,
        "generate_s": round(time.monotonic() - t0, 1),
    }


# --------------------------------------------------------------------------------------------
# Measurements (each in a fresh process)
# --------------------------------------------------------------------------------------------


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _run_ingest(src: str, out: str) -> dict[str, Any]:
    from longdoc.components.core.config import IngestParams
    from longdoc.components.data.ingest import ingest

    t0 = time.monotonic()
    m = ingest(IngestParams(sources=[src], out=out, shard_max_docs=2000))
    return {"wall_s": time.monotonic() - t0, "manifest": m, "rss_mib": _peak_rss_mib()}


def _run_tokenize(
    corpus: str, out: str, vocab: int, model: str, base: str | None = None
) -> dict[str, Any]:
    from longdoc.components.core.config import TokenizeParams
    from longdoc.components.data.tokenize import tokenize

    t0 = time.monotonic()
    params = TokenizeParams(
        corpus=corpus,
        out=out,
        vocab_size=vocab,
        seq_len=4096,
        tokenizer_model=model,
        base_tokenizer=base,
    )
    m = tokenize(params)
    return {"wall_s": time.monotonic() - t0, "manifest": m, "rss_mib": _peak_rss_mib()}


def _train_sample_tokenizer(corpus: str, dest: str, vocab: int, model: str, mb: float) -> dict:
    """A tokenizer trained on the first `mb` MB of the corpus, for `--tokenizer-sample-mb`:
    on a multi-GB corpus training on everything costs more time than the memory check needs."""
    from longdoc.components.data.ingest import iter_corpus_batches
    from longdoc.components.data.tokenize import _save_tokenizer, train_tokenizer

    def texts() -> Any:
        seen = 0
        for batch in iter_corpus_batches(corpus, ["text"]):
            chunk = batch.column("text").to_pylist()
            yield chunk
            seen += sum(len(t) for t in chunk)
            if seen >= mb * 1e6:
                return

    t0 = time.monotonic()
    tok = train_tokenizer(texts(), vocab, model=model)
    _save_tokenizer(tok, Path(dest))
    return {"train_s": time.monotonic() - t0}


def _raw(backend: Any, groups: list[list[str]], fast: bool = False) -> int:
    encode = backend.encode_batch_fast if fast else backend.encode_batch
    n_tokens = 0
    for texts in groups:
        for enc in encode(texts, add_special_tokens=False):
            n_tokens += len(enc)
    return n_tokens


def _ours(backend: Any, corpus: str, schema: Any, dest: Path) -> int:
    """The stage's encode pass itself (`components.data.tokenize._encode_part`): read the corpus
    shards, encode, map sentence offsets, write the docs shards."""
    from longdoc.components.core.stage import Progress
    from longdoc.components.data.ingest import corpus_shards
    from longdoc.components.data.tokenize import _encode_part, byte_level_lengths

    byte_lens = byte_level_lengths(backend)
    progress = Progress("tokenize", "docs", every_s=1e9)
    for k, shard in enumerate(corpus_shards(corpus)):
        path = dest / f"part-{k:05d}.arrow"
        _encode_part(backend, shard, path, schema, set(), progress, byte_lens)
    return progress.extra["tokens"]


def _datasets_map(corpus: str, hf_tok: Any, cache: Path) -> tuple[int, float]:
    """The common recipe, from the same Parquet corpus files the stage reads:
    `Dataset.from_parquet(...)` then `.map(tokenizer, batched=True)`. Each round gets a fresh
    cache directory: a cache left by an earlier round would hand datasets the corpus already
    converted to Arrow, a head start the stage never gets. Returns (tokens, seconds of the
    from_parquet part), so the table can show the map alone too."""
    import datasets

    from longdoc.components.data.ingest import corpus_shards

    datasets.disable_progress_bars()
    shutil.rmtree(cache, ignore_errors=True)
    files = [str(p) for p in corpus_shards(corpus)]
    t0 = time.monotonic()
    ds = datasets.Dataset.from_parquet(files, columns=["doc_id", "text"], cache_dir=str(cache))
    load_s = time.monotonic() - t0

    def enc(batch: dict[str, list]) -> dict[str, list]:
        return hf_tok(batch["text"], add_special_tokens=False, truncation=False, verbose=False)

    out = ds.map(
        enc,
        batched=True,
        remove_columns=["text"],
        cache_file_name=str(cache / "map.arrow"),
        load_from_cache_file=False,
    )
    n_tokens = sum(len(x) for x in out["input_ids"])
    del out, ds
    shutil.rmtree(cache, ignore_errors=True)
    return n_tokens, load_s


def _run_compare(
    corpus: str, tokenizer_dir: str, reps: int, with_datasets: bool, work: str
) -> dict[str, Any]:
    """Raw encode_batch, our encode pass and datasets.map, alternated `reps` times in one
    process (the machine is shared: alternating and keeping each one's best run compares them
    under the same conditions)."""
    from longdoc.components.data.ingest import corpus_shards
    from longdoc.components.data.tokenize import (
        _load_hf_tokenizer,
        _plain_backend,
        docs_schema,
        encode_batches,
    )

    hf_tok = _load_hf_tokenizer(Path(tokenizer_dir))
    backend = _plain_backend(hf_tok)
    schema = docs_schema(len(hf_tok))
    # raw gets the stage's batches, in memory: nothing but encoding is timed
    groups = [
        b.column("text").to_pylist() for path in corpus_shards(corpus) for b in encode_batches(path)
    ]
    dest = Path(work) / "compare"
    dest.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[float]] = {
        "raw": [],
        "raw_fast": [],
        "ours": [],
        "datasets": [],
        "datasets_map_only": [],
    }
    tokens: dict[str, int] = {}
    for rep in range(reps):
        for name in ("raw", "raw_fast", "ours", "datasets"):
            if name == "datasets" and not with_datasets:
                continue
            t0 = time.monotonic()
            if name in ("raw", "raw_fast"):
                n = _raw(backend, groups, fast=name == "raw_fast")
            elif name == "ours":
                n = _ours(backend, corpus, schema, dest)
            else:
                n, load_s = _datasets_map(corpus, hf_tok, dest / "hf")
                runs["datasets_map_only"].append(time.monotonic() - t0 - load_s)
            runs[name].append(time.monotonic() - t0)
            tokens[name] = n
            print(f"  rep {rep + 1}: {name:8s} {n / runs[name][-1]:12,.0f} tokens/s", flush=True)
    return {"runs": runs, "tokens": tokens, "rss_mib": _peak_rss_mib()}


def _child(fn_name: str, args: tuple, queue: Any) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    try:
        queue.put(("ok", globals()[fn_name](*args)))
    except BaseException as exc:  # report, then let the parent decide
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def in_fresh_process(fn_name: str, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn_name, args, queue))
    proc.start()
    status, value = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{fn_name} failed: {value}")
    return value


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| measurement | value | vs |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=200.0, help="text to generate, MB (default 200)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/longdoc-bench-data"))
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--tokenizer-model", choices=["bpe", "unigram"], default="bpe")
    ap.add_argument("--reps", type=int, default=3, help="alternated rounds (best one counts)")
    ap.add_argument("--no-datasets", action="store_true", help="skip the datasets.map baseline")
    ap.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the encode comparison (it holds every text in memory: for multi-GB RSS runs)",
    )
    ap.add_argument(
        "--tokenizer-sample-mb",
        type=float,
        default=None,
        help="train the tokenizer on this many MB of the corpus first and give the stage it as "
        "its base tokenizer (default: the stage trains on the whole corpus)",
    )
    ap.add_argument(
        "--skip-ingest",
        action="store_true",
        help="write the generated text directly as an ingested corpus and measure tokenize only",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--append-results", action="store_true")
    args = ap.parse_args(argv)

    work = args.work
    if work.exists():
        shutil.rmtree(work)
    src, corpus, shards = work / "src", work / "corpus", work / "shards"
    ing: dict[str, Any] = {}
    if args.skip_ingest:
        print(f"writing ~{args.mb:g} MB of text as a corpus in {corpus} ...", flush=True)
        gen = write_corpus_directly(corpus, args.mb)
        print(f"  {gen}", flush=True)
    else:
        print(f"generating ~{args.mb:g} MB of text in {src} ...", flush=True)
        gen = generate(src, args.mb)
        print(f"  {gen}", flush=True)
        print("ingest ...", flush=True)
        ing = in_fresh_process("_run_ingest", str(src), str(corpus))
    base = None
    if args.tokenizer_sample_mb:
        base = str(work / "base-tokenizer")
        print(f"training the tokenizer on {args.tokenizer_sample_mb:g} MB ...", flush=True)
        sample = in_fresh_process(
            "_train_sample_tokenizer",
            str(corpus),
            base,
            args.vocab,
            args.tokenizer_model,
            args.tokenizer_sample_mb,
        )
        print(f"  {sample}", flush=True)
    print("tokenize (train tokenizer + encode + pack) ...", flush=True)
    tok = in_fresh_process(
        "_run_tokenize", str(corpus), str(shards), args.vocab, args.tokenizer_model, base
    )
    tm = tok["manifest"]
    n_tok = tm["counts"]["tokens_total"]
    best: dict[str, float] = {}
    median: dict[str, float] = {}
    cmp_: dict[str, Any] = {}
    if not args.no_compare:
        tok_dir = str(shards / "tokenizer")
        print(f"encode: raw encode_batch / ours / datasets.map, {args.reps} alternated rounds ...")
        cmp_ = in_fresh_process(
            "_run_compare", str(corpus), tok_dir, args.reps, not args.no_datasets, str(work)
        )
        for name, n in cmp_["tokens"].items():
            if n != n_tok:
                raise RuntimeError(f"token counts differ: {name} {n} vs the stage's {n_tok}")
        best = {k: n_tok / min(v) for k, v in cmp_["runs"].items() if v}
        median = {k: n_tok / float(np.median(v)) for k, v in cmp_["runs"].items() if v}

    text_mb = gen["text_bytes"] / 1e6
    stage_tps = n_tok / tm["timings"]["encode_s"]
    tok_from = (
        f"sample of {args.tokenizer_sample_mb:g} MB, given as base"
        if base
        else f"{tm['timings']['tokenizer_s']:.1f} s"
    )
    rows = [
        ("generated text / on disk", f"{text_mb:.1f} MB / {gen['disk_bytes'] / 1e6:.1f} MB", ""),
    ]
    if ing:
        im = ing["manifest"]
        ingest_s = im["timings"]["total_s"]
        rows += [
            ("documents in / written", f"{im['counts']['inputs']} / {im['counts']['written']}",
             ""),
            ("ingest wall time", f"{ingest_s:.1f} s", f"{im['timings']['workers']} workers"),
            ("ingest text MB/s", f"{text_mb / ingest_s:.2f}", ""),
            ("ingest input (compressed) MB/s", f"{gen['disk_bytes'] / 1e6 / ingest_s:.2f}", ""),
            ("ingest docs/s", f"{im['counts']['inputs'] / ingest_s:.0f}", ""),
            ("ingest peak RSS", f"{ing['rss_mib']:.0f} MiB", ""),
        ]  # fmt: skip
    else:
        rows.append(("ingest", "skipped (--skip-ingest)", f"{gen['docs']} documents written"))
    rows += [
        ("tokenize: train tokenizer", tok_from,
         f"{args.tokenizer_model}, vocab {tm['vocab_size']}"),
        ("tokenize: tokens", f"{n_tok:,}", ""),
    ]  # fmt: skip
    if best:
        ours, raw = best["ours"], best["raw"]
        rows += [
            ("tokenize stage: encode pass (in the stage run)", f"{stage_tps:,.0f} tokens/s",
             f"{stage_tps / raw:.2f}x best raw"),
            (f"encode pass, ours (best of {args.reps})", f"{ours:,.0f} tokens/s",
             f"{ours / raw:.2f}x raw (target >= 0.85x); median "
             f"{median['ours'] / median['raw']:.2f}x"),
            (f"raw encode_batch (best of {args.reps})", f"{raw:,.0f} tokens/s", "1.00x"),
            (f"raw encode_batch_fast, no offsets (best of {args.reps})",
             f"{best['raw_fast']:,.0f} tokens/s",
             f"{best['raw_fast'] / raw:.2f}x raw; ours {ours / best['raw_fast']:.2f}x of it"),
        ]  # fmt: skip
    else:
        rows.append(("tokenize stage: encode pass", f"{stage_tps:,.0f} tokens/s", "no compare"))
    if "datasets" in best:
        ds, ds_map = best["datasets"], best["datasets_map_only"]
        per_round = ", ".join(
            f"{d / o:.2f}x"
            for o, d in zip(cmp_["runs"]["ours"], cmp_["runs"]["datasets"], strict=True)
        )
        rows += [
            (f"datasets: from_parquet + map(batched=True) (best of {args.reps})",
             f"{ds:,.0f} tokens/s",
             f"ours {ours / ds:.2f}x (target >= 1.5x); median "
             f"{median['ours'] / median['datasets']:.2f}x; per round {per_round}"),
            ("datasets: the map(batched=True) part alone", f"{ds_map:,.0f} tokens/s",
             f"ours {ours / ds_map:.2f}x; median "
             f"{median['ours'] / median['datasets_map_only']:.2f}x"),
        ]  # fmt: skip
    rows += [
        ("tokenize: pack", f"{tm['timings']['pack_s']:.1f} s", ""),
        ("tokenize stage wall time", f"{tok['wall_s']:.1f} s", ""),
        ("tokenize peak RSS (whole stage)", f"{tok['rss_mib']:.0f} MiB", ""),
    ]
    if cmp_:
        rows.append(
            ("compare process peak RSS (all texts in memory)", f"{cmp_['rss_mib']:.0f} MiB", "")
        )
    table = _table(rows)
    print()
    print(table)
    if args.append_results:
        cmd = "python benchmarks/data.py " + " ".join(argv if argv is not None else sys.argv[1:])
        cpus = len(os.sched_getaffinity(0))
        when = datetime.now(UTC).strftime("%Y-%m-%d")
        section = (
            f"\n## Ingest and tokenize throughput (issue 5, `benchmarks/data.py`)\n\n"
            f"Command: `{cmd.strip()}`\n"
            f"Machine: {cpus} cores ({platform.machine()}), {when}; "
            f"generated corpus of {text_mb:.0f} MB text.\n\n{table}\n"
        )
        with open(REPO / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(section)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
