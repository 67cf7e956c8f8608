"""Ingest: documents from directories and archives into a deduplicated Parquet corpus.

Reads every source with `components.data.readers` (streaming, bounded, hostile-input safe),
normalises the text, drops exact duplicates by content hash and, when `near_dup_threshold` is
set, near-duplicates by MinHash/LSH, splits sentences with spaCy and writes size-bounded Parquet
shards plus a quarantine file and a manifest whose counts reconcile: every input is written, a
duplicate (exact or near), or quarantined with a reason.

Why this shape:
- `doc_id` is the sha256 of the normalised text, so the same document gets the same id in every
  run and every later stage (splits, scoring) can key on it.
- Sentences are stored as char offsets into `text` (not copies), so tokenize can map them to token
  positions and the corpus stays one copy of the text.
- Outputs are replaced cleanly and resumably: `manifest.json` is removed first and written last,
  so a directory without it is an unfinished run. Completed shards are checkpointed in
  `.ingest-state.json`; a rerun with the same inputs and params after a crash keeps them and reads
  on from the first document not in them.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import logging
import os
import re
import time
import unicodedata
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from longdoc.components.core.config import IngestParams, params_dict
from longdoc.components.core.io import (
    InputError,
    NothingProduced,
    atomic_path,
    atomic_write_text,
    claim_output_dir,
    require_path,
    sha256_bytes,
    sha256_file,
    sha256_tree,
    versions,
    write_manifest,
)
from longdoc.components.data.readers import Document, Rejected, iter_documents

__all__ = [
    "CORPUS_SCHEMA",
    "Document",
    "Rejected",
    "SentenceSplitter",
    "corpus_shards",
    "decode_entities",
    "NearDupIndex",
    "ingest",
    "iter_corpus_batches",
    "iter_documents",
    "normalize",
    "read_corpus",
]

log = logging.getLogger(__name__)

SENTENCE_TYPE = pa.struct([("start", pa.int32()), ("end", pa.int32())])
CORPUS_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("member", pa.string()),
        ("text", pa.string()),
        ("n_chars", pa.int64()),
        ("sentences", pa.list_(SENTENCE_TYPE)),
        ("meta", pa.string()),
    ]
)

STATE_FILE = ".ingest-state.json"
_QUARANTINE_PART = "quarantine.partial.jsonl"
_DUPLICATES_PART = "duplicates.partial.jsonl"
_SENT_BATCH_DOCS = 32  # documents per nlp.pipe call / per worker task
_SENT_BATCH_CHARS = 4_000_000
_ROW_GROUP_DOCS = 128
_ROW_GROUP_CHARS = 32_000_000
_MAX_STRINGS = 1_000_000  # spaCy StringStore size at which the pipeline is reloaded
_POOL_MIN_BYTES = 64 * 1024 * 1024  # below this, worker start-up costs more than it saves
_POOL_MIN_CPUS = 4  # on 2 shared cores a pool measured slower (21 s vs 14 s on 40 MB)
_PROGRESS_EVERY_S = 5.0

# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

_NEWLINES = re.compile(r"\r\n?|[\f\v\x1c-\x1e\x85\u2028\u2029]")
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\ufeff]")  # \t \n kept; \r \f \v mapped
_HSPACE = re.compile(r"[^\S\n]+")  # spaces, tabs, NBSP and other horizontal whitespace
_NL_SPACE = re.compile(r" ?\n ?")
_MANY_NL = re.compile(r"\n{3,}")
_ANY_SPACE = re.compile(r"\s+")


WHITESPACE_MODES = ("paragraphs", "single_space", "keep")


def normalize(text: str, whitespace: str = "paragraphs") -> str:
    """Canonical form of a document's text; the dedupe hash and all offsets refer to it.

    Always: Unicode NFC; line breaks unified to `\\n` (CR, CRLF, form feed, U+2028/9); other
    control characters removed; leading/trailing whitespace stripped. Then, by `whitespace`:
    - "paragraphs" (default): runs of horizontal whitespace (spaces, tabs, NBSP...) collapsed to
      one space, spaces around line breaks dropped, more than one blank line collapsed to one
      (blank lines stay: they are paragraph and sentence boundaries);
    - "single_space": every run of whitespace, line breaks included, becomes one space (one
      paragraph per document, as many web corpora are distributed);
    - "keep": nothing more (indentation and layout matter, e.g. code or verse).
    """
    text = unicodedata.normalize("NFC", text)
    text = _NEWLINES.sub("\n", text)
    text = _CONTROLS.sub("", text)
    if whitespace == "paragraphs":
        text = _HSPACE.sub(" ", text)
        text = _NL_SPACE.sub("\n", text)
        text = _MANY_NL.sub("\n\n", text)
    elif whitespace == "single_space":
        text = _ANY_SPACE.sub(" ", text)
    elif whitespace != "keep":
        raise ValueError(f"whitespace must be one of {WHITESPACE_MODES}, not {whitespace!r}")
    return text.strip()


def decode_entities(text: str) -> str:
    """HTML character references left in text (`&amp;`, `&#8217;`, `&eacute;`) decoded: scraped
    text and JSON corpora often carry them. Documents whose reader already decoded them (HTML,
    XML) are not decoded twice, which would turn an escaped `&amp;lt;` into `<`."""
    return html.unescape(text) if "&" in text else text


# --------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------


class SentenceSplitter:
    """Sentence char offsets from spaCy, refined so every span is a trimmed, non-empty sentence.

    `model="blank:en"` (any `blank:<lang>`) is `spacy.blank(lang)` + `sentencizer` (no download);
    anything else is an installed pipeline name/path for `spacy.load`. Blank lines are hard
    boundaries as well (headings and list items have no final punctuation).
    """

    def __init__(self, model: str = "blank:en", max_chars: int = 1_000_000) -> None:
        import spacy

        self.model, self.max_chars = model, max_chars
        if model.startswith("blank:"):
            self.nlp = spacy.blank(model.split(":", 1)[1])
            self.nlp.add_pipe("sentencizer")
        else:
            try:
                self.nlp = spacy.load(model)
            except OSError as exc:
                raise InputError(f"spaCy pipeline {model!r} is not installed: {exc}") from None
            if not any(self.nlp.has_pipe(p) for p in ("sentencizer", "parser", "senter")):
                self.nlp.add_pipe("sentencizer")
        self.nlp.max_length = max(self.nlp.max_length, max_chars + 1)
        self._punct: np.ndarray | None = None
        if model.startswith("blank:"):
            chars = self.nlp.get_pipe("sentencizer").punct_chars
            self._punct = np.asarray(
                sorted(self.nlp.vocab.strings.add(c) for c in chars), np.uint64
            )

    def split(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(starts, ends) int32 arrays per text, in order."""
        if len(self.nlp.vocab.strings) > _MAX_STRINGS:
            # spaCy interns every new token string and never forgets: on a multi-GB corpus the
            # vocab alone would grow without bound. Boundaries do not depend on it: start fresh.
            self.__init__(self.model, self.max_chars)
        out = []
        if self._punct is not None:
            for text in texts:
                out.append(refine_spans(text, self._sentencizer_spans(self.nlp.make_doc(text))))
            return out
        for doc, text in zip(self.nlp.pipe(texts, batch_size=_SENT_BATCH_DOCS), texts, strict=True):
            out.append(refine_spans(text, ((s.start_char, s.end_char) for s in doc.sents)))
        return out

    def _sentencizer_spans(self, doc: Any) -> list[tuple[int, int]]:
        """spaCy's `sentencizer` rule on spaCy's tokens, over token attribute arrays.

        Same boundaries as the component (a test compares them), without building a Python
        Token object per token, which was 40% of ingest time. The rule: a token that is neither
        punctuation nor a sentence-final char starts a sentence when a sentence-final char
        (`.`, `!`, `?`, ...) came after the previous such token; the first token always does.
        """
        from spacy.attrs import IDX, IS_PUNCT, LENGTH, ORTH

        if len(doc) == 0:
            return []
        arr = doc.to_array([ORTH, IS_PUNCT, IDX, LENGTH])
        is_pc = np.isin(arr[:, 0], self._punct)
        cand = np.flatnonzero(~is_pc & (arr[:, 1] == 0))
        seen = np.cumsum(is_pc)
        prev = np.concatenate([[0], seen[cand[:-1]]]) if len(cand) else cand
        starts = cand[seen[cand] - prev > 0] if len(cand) else cand
        if not len(starts) or starts[0] != 0:
            starts = np.concatenate([[0], starts])
        idx = arr[:, 2].astype(np.int64)
        end_chars = idx + arr[:, 3].astype(np.int64)
        last = np.concatenate([starts[1:] - 1, [len(doc) - 1]])
        return list(zip(idx[starts].tolist(), end_chars[last].tolist(), strict=True))


def refine_spans(text: str, spans: Iterable[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Split spans at blank lines, trim whitespace, drop empty pieces."""
    starts: list[int] = []
    ends: list[int] = []
    for a, b in spans:
        while a < b:
            cut = text.find("\n\n", a, b)
            piece_end = b if cut < 0 else cut
            s, e = a, piece_end
            while s < e and text[s].isspace():
                s += 1
            while e > s and text[e - 1].isspace():
                e -= 1
            if e > s:
                starts.append(s)
                ends.append(e)
            a = b if cut < 0 else cut + 2
    return np.asarray(starts, dtype=np.int32), np.asarray(ends, dtype=np.int32)


@functools.lru_cache(maxsize=4)
def _splitter(model: str, max_chars: int) -> SentenceSplitter:
    """Loading a pipeline costs ~0.3 s (blank) to seconds: reuse it across runs in a process."""
    return SentenceSplitter(model, max_chars)


_WORKER_SPLITTER: SentenceSplitter | None = None


def _worker_init(model: str, max_chars: int) -> None:
    global _WORKER_SPLITTER
    _WORKER_SPLITTER = _splitter(model, max_chars)


def _worker_split(texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    assert _WORKER_SPLITTER is not None
    return _WORKER_SPLITTER.split(texts)


class _Done:
    """A finished 'future' for the in-process path."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def result(self) -> Any:
        return self._value


# --------------------------------------------------------------------------------------------
# Near-duplicates
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
_FNV = np.uint64(0x100000001B3)
_SHINGLE_CHUNK = 4096


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm that minimise the false-positive plus
    false-negative area around `threshold` for the LSH candidate curve 1 - (1 - s^r)^b (the
    datasketch recipe). Candidates are then checked against the threshold on the signature."""
    s = np.linspace(0.0, 1.0, 201)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1.0 - (1.0 - s**r) ** b
            fp = np.trapezoid(np.where(s < threshold, p, 0.0), s)
            fn = np.trapezoid(np.where(s >= threshold, 1.0 - p, 0.0), s)
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


class NearDupIndex:
    """MinHash over word shingles + LSH bands: finds a kept document whose estimated Jaccard
    similarity (of `shingle`-word shingles, lower-cased) with a new one is >= `threshold`.

    Why this and not pairwise comparison: constant work per document whatever the corpus size.
    Hashes are seeded constants (crc32 words, multiply-shift permutations), so the same corpus
    gives the same decisions in every process and run, which resume relies on. Memory: the
    signature (4 bytes x num_perm) and one table entry per band for each kept document.
    """

    def __init__(self, threshold: float, num_perm: int = 128, shingle: int = 5) -> None:
        self.threshold, self.num_perm, self.shingle = threshold, num_perm, shingle
        rng = np.random.default_rng(0x5EED)
        self._a = (rng.integers(0, 2**63, num_perm, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self._b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
        self.bands, self.rows = lsh_bands(threshold, num_perm)
        self._tables: list[dict[bytes, int]] = [{} for _ in range(self.bands)]
        self._sigs = np.zeros((1024, num_perm), dtype=np.uint32)
        self._ids: list[str] = []

    def signature(self, text: str) -> np.ndarray | None:
        """MinHash signature of `text`, or None when it has no words."""
        words = _WORD.findall(text.lower())
        if not words:
            return None
        wh = np.fromiter(
            (zlib.crc32(w.encode("utf-8")) for w in words), dtype=np.uint64, count=len(words)
        )
        k = min(self.shingle, len(words))
        n = len(words) - k + 1
        h = np.zeros(n, dtype=np.uint64)
        for j in range(k):  # FNV-style combination of k consecutive word hashes (wraps mod 2^64)
            h = h * _FNV + wh[j : j + n]
        h = np.unique(h)
        sig = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        for i in range(0, len(h), _SHINGLE_CHUNK):
            part = h[None, i : i + _SHINGLE_CHUNK]
            hashed = ((self._a[:, None] * part + self._b[:, None]) >> np.uint64(32)).astype(
                np.uint32
            )
            np.minimum(sig, hashed.min(axis=1), out=sig)
        return sig

    def _keys(self, sig: np.ndarray) -> list[bytes]:
        r = self.rows
        return [sig[i * r : (i + 1) * r].tobytes() for i in range(self.bands)]

    def query(self, sig: np.ndarray) -> tuple[str, float] | None:
        """(doc_id, estimated similarity) of the most similar kept document at or above the
        threshold, or None."""
        cands = {t[k] for t, k in zip(self._tables, self._keys(sig), strict=True) if k in t}
        best: tuple[str, float] | None = None
        for c in sorted(cands):
            sim = float(np.mean(self._sigs[c] == sig))
            if sim >= self.threshold and (best is None or sim > best[1]):
                best = (self._ids[c], sim)
        return best

    def add(self, doc_id: str, sig: np.ndarray) -> None:
        slot = len(self._ids)
        if slot == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.zeros_like(self._sigs)])
        self._sigs[slot] = sig
        self._ids.append(doc_id)
        for table, key in zip(self._tables, self._keys(sig), strict=True):
            table.setdefault(key, slot)


# --------------------------------------------------------------------------------------------
# Shard writing
# --------------------------------------------------------------------------------------------


@dataclass
class _Row:
    index: int  # position of the reader item this row came from (for resume)
    doc_id: str
    source: str
    member: str
    text: str
    meta: str


def _table(rows: list[_Row], spans: list[tuple[np.ndarray, np.ndarray]]) -> pa.Table:
    lengths = np.fromiter((len(s) for s, _ in spans), dtype=np.int32, count=len(spans))
    offsets = np.zeros(len(spans) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    starts = np.concatenate([s for s, _ in spans]) if spans else np.zeros(0, np.int32)
    ends = np.concatenate([e for _, e in spans]) if spans else np.zeros(0, np.int32)
    sentences = pa.ListArray.from_arrays(
        pa.array(offsets),
        pa.StructArray.from_arrays([pa.array(starts), pa.array(ends)], fields=list(SENTENCE_TYPE)),
    )
    return pa.Table.from_arrays(
        [
            pa.array([r.doc_id for r in rows], pa.string()),
            pa.array([r.source for r in rows], pa.string()),
            pa.array([r.member for r in rows], pa.string()),
            pa.array([r.text for r in rows], pa.string()),
            pa.array([len(r.text) for r in rows], pa.int64()),
            sentences,
            pa.array([r.meta for r in rows], pa.string()),
        ],
        schema=CORPUS_SCHEMA,
    )


class _ShardWriter:
    """Parquet shards of at most `max_docs` rows and about `max_chars` chars of text (a shard
    closes after the document that reaches either bound), each written to a temp name and
    renamed when complete; `on_shard` is called after each rename (the resume checkpoint)."""

    def __init__(
        self, out: Path, max_docs: int, max_chars: int, first_index: int, on_shard: Any
    ) -> None:
        self.out = out
        self.max_docs = max_docs
        self.max_chars = max_chars
        self._shard_chars = 0
        self.index = first_index
        self.on_shard = on_shard
        self.shards: list[dict[str, Any]] = []
        self._ctx: Any = None
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0
        self._buf: list[_Row] = []
        self._buf_spans: list[tuple[np.ndarray, np.ndarray]] = []
        self._buf_chars = 0

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}.parquet"

    def add(self, row: _Row, spans: tuple[np.ndarray, np.ndarray]) -> None:
        self._buf.append(row)
        self._buf_spans.append(spans)
        self._buf_chars += len(row.text)
        self._shard_chars += len(row.text)
        if self._rows + len(self._buf) >= self.max_docs or self._shard_chars >= self.max_chars:
            self._flush()
            self._close_shard(last_index=row.index)
        elif len(self._buf) >= _ROW_GROUP_DOCS or self._buf_chars >= _ROW_GROUP_CHARS:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        if self._writer is None:
            self._ctx = atomic_path(self.out / self.name)
            tmp = self._ctx.__enter__()
            self._writer = pq.ParquetWriter(tmp, CORPUS_SCHEMA, compression="zstd")
        self._writer.write_table(_table(self._buf, self._buf_spans))
        self._rows += len(self._buf)
        self._buf, self._buf_spans, self._buf_chars = [], [], 0

    def _close_shard(self, last_index: int) -> None:
        assert self._writer is not None
        self._writer.close()
        self._ctx.__exit__(None, None, None)  # rename into place
        path = self.out / self.name
        self.shards.append({"name": self.name, "rows": self._rows, "sha256": sha256_file(path)})
        self.on_shard(self.shards, last_index + 1)
        self._writer, self._ctx, self._rows, self._shard_chars = None, None, 0, 0
        self.index += 1

    def finish(self, last_index: int) -> None:
        self._flush()
        if self._writer is not None:
            self._close_shard(last_index)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)  # removes temp file
            self._writer = None


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def _fingerprint(params: IngestParams, inputs: list[dict[str, str]]) -> str:
    blob = json.dumps({"params": params_dict(params), "inputs": inputs}, sort_keys=True)
    return sha256_bytes(blob.encode())


def _clean_outputs(out: Path) -> None:
    """Remove everything a previous run wrote (manifest first: the dir stops looking done)."""
    for name in ("manifest.json", "quarantine.jsonl", "duplicates.jsonl", STATE_FILE):
        (out / name).unlink(missing_ok=True)
    for pattern in ("part-*.parquet", ".part-*.tmp", ".*.tmp", "*.partial.jsonl"):
        for p in out.glob(pattern):
            p.unlink(missing_ok=True)


def _load_resume(out: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint of an interrupted run with the same inputs and params, if it is intact."""
    try:
        state = json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if state.get("fingerprint") != fingerprint:
        return None
    for shard in state.get("shards", []):
        p = out / shard["name"]
        if not p.is_file() or sha256_file(p) != shard["sha256"]:
            return None
    return state


def _truncate_partial(path: Path, consumed: int) -> list[dict[str, Any]]:
    """Keep the partial-file records of items before `consumed`; rewrite the file to match."""
    kept: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                break  # a torn last line from a kill
            if rec["_i"] < consumed:
                kept.append(rec)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return kept


def _hash_source(src: Path, out: Path) -> str:
    """`sha256_tree(src)`, leaving out our own output directory when it lies inside `src`."""
    if not src.is_dir() or not out.resolve().is_relative_to(src.resolve()):
        return sha256_tree(src)
    h = hashlib.sha256()
    skip = out.resolve()
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        if not f.resolve().is_relative_to(skip):
            h.update(str(f.relative_to(src)).encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()


def _resolve_workers(workers: int | None, sources: list[Path]) -> int:
    if workers is not None:
        return max(0, workers)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    if cpus < _POOL_MIN_CPUS:
        return 0
    total = 0
    for src in sources:
        if src.is_file():
            total += src.stat().st_size
        else:
            total += sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    return min(cpus - 1, 8) if total >= _POOL_MIN_BYTES else 0


def _nothing_found(sources, quarantine_recs: list[dict], counts: dict, out: Path) -> str:
    """Why nothing was written, in words: an empty source, or what its inputs were instead."""
    names = ", ".join(str(s) for s in sources)
    if counts["inputs"] == 0:
        return f"no documents ingested from {names}: no files found"
    reasons = Counter(r["reason"].split(":")[0].split(" (")[0] for r in quarantine_recs)
    found = [f"{n} {reason}" for reason, n in reasons.most_common(3)]
    if len(reasons) > 3:
        found.append(f"{sum(reasons.values()) - sum(n for _, n in reasons.most_common(3))} other")
    if counts["duplicates"] + counts["near_duplicates"]:
        found.append(f"{counts['duplicates'] + counts['near_duplicates']} duplicates")
    return (
        f"no documents ingested from {names}: {counts['inputs']} inputs, "
        f"{'; '.join(found)} (details in {out / 'quarantine.jsonl'})"
    )


def ingest(params: IngestParams, *, workers: int | None = None) -> dict[str, Any]:
    """Run the ingest stage; returns the manifest (also written to `params.out/manifest.json`).

    `workers`: processes for sentence splitting (0 = in this process, which reads, dedupes and
    writes in any case). None picks 0 below 4 cores or 64 MiB of source bytes (measured: on 2
    shared cores a pool is slower), else cores - 1. Output is identical either way. Workers are
    spawned, so a script calling this with workers > 0 needs the `if __name__ == "__main__":`
    guard.
    Raises InputError for a missing source or when no document at all could be written.
    """
    t_start = time.monotonic()
    sources = [require_path(s, "source") for s in params.sources]
    out = Path(params.out)
    # The cleanup below deletes part-*.parquet & co. by name: only in a directory longdoc wrote.
    claim_output_dir(out, "ingest", force=params.force, legacy=(STATE_FILE,))

    t0 = time.monotonic()
    inputs = [{"path": str(s), "sha256": _hash_source(s, out)} for s in sources]
    hash_s = time.monotonic() - t0
    fingerprint = _fingerprint(params, inputs)

    state = _load_resume(out, fingerprint)
    if state is None:
        _clean_outputs(out)
        done_shards: list[dict[str, Any]] = []
        consumed = 0
    else:
        (out / "manifest.json").unlink(missing_ok=True)
        for p in out.glob(".*.tmp"):
            p.unlink(missing_ok=True)
        done_shards, consumed = state["shards"], state["consumed"]
        for p in out.glob("part-*.parquet"):  # shards written after the checkpoint
            if p.name not in {s["name"] for s in done_shards}:
                p.unlink()
        log.info("ingest: resuming after %d inputs, %d shards kept", consumed, len(done_shards))

    quarantine_path = out / _QUARANTINE_PART
    duplicates_path = out / _DUPLICATES_PART
    old_quarantine = _truncate_partial(quarantine_path, consumed)
    old_duplicates = _truncate_partial(duplicates_path, consumed)
    seen: set[str] = set()
    near = (
        NearDupIndex(params.near_dup_threshold, params.near_dup_num_perm, params.near_dup_shingle)
        if params.near_dup_threshold is not None
        else None
    )
    for shard in done_shards:
        cols = ["doc_id", "text"] if near is not None else ["doc_id"]
        for batch in pq.ParquetFile(out / shard["name"]).iter_batches(columns=cols):
            ids = batch.column("doc_id").to_pylist()
            seen.update(ids)
            if near is not None:  # the index of an uninterrupted run at this point
                for doc_id, text in zip(ids, batch.column("text").to_pylist(), strict=True):
                    sig = near.signature(text)
                    if sig is not None:
                        near.add(doc_id, sig)

    def checkpoint(shards: list[dict[str, Any]], consumed_upto: int) -> None:
        for fh in (qf, df):
            fh.flush()
            os.fsync(fh.fileno())
        state = {"fingerprint": fingerprint, "shards": shards, "consumed": consumed_upto}
        atomic_write_text(out / STATE_FILE, json.dumps(state, indent=1))

    writer = _ShardWriter(
        out, params.shard_max_docs, params.shard_max_chars, len(done_shards), checkpoint
    )
    writer.shards = list(done_shards)
    n_workers = _resolve_workers(workers if workers is not None else params.workers, sources)
    pool: ProcessPoolExecutor | None = None
    splitter: SentenceSplitter | None = None
    if n_workers > 0:
        pool = ProcessPoolExecutor(
            n_workers,
            mp_context=get_context("spawn"),
            initializer=_worker_init,
            initargs=(params.spacy_model, params.max_doc_chars),
        )
    else:
        splitter = _splitter(params.spacy_model, params.max_doc_chars)

    live = Counter(
        quarantined=len(old_quarantine), duplicates=len(old_duplicates), written=len(seen)
    )  # "duplicates" here counts exact and near ones (the log line only)
    index = 0  # reader items seen in this pass (including the skipped, already-done ones)
    source_s: Counter[str] = Counter()  # wall seconds per source in this pass
    chars_in = 0
    pending: list[_Row] = []
    pending_chars = 0
    inflight: deque[tuple[list[_Row], Future | _Done]] = deque()
    max_inflight = 2 * n_workers  # batches queued per worker; in-process: written at once
    t_loop = time.monotonic()
    t_log = t_loop

    def submit() -> None:
        nonlocal pending, pending_chars
        if not pending:
            return
        texts = [r.text for r in pending]
        fut = pool.submit(_worker_split, texts) if pool else _Done(splitter.split(texts))
        inflight.append((pending, fut))
        pending, pending_chars = [], 0

    def drain(keep: int) -> None:
        while len(inflight) > keep:
            rows, fut = inflight.popleft()
            for row, spans in zip(rows, fut.result(), strict=True):
                writer.add(row, spans)

    with (
        open(quarantine_path, "a", encoding="utf-8") as qf,
        open(duplicates_path, "a", encoding="utf-8") as df,
    ):

        def quarantine(i: int, source: str, member: str, reason: str) -> None:
            rec = {"_i": i, "source": source, "member": member, "reason": reason}
            qf.write(json.dumps(rec, ensure_ascii=False) + "\n")
            live["quarantined"] += 1

        try:
            t_item = time.monotonic()
            for item in _iter_all(sources, params, out):
                now = time.monotonic()  # reading this item + handling the previous one
                source_s[item.source] += now - t_item
                t_item = now
                i = index
                index += 1
                if i < consumed:
                    continue
                if isinstance(item, Rejected):
                    quarantine(i, item.source, item.member, item.reason)
                    continue
                text = item.text
                if params.decode_entities and not item.entities_decoded:
                    text = decode_entities(text)
                text = normalize(text, params.whitespace)
                chars_in += len(text)
                if not text:
                    quarantine(i, item.source, item.member, "empty or whitespace-only document")
                    continue
                if len(text) < params.min_chars:
                    why = f"too short: {len(text)} chars < min_chars={params.min_chars}"
                    quarantine(i, item.source, item.member, why)
                    continue
                if len(text) > params.max_doc_chars:
                    why = f"too long: {len(text)} chars > max_doc_chars={params.max_doc_chars}"
                    quarantine(i, item.source, item.member, why)
                    continue
                doc_id = sha256_bytes(text.encode("utf-8"))
                if doc_id in seen:
                    rec = {"_i": i, "source": item.source, "member": item.member}
                    rec.update(kind="exact", doc_id=doc_id)
                    df.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    live["duplicates"] += 1
                    continue
                if near is not None and (sig := near.signature(text)) is not None:
                    match = near.query(sig)
                    if match is not None:
                        rec = {"_i": i, "source": item.source, "member": item.member}
                        rec.update(kind="near", doc_id=doc_id, of=match[0])
                        rec["similarity"] = round(match[1], 4)
                        df.write(json.dumps(rec, ensure_ascii=False) + "\n")
                        live["duplicates"] += 1
                        continue
                    near.add(doc_id, sig)
                seen.add(doc_id)
                live["written"] += 1
                meta = json.dumps(item.meta, ensure_ascii=False, sort_keys=True)
                pending.append(_Row(i, doc_id, item.source, item.member, text, meta))
                pending_chars += len(text)
                if len(pending) >= _SENT_BATCH_DOCS or pending_chars >= _SENT_BATCH_CHARS:
                    submit()
                    drain(max_inflight)
                now = time.monotonic()
                if now - t_log >= _PROGRESS_EVERY_S:
                    t_log = now
                    dt = now - t_loop
                    log.info(
                        "ingest: %d inputs, %d written, %d duplicates, %d quarantined; "
                        "%.1f docs/s, %.2f Mchars/s",
                        index,
                        live["written"],
                        live["duplicates"],
                        live["quarantined"],
                        (index - consumed) / dt,
                        chars_in / dt / 1e6,
                    )
            submit()
            drain(0)
            writer.finish(index - 1)
        except BaseException:
            writer.abort()
            raise
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    loop_s = time.monotonic() - t_loop
    quarantine_recs = _truncate_partial(quarantine_path, index)
    duplicate_recs = _truncate_partial(duplicates_path, index)
    _finalize_jsonl(out / "quarantine.jsonl", quarantine_recs, quarantine_path)
    _finalize_jsonl(out / "duplicates.jsonl", duplicate_recs, duplicates_path)

    shards = writer.shards
    written = sum(s["rows"] for s in shards)
    n_near = sum(1 for r in duplicate_recs if r.get("kind") == "near")
    counts = {
        "inputs": index,
        "written": written,
        "duplicates": len(duplicate_recs) - n_near,
        "near_duplicates": n_near,
        "quarantined": len(quarantine_recs),
    }
    dropped = counts["duplicates"] + counts["near_duplicates"] + counts["quarantined"]
    if counts["inputs"] != written + dropped:
        raise RuntimeError(f"ingest counts do not reconcile: {counts}")  # a bug, never input
    if written == 0:
        (out / STATE_FILE).unlink(missing_ok=True)
        raise NothingProduced(_nothing_found(sources, quarantine_recs, counts, out))

    per_source = _per_source(out, shards, quarantine_recs, duplicate_recs, sources)
    n_chars, n_sentences = _corpus_totals(out, shards)
    total_s = time.monotonic() - t_start
    manifest = {
        "stage": "ingest",
        "inputs": inputs,
        "params": params_dict(params),
        "counts": {**counts, "chars": n_chars, "sentences": n_sentences},
        "per_source": per_source,
        "quarantine_reasons": _reason_kinds(quarantine_recs),
        "shards": shards,
        "schema": {f.name: str(f.type) for f in CORPUS_SCHEMA},
        "versions": versions("spacy", "pyarrow", "numpy", "charset-normalizer"),
        "timings": {
            "total_s": round(total_s, 3),
            "hash_inputs_s": round(hash_s, 3),
            "read_split_write_s": round(loop_s, 3),
            "docs_per_s": round((index - consumed) / max(loop_s, 1e-9), 2),
            "mchars_per_s": round(chars_in / max(loop_s, 1e-9) / 1e6, 3),
            "workers": n_workers,
            "resumed_after_inputs": consumed,
            # wall seconds reading and processing each source in this run (a resumed run
            # counts only its own pass); they add up to about read_split_write_s
            "per_source_s": {
                src: round(source_s[src], 3) for src in dict.fromkeys(str(x) for x in sources)
            },
        },
    }
    write_manifest(out, **manifest)
    (out / STATE_FILE).unlink(missing_ok=True)
    log.info(
        "ingest: %d inputs -> %d written, %d duplicates, %d quarantined in %.1fs (%s)",
        index,
        written,
        counts["duplicates"],
        counts["quarantined"],
        total_s,
        out,
    )
    return json.loads((out / "manifest.json").read_text())


def _iter_all(
    sources: list[Path], params: IngestParams, out: Path
) -> Iterator[Document | Rejected]:
    for src in sources:
        yield from iter_documents(
            src,
            max_member_bytes=params.max_member_bytes,
            max_total_bytes=params.max_total_bytes,
            exclude=[out],
            text_field=params.text_field,
            json_records_path=params.json_records_path,
            xml_record_path=params.xml_record_path,
        )


def _finalize_jsonl(dest: Path, records: list[dict[str, Any]], partial: Path) -> None:
    lines = []
    for rec in records:
        rec = {k: v for k, v in rec.items() if k != "_i"}
        lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    atomic_write_text(dest, "".join(lines))
    partial.unlink(missing_ok=True)


def _per_source(
    out: Path,
    shards: list[dict[str, Any]],
    quarantine: list[dict[str, Any]],
    duplicates: list[dict[str, Any]],
    sources: list[Path],
) -> dict[str, dict[str, int]]:
    """Counts per source; they reconcile like the totals."""
    written: Counter[str] = Counter()
    for shard in shards:
        col = pq.read_table(out / shard["name"], columns=["source"]).column("source")
        written.update(col.to_pylist())
    dup = Counter(r["source"] for r in duplicates if r.get("kind") != "near")
    near = Counter(r["source"] for r in duplicates if r.get("kind") == "near")
    quar = Counter(r["source"] for r in quarantine)
    result = {}
    for src in dict.fromkeys(str(s) for s in sources):
        w, d, n, q = written[src], dup[src], near[src], quar[src]
        result[src] = {
            "inputs": w + d + n + q,
            "written": w,
            "duplicates": d,
            "near_duplicates": n,
            "quarantined": q,
        }
    return result


def _corpus_totals(out: Path, shards: list[dict[str, Any]]) -> tuple[int, int]:
    chars = sentences = 0
    for shard in shards:
        t = pq.read_table(out / shard["name"], columns=["n_chars", "sentences"])
        chars += int(pc.sum(t.column("n_chars")).as_py() or 0)
        sentences += int(pc.sum(pc.list_value_length(t.column("sentences"))).as_py() or 0)
    return chars, sentences


def _reason_kinds(records: list[dict[str, Any]]) -> dict[str, int]:
    """Quarantine reasons grouped by their leading words (numbers and names stripped)."""
    kinds: Counter[str] = Counter()
    for rec in records:
        head = re.split(r"[:(']", rec["reason"], maxsplit=1)[0].strip()
        kinds[re.sub(r"\d+", "N", head)] += 1
    return dict(sorted(kinds.items()))


# --------------------------------------------------------------------------------------------
# Reading the corpus back
# --------------------------------------------------------------------------------------------


def corpus_shards(corpus_dir: Path | str) -> list[Path]:
    """The shard files of a finished ingest run, in order (from its manifest)."""
    corpus_dir = require_path(corpus_dir, "corpus")
    manifest = corpus_dir / "manifest.json"
    if not manifest.is_file():
        raise InputError(f"corpus incomplete: no manifest.json in {corpus_dir} (run ingest first)")
    shards = json.loads(manifest.read_text()).get("shards", [])
    paths = [corpus_dir / s["name"] for s in shards]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"corpus incomplete: shard not found: {missing[0]}")
    if not paths:
        raise InputError(f"corpus is empty: no shards in {corpus_dir}")
    return paths


def iter_corpus_batches(
    corpus_dir: Path | str, columns: list[str] | None = None, batch_size: int = 64
) -> Iterator[pa.RecordBatch]:
    """Stream the corpus as record batches of at most `batch_size` rows (bounded memory)."""
    for path in corpus_shards(corpus_dir):
        pf = pq.ParquetFile(path)
        yield from pf.iter_batches(batch_size=batch_size, columns=columns)


def read_corpus(corpus_dir: Path | str, columns: list[str] | None = None) -> Iterator[dict]:
    """Stream the corpus row by row as dicts (sentences as [{"start", "end"}, ...])."""
    for batch in iter_corpus_batches(corpus_dir, columns):
        yield from batch.to_pylist()
