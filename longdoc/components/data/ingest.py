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
  on from the first document not in them. The sentence spans of every split unit are kept in
  `.ingest-units/` until a closed shard holds its documents, so that rerun splits none of the
  documents a killed run had split (found by reader item, checked by doc_id).
- Per-document work (cleaning, hashing, MinHash, sentence splitting) runs in units, wherever the
  runner puts them (`prepare_unit`); the decision to write, quarantine or drop a document as a
  duplicate is taken in this process, in reader order, against every document before it, so the
  output is the same on any runner. On a parallel runner a document that turns out to be a
  duplicate of one in an earlier unit was split for nothing (the price of not waiting).
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
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from longdoc.components.core.config import IngestParams, params_dict
from longdoc.components.core.io import (
    InputError,
    NothingProduced,
    claim_output_dir,
    require_path,
    sha256_bytes,
    sha256_file,
    sha256_tree,
    versions,
)
from longdoc.components.core.stage import Progress, SideLog, Stage, fingerprint, reconcile
from longdoc.components.core.units import INLINE, FinishedUnits, UnitRunner, run_units
from longdoc.components.data.readers import (
    VERBATIM_END,
    VERBATIM_START,
    Document,
    ReadPosition,
    Rejected,
    input_bytes,
    iter_documents,
)

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
_UNITS_DIR = ".ingest-units"  # the spans of split units no closed shard holds yet
_QUARANTINE_PART = "quarantine.partial.jsonl"
_DUPLICATES_PART = "duplicates.partial.jsonl"
_SENT_BATCH_DOCS = 32  # documents per nlp.pipe call / per worker task
_SENT_BATCH_CHARS = 4_000_000
_ROW_GROUP_DOCS = 128
_ROW_GROUP_CHARS = 32_000_000
_MAX_STRINGS = 1_000_000  # spaCy StringStore size at which the pipeline is reloaded
_POOL_MIN_BYTES = 64 * 1024 * 1024  # below this, worker start-up costs more than it saves
_POOL_MIN_CPUS = 4  # on 2 shared cores a pool measured slower (benchmarks/RESULTS.md, ingest)
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


# A preformatted region the HTML reader marked (code, <pre>): kept as written. Marks that do not
# pair up carry no region and are dropped.
_VERBATIM = re.compile(f"{VERBATIM_START}([^{VERBATIM_START}{VERBATIM_END}]*){VERBATIM_END}")
_MARKS = re.compile(f"[{VERBATIM_START}{VERBATIM_END}]")


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
    Text between `VERBATIM_START`/`VERBATIM_END` (preformatted HTML, marked by the reader) gets
    only the "always" part in every mode: code keeps its line breaks and indentation. The marks
    are removed.
    """
    if whitespace not in WHITESPACE_MODES:
        raise ValueError(f"whitespace must be one of {WHITESPACE_MODES}, not {whitespace!r}")
    if VERBATIM_START not in text and VERBATIM_END not in text:
        return _prose_whitespace(_clean_chars(text), whitespace).strip()
    pieces = _VERBATIM.split(text)  # prose, verbatim, prose, ..., prose
    out = [_clean_chars(_MARKS.sub("", piece)) for piece in pieces]
    for k in range(0, len(out), 2):
        out[k] = _prose_whitespace(out[k], whitespace)
    out[0] = out[0].lstrip()  # a verbatim block that opens the document keeps its indentation
    joined = "".join(out).rstrip()
    return joined if joined.strip() else ""


def _clean_chars(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    text = _NEWLINES.sub("\n", text)
    return _CONTROLS.sub("", text)


def _prose_whitespace(text: str, whitespace: str) -> str:
    if whitespace == "paragraphs":
        text = _HSPACE.sub(" ", text)
        text = _NL_SPACE.sub("\n", text)
        return _MANY_NL.sub("\n\n", text)
    if whitespace == "single_space":
        return _ANY_SPACE.sub(" ", text)
    return text


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


def split_unit(model: str, max_chars: int, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One work unit, wherever it runs (this process, a pool process, a Dask worker): the
    sentence spans of `texts`, with the process's cached pipeline."""
    return _splitter(model, max_chars).split(texts)


# --------------------------------------------------------------------------------------------
# Near-duplicates
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
_MINHASH_SEED = 1  # fixed: the same corpus gives the same signatures in every process and run


@functools.lru_cache(maxsize=2)
def _empty_minhash(num_perm: int) -> Any:
    """The seeded MinHash whose permutations every signature shares (drawing them costs more
    than a short document's signature): one per process, a Dask worker's included."""
    from datasketch import MinHash  # imports scipy: only when near-duplicates are looked for

    return MinHash(num_perm=num_perm, seed=_MINHASH_SEED)


def minhash_signature(text: str, num_perm: int, shingle: int) -> Any:
    """MinHash (datasketch, fixed seed) of `text`'s lower-cased `shingle`-word shingles, or
    None when it has no words. A `LeanMinHash`: the hash values without the permutations, so a
    unit's signatures travel back from a worker at 4 bytes x `num_perm` each."""
    from datasketch import LeanMinHash

    words = _WORD.findall(text.lower())
    if not words:
        return None
    k = min(shingle, len(words))
    shingles = {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}
    sig = _empty_minhash(num_perm).copy()
    sig.update_batch([s.encode("utf-8") for s in shingles])
    return LeanMinHash(sig)


class NearDupIndex:
    """Near-duplicate lookup with datasketch's MinHash and MinHashLSH: finds a kept document
    whose estimated Jaccard similarity (of `shingle`-word shingles, lower-cased) with a new one
    is >= `threshold`.

    Why LSH and not pairwise comparison: constant work per document whatever the corpus size.
    MinHashLSH picks its bands x rows to minimise false positives plus false negatives around
    `threshold`; its candidates are then checked against the threshold on the signatures, and the
    most similar one (the earliest kept on a tie) is reported. The MinHash seed is fixed and its
    shingle hash is SHA-1, so the same corpus gives the same decisions in every process and run,
    which resume relies on. Memory: the signature (4 bytes x num_perm) and one LSH entry per band
    for each kept document.
    """

    def __init__(self, threshold: float, num_perm: int = 128, shingle: int = 5) -> None:
        from datasketch import MinHashLSH  # imports scipy: only when the index is on

        self.threshold, self.num_perm, self.shingle = threshold, num_perm, shingle
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.bands, self.rows = self._lsh.b, self._lsh.r
        dtype = _empty_minhash(num_perm).hashvalues.dtype
        self._sigs = np.zeros((1024, num_perm), dtype=dtype)
        self._ids: list[str] = []

    def signature(self, text: str) -> Any:
        """MinHash (datasketch) of `text`'s word shingles, or None when it has no words."""
        return minhash_signature(text, self.num_perm, self.shingle)

    def query(self, sig: Any) -> tuple[str, float] | None:
        """(doc_id, estimated similarity) of the most similar kept document at or above the
        threshold, or None."""
        best: tuple[str, float] | None = None
        for c in sorted(self._lsh.query(sig)):
            sim = float(np.mean(self._sigs[c] == sig.hashvalues))
            if sim >= self.threshold and (best is None or sim > best[1]):
                best = (self._ids[c], sim)
        return best

    def add(self, doc_id: str, sig: Any) -> None:
        slot = len(self._ids)
        if slot == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.zeros_like(self._sigs)])
        self._sigs[slot] = sig.hashvalues
        self._ids.append(doc_id)
        self._lsh.insert(slot, sig, check_duplication=False)


# --------------------------------------------------------------------------------------------
# A work unit: everything done per document, wherever the unit runs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocSettings:
    """What a unit needs of the stage's params (sent with every unit, so only these)."""

    whitespace: str
    decode_entities: bool
    min_chars: int
    max_doc_chars: int
    spacy_model: str
    near_dup: tuple[int, int] | None  # (num_perm, shingle) when near-duplicates are looked for

    @classmethod
    def of(cls, params: IngestParams) -> DocSettings:
        near = None
        if params.near_dup_threshold is not None:
            near = (params.near_dup_num_perm, params.near_dup_shingle)
        return cls(
            params.whitespace, params.decode_entities, params.min_chars, params.max_doc_chars,
            params.spacy_model, near,
        )  # fmt: skip


class Prepared(NamedTuple):
    """One document after its unit ran: what the stage's in-order admission needs of it."""

    text: str | None  # the normalised text; None when it equals the reader's (not sent back)
    n_chars: int
    rejected: str | None  # why it goes to quarantine (empty, too short, too long), else None
    doc_id: str  # sha256 of the normalised text ("" when rejected)
    signature: Any  # its MinHash (LeanMinHash) when near-duplicates are looked for, else None
    spans: tuple[np.ndarray, np.ndarray] | None  # None: not split (see `prepare_unit`)
    reused: bool = False  # not split because a killed run had (the stage holds the spans)


def _prepare_doc(settings: DocSettings, raw: str, decoded: bool) -> Prepared:
    """Clean, check the length bounds, hash and sign one document (no sentences yet)."""
    text = raw
    if settings.decode_entities and not decoded:
        text = decode_entities(text)
    text = normalize(text, settings.whitespace)
    why = _rejection(settings, text)
    if why is not None:  # (its length is all the stage needs of its text)
        return Prepared(None, len(text), why, "", None, None)
    sent = None if text == raw else text
    doc_id = sha256_bytes(text.encode("utf-8"))
    sig = None
    if settings.near_dup is not None:
        sig = minhash_signature(text, *settings.near_dup)
    return Prepared(sent, len(text), None, doc_id, sig, None)


def prepare_unit(
    settings: DocSettings, docs: list[tuple[str, bool]], skip: Any, reuse: dict[int, str]
) -> list[Prepared]:
    """One work unit, wherever it runs (this process, a pool process, a Dask worker): each of
    `docs` (the reader's text, whether its entities are decoded) cleaned, checked against the
    length bounds, hashed (its doc_id), MinHash-signed when near-duplicates are looked for, and
    split into sentences, with the process's cached pipeline.

    Whether a document is written is decided later, by the stage, in reader order; a document
    is not split when it cannot need spans: rejected, a repeat of one earlier in the unit, or
    in `skip` (the doc_ids the stage has admitted so far: only a sequential runner, whose units
    run one after another in the stage's process, passes it; None elsewhere), or when it is the
    document `reuse` names for its position (a killed run split it; the stage has the spans).
    """
    out = [_prepare_doc(settings, raw, decoded) for raw, decoded in docs]
    in_unit: set[str] = set()
    split: list[int] = []
    for k, doc in enumerate(out):
        if doc.rejected is not None or doc.doc_id in in_unit:
            continue
        in_unit.add(doc.doc_id)
        if reuse.get(k) == doc.doc_id:
            out[k] = doc._replace(reused=True)
        elif skip is None or doc.doc_id not in skip:
            split.append(k)
    texts = [out[k].text if out[k].text is not None else docs[k][0] for k in split]
    spans = _splitter(settings.spacy_model, settings.max_doc_chars).split(texts)
    for k, found in zip(split, spans, strict=True):
        out[k] = out[k]._replace(spans=found)
    return out


class _Admitted:
    """The doc_ids admitted so far, lent to a unit that runs in the stage's process (a plain
    object: Prefect walks a task's list, set and dict arguments, and this may hold millions)."""

    def __init__(self, seen: set[str]) -> None:
        self._seen = seen

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._seen


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


def _sentences(spans: list[tuple[np.ndarray, np.ndarray]]) -> pa.ListArray:
    lengths = np.fromiter((len(s) for s, _ in spans), dtype=np.int32, count=len(spans))
    offsets = np.zeros(len(spans) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    starts = np.concatenate([s for s, _ in spans]) if spans else np.zeros(0, np.int32)
    ends = np.concatenate([e for _, e in spans]) if spans else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(
        pa.array(offsets),
        pa.StructArray.from_arrays([pa.array(starts), pa.array(ends)], fields=list(SENTENCE_TYPE)),
    )


def _spans_table(
    first: int, unit: list[tuple[int, str, tuple[np.ndarray, np.ndarray]]]
) -> pa.Table:
    """A unit's sentence spans as `FinishedUnits` keeps them: by reader item (`first` + the
    item's position), with the doc_id they were split for."""
    return pa.table(
        {
            "item": pa.array([first + j for j, _, _ in unit], pa.int64()),
            "doc_id": [doc_id for _, doc_id, _ in unit],
            "sentences": _sentences([spans for _, _, spans in unit]),
        }
    )


def _reusable_spans(units: FinishedUnits, consumed: int) -> dict[int, tuple[str, tuple]]:
    """The spans a killed run split past the checkpoint (item `consumed`): by reader item,
    (doc_id, (starts, ends)). A rerun reads the same items in the same order (its fingerprint
    matched); the unit still checks the doc_id before it leaves a document unsplit."""
    found: dict[int, tuple[str, tuple]] = {}
    for table in units.load(consumed):
        if "item" not in table.column_names:  # an older layout: split those documents again
            continue
        sentences = table.column("sentences").combine_chunks()
        bounds = np.zeros(len(sentences) + 1, dtype=np.int64)
        np.cumsum(pc.list_value_length(sentences).to_numpy(zero_copy_only=False), out=bounds[1:])
        flat = pc.list_flatten(sentences)
        starts = flat.field("start").to_numpy(zero_copy_only=False)
        ends = flat.field("end").to_numpy(zero_copy_only=False)
        rows = zip(
            table.column("item").to_pylist(), table.column("doc_id").to_pylist(), strict=True
        )
        for k, (item, doc_id) in enumerate(rows):
            if item >= consumed:
                a, b = bounds[k], bounds[k + 1]
                found[item] = (doc_id, (starts[a:b].copy(), ends[a:b].copy()))
    return found


def _table(rows: list[_Row], spans: list[tuple[np.ndarray, np.ndarray]]) -> pa.Table:
    sentences = _sentences(spans)
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
    renamed when complete (`Stage.part`); `on_shard` is called after each rename (the resume
    checkpoint)."""

    def __init__(
        self,
        out: Path,
        max_docs: int,
        max_chars: int,
        first_index: int,
        on_shard: Any,
        stage: Stage,
    ) -> None:
        self.out = out
        self.stage = stage
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
            self._ctx = self.stage.part(self.out / self.name)
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


def _clean_outputs(out: Path) -> None:
    """Remove everything a previous run wrote (manifest first: the dir stops looking done)."""
    for name in ("manifest.json", "quarantine.jsonl", "duplicates.jsonl", STATE_FILE):
        (out / name).unlink(missing_ok=True)
    for pattern in ("part-*.parquet", ".part-*.tmp", ".*.tmp", "*.partial.jsonl"):
        for p in out.glob(pattern):
            p.unlink(missing_ok=True)
    FinishedUnits(out / _UNITS_DIR).clear()


def _shards_intact(out: Path, state: dict[str, Any]) -> bool:
    return all(
        (out / s["name"]).is_file() and sha256_file(out / s["name"]) == s["sha256"]
        for s in state.get("shards", [])
    )


def _resume(stage: Stage) -> tuple[list[dict[str, Any]], int]:
    """(shards kept, inputs consumed) of an interrupted run with the same fingerprint, after
    removing what it wrote past its checkpoint; ([], 0) after a clean start."""
    out = stage.out
    state = stage.load_state(lambda s: _shards_intact(out, s))
    if state is None:
        _clean_outputs(out)
        return [], 0
    (out / "manifest.json").unlink(missing_ok=True)
    for p in out.glob(".*.tmp"):
        p.unlink(missing_ok=True)
    done_shards, consumed = state["shards"], state["consumed"]
    for p in out.glob("part-*.parquet"):  # shards written after the checkpoint
        if p.name not in {s["name"] for s in done_shards}:
            p.unlink()
    log.info("ingest: resuming after %d inputs, %d shards kept", consumed, len(done_shards))
    return done_shards, consumed


def _rebuild_seen(out: Path, shards: list[dict[str, Any]], near: NearDupIndex | None) -> set[str]:
    """The doc ids (and near-duplicate index) of an uninterrupted run after `shards`."""
    seen: set[str] = set()
    cols = ["doc_id", "text"] if near is not None else ["doc_id"]
    for shard in shards:
        for batch in pq.ParquetFile(out / shard["name"]).iter_batches(columns=cols):
            ids = batch.column("doc_id").to_pylist()
            seen.update(ids)
            if near is not None:
                for doc_id, text in zip(ids, batch.column("text").to_pylist(), strict=True):
                    sig = near.signature(text)
                    if sig is not None:
                        near.add(doc_id, sig)
    return seen


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


@dataclass
class _Pass:
    """What one pass over the sources shares: the per-item function `_admit` reads and updates
    it; `index` counts reader items (including those an earlier run already did)."""

    params: IngestParams
    consumed: int
    quarantine: SideLog
    duplicates: SideLog
    seen: set[str]
    near: NearDupIndex | None
    progress: Progress
    index: int = 0
    chars_in: int = 0
    source_s: Counter[str] = field(default_factory=Counter)
    units: FinishedUnits | None = None  # split units no closed shard holds yet
    reusable: dict[int, tuple[str, tuple]] = field(default_factory=dict)  # a killed run's spans
    units_split: int = 0  # units this run sent to run
    docs_reused: int = 0  # documents whose spans a killed run had split


def _quarantine(p: _Pass, i: int, item: Document | Rejected, reason: str) -> None:
    p.quarantine.write(i, source=item.source, member=item.member, reason=reason)
    p.progress.add(quarantined=1)


def _duplicate(p: _Pass, i: int, item: Document, **fields: Any) -> None:
    p.duplicates.write(i, source=item.source, member=item.member, **fields)
    p.progress.add(duplicates=1)


def _rejection(params: IngestParams | DocSettings, text: str) -> str | None:
    if not text:
        return "empty or whitespace-only document"
    if len(text) < params.min_chars:
        return f"too short: {len(text)} chars < min_chars={params.min_chars}"
    if len(text) > params.max_doc_chars:
        return f"too long: {len(text)} chars > max_doc_chars={params.max_doc_chars}"
    return None


def _admit(p: _Pass, i: int, item: Document, doc: Prepared) -> _Row | None:
    """The in-order decision for reader item `i`, whose unit has run: the row to write, or
    None once it is recorded as quarantined or a duplicate. Exact whatever the runner: each
    document is checked against every document before it in reader order (and the MinHash
    index of those kept), here in the stage's process."""
    p.chars_in += doc.n_chars
    p.progress.add(0, chars=doc.n_chars)
    if doc.rejected is not None:
        _quarantine(p, i, item, doc.rejected)
        return None
    if doc.doc_id in p.seen:
        _duplicate(p, i, item, kind="exact", doc_id=doc.doc_id)
        return None
    if p.near is not None and doc.signature is not None:
        match = p.near.query(doc.signature)
        if match is not None:
            similarity = round(match[1], 4)
            _duplicate(
                p, i, item, kind="near", doc_id=doc.doc_id, of=match[0], similarity=similarity
            )
            return None
        p.near.add(doc.doc_id, doc.signature)
    p.seen.add(doc.doc_id)
    p.progress.add(written=1)
    meta = json.dumps(item.meta, ensure_ascii=False, sort_keys=True)
    text = item.text if doc.text is None else doc.text
    return _Row(i, doc.doc_id, item.source, item.member, text, meta)


@dataclass
class _DocUnit:
    """Reader items `first`, `first + 1`, ... as one work unit; `prepared` once it has run."""

    first: int
    items: list[Document | Rejected] = field(default_factory=list)
    docs: list[int] = field(default_factory=list)  # positions of the Documents in `items`
    reused: dict[int, tuple] = field(default_factory=dict)  # docs position -> killed run's spans
    prepared: list[Prepared] | None = None


def _doc_units(p: _Pass, sources: list[Path], out: Path, runner: UnitRunner) -> Iterator[_DocUnit]:
    """Every reader item after the checkpoint, in reader order, cut into units of
    `_SENT_BATCH_DOCS` documents or `_SENT_BATCH_CHARS` characters (4x as many on a runner with
    several units in flight: fewer task runs, the same output)."""
    scale = 1 if runner.in_flight <= 1 else 4
    unit, chars = _DocUnit(p.consumed), 0
    t_item = time.monotonic()
    p.progress.input = position = ReadPosition(input_bytes(sources, exclude=[out]))
    for item in _iter_all(sources, p.params, out, position):
        now = time.monotonic()  # reading this item (and waiting for room for its unit)
        p.source_s[item.source] += now - t_item
        t_item = now
        i = p.index
        p.index += 1
        if i < p.consumed:
            continue
        unit.items.append(item)
        if isinstance(item, Document):
            unit.docs.append(len(unit.items) - 1)
            chars += len(item.text)
        docs = scale * _SENT_BATCH_DOCS
        # (a cap on items too: an input of rejects alone still commits as it goes)
        if (
            len(unit.docs) >= docs
            or chars >= scale * _SENT_BATCH_CHARS
            or len(unit.items) >= 8 * docs
        ):
            yield unit
            unit, chars = _DocUnit(p.index), 0
    if unit.items:
        yield unit


def _read_split_write(
    p: _Pass, sources: list[Path], out: Path, writer: _ShardWriter, runner: UnitRunner
) -> None:
    """Read (in `run_units`' reader thread when units run in parallel), run each unit's
    per-document work on `runner` (`prepare_unit`), keep its sentence spans in `p.units` as
    soon as it finishes, and admit and write in reader order as units commit."""
    settings = DocSettings.of(p.params)
    sequential = runner.in_flight <= 1 and not runner.remote
    skip = _Admitted(p.seen) if sequential else None

    def work(unit: _DocUnit) -> tuple[Any, tuple] | None:
        if not unit.docs:
            return None
        for k, j in enumerate(unit.docs):
            if (hit := p.reusable.pop(unit.first + j, None)) is not None:
                unit.reused[k] = hit
        reuse = {k: doc_id for k, (doc_id, _) in unit.reused.items()}
        docs = [(unit.items[j].text, unit.items[j].entities_decoded) for j in unit.docs]
        p.units_split += 1
        return prepare_unit, (settings, docs, skip, reuse)

    def finished(unit: _DocUnit, prepared: list[Prepared]) -> None:
        unit.prepared = prepared
        docs = zip(unit.docs, prepared, strict=True)
        split = [(j, d.doc_id, d.spans) for j, d in docs if d.spans is not None]
        p.docs_reused += sum(d.reused for d in prepared)
        if split:
            p.units.save(
                unit.first + split[0][0], unit.first + split[-1][0], _spans_table(unit.first, split)
            )

    def commit(unit: _DocUnit) -> None:
        prepared = dict(zip(unit.docs, unit.prepared or [], strict=True))
        reused = {unit.docs[k]: spans for k, (_, spans) in unit.reused.items()}
        for j, item in enumerate(unit.items):
            i = unit.first + j
            if isinstance(item, Rejected):
                _quarantine(p, i, item, item.reason)
            elif (row := _admit(p, i, item, prepared[j])) is not None:
                spans = reused[j] if prepared[j].reused else prepared[j].spans
                if spans is None:  # `prepare_unit` skips only documents that cannot be admitted
                    raise RuntimeError(f"ingest: item {i} ({item.member}) admitted unsplit")
                writer.add(row, spans)
            p.progress.add(1)
            p.progress.maybe_log()

    run_units(runner, _doc_units(p, sources, out, runner), work, finished, commit)
    writer.finish(p.index - 1)


def _start_pass(stage: Stage, params: IngestParams) -> tuple[_Pass, list[dict[str, Any]]]:
    """Resume or start afresh: the pass state and the shards an earlier run finished."""
    done_shards, consumed = _resume(stage)
    quarantine = stage.side_log(_QUARANTINE_PART)
    duplicates = stage.side_log(_DUPLICATES_PART)
    n_quarantined, n_duplicates = quarantine.truncate(consumed), duplicates.truncate(consumed)
    near = None
    if params.near_dup_threshold is not None:
        near = NearDupIndex(
            params.near_dup_threshold, params.near_dup_num_perm, params.near_dup_shingle
        )
    seen = _rebuild_seen(stage.out, done_shards, near)
    progress = Progress("ingest", "inputs", every_s=_PROGRESS_EVERY_S, rated=("chars",))
    progress.skip(consumed)
    progress.add(0, written=len(seen), duplicates=n_duplicates, quarantined=n_quarantined)
    p = _Pass(params, consumed, quarantine.open(), duplicates.open(), seen, near, progress)
    p.units = FinishedUnits(stage.out / _UNITS_DIR)
    p.reusable = _reusable_spans(p.units, consumed)
    if not done_shards:  # the fingerprint on disk from the start: a kill keeps the units
        stage.checkpoint(stage.new_state(shards=[], consumed=0))
    return p, done_shards


def _run_pass(
    stage: Stage, p: _Pass, done_shards: list[dict], sources: list[Path], runner: UnitRunner
) -> list[dict[str, Any]]:
    """The read-split-write loop; returns every shard of the corpus (kept + new)."""
    params, out = p.params, stage.out

    def checkpoint(shards: list[dict[str, Any]], consumed_upto: int) -> None:
        stage.checkpoint(stage.new_state(shards=shards, consumed=consumed_upto))
        p.units.prune(consumed_upto)  # their documents are in closed shards now

    writer = _ShardWriter(
        out, params.shard_max_docs, params.shard_max_chars, len(done_shards), checkpoint, stage
    )
    writer.shards = list(done_shards)
    try:
        _read_split_write(p, sources, out, writer, runner)
    except BaseException:
        writer.abort()
        raise
    return writer.shards


@contextmanager
def _pool_runner(n_workers: int) -> Iterator[UnitRunner]:
    """`ingest.workers` spawned processes as a unit runner (the pre-Dask way to use more cores
    on one machine; a script calling ingest with workers needs the __main__ guard)."""
    with ProcessPoolExecutor(n_workers, mp_context=get_context("spawn")) as pool:
        yield UnitRunner(submit=pool.submit, in_flight=2 * n_workers, name="processes")


def ingest(
    params: IngestParams, *, workers: int | None = None, runner: UnitRunner = INLINE
) -> dict[str, Any]:
    """Run the ingest stage; returns the manifest (also written to `params.out/manifest.json`).

    Reading, admission (deduplication: exact and near) and writing happen in this process, in
    reader order; the per-document work of each batch of read documents (cleaning, hashing,
    MinHash, sentence splitting: `prepare_unit`) is one work unit on `runner` (the flows pass a
    Dask-backed one for `runner.kind: dask`). With a sequential runner (the
    default), `workers`: processes for sentence splitting (0 = on the runner, in this
    process). None picks 0 below 4 cores or
    64 MiB of source bytes (measured: on 2 shared cores a pool is slower), else cores - 1.
    Output is identical either way. Workers are spawned, so a script calling this with
    workers > 0 needs the `if __name__ == "__main__":` guard.
    Raises InputError for a missing source, when no document at all could be written, when
    another run is writing into `params.out`, or when the disk is full or read-only.
    """
    t_start = time.monotonic()
    sources = [require_path(s, "source") for s in params.sources]
    out = Path(params.out)
    # The cleanup deletes part-*.parquet & co. by name: only in a directory longdoc wrote.
    claim_output_dir(out, "ingest", force=params.force, legacy=(STATE_FILE,))
    with Stage("ingest", out, STATE_FILE) as stage:
        t0 = time.monotonic()
        inputs = [{"path": str(s), "sha256": _hash_source(s, out)} for s in sources]
        timings = {"hash_inputs_s": time.monotonic() - t0}
        stage.fingerprint = fingerprint(
            params=params_dict(params), inputs=inputs, code=versions("spacy", "pyarrow")
        )
        p, done_shards = _start_pass(stage, params)
        n_workers = 0  # a parallel runner (Dask) replaces the process pool
        if runner.in_flight <= 1:
            n_workers = _resolve_workers(params.workers if workers is None else workers, sources)
        t_loop = time.monotonic()
        with _pool_runner(n_workers) if n_workers else nullcontext(runner) as units:
            shards = _run_pass(stage, p, done_shards, sources, units)
        timings["read_split_write_s"] = time.monotonic() - t_loop
        counts, recs = _final_counts(stage, p, shards, sources)
        manifest = _manifest(params, inputs, counts, recs, shards, sources, stage.out)
        manifest["timings"] = _timings(p, timings, n_workers, sources, t_start)
        manifest["timings"]["units_ran_on"] = units.name  # local, processes or dask (...)
        result = stage.finish(manifest)
        p.units.clear()
    log.info(
        "ingest: %d inputs -> %d written, %d duplicates, %d quarantined in %.1fs (%s)",
        counts["inputs"],
        counts["written"],
        counts["duplicates"],
        counts["quarantined"],
        manifest["timings"]["total_s"],
        out,
    )
    return result


def _final_counts(
    stage: Stage, p: _Pass, shards: list[dict[str, Any]], sources: list[Path]
) -> tuple[dict[str, int], tuple[list[dict], list[dict]]]:
    """Publish the side logs; the reconciled counts and the (quarantine, duplicate) records."""
    p.progress.maybe_log(force=True)
    p.quarantine.close()
    p.duplicates.close()
    quarantine_recs = list(p.quarantine.records(p.index))
    duplicate_recs = list(p.duplicates.records(p.index))
    p.quarantine.finalize(stage.out / "quarantine.jsonl")
    p.duplicates.finalize(stage.out / "duplicates.jsonl")
    n_near = sum(1 for r in duplicate_recs if r.get("kind") == "near")
    counts = {
        "inputs": p.index,
        "written": sum(s["rows"] for s in shards),
        "duplicates": len(duplicate_recs) - n_near,
        "near_duplicates": n_near,
        "quarantined": len(quarantine_recs),
    }
    reconcile("ingest", counts, "inputs", "written", "duplicates", "near_duplicates", "quarantined")
    if counts["written"] == 0:
        stage.abandon()
        p.units.clear()
        raise NothingProduced(_nothing_found(sources, quarantine_recs, counts, stage.out))
    return counts, (quarantine_recs, duplicate_recs)


def _manifest(
    params: IngestParams,
    inputs: list[dict[str, str]],
    counts: dict[str, int],
    recs: tuple[list[dict], list[dict]],
    shards: list[dict[str, Any]],
    sources: list[Path],
    out: Path,
) -> dict[str, Any]:
    quarantine_recs, duplicate_recs = recs
    n_chars, n_sentences = _corpus_totals(out, shards)
    return {
        "stage": "ingest",
        "inputs": inputs,
        "params": params_dict(params),
        "counts": {**counts, "chars": n_chars, "sentences": n_sentences},
        "per_source": _per_source(out, shards, quarantine_recs, duplicate_recs, sources),
        "quarantine_reasons": _reason_kinds(quarantine_recs),
        "shards": shards,
        "schema": {f.name: str(f.type) for f in CORPUS_SCHEMA},
        "versions": versions("spacy", "pyarrow", "numpy", "charset-normalizer"),
    }


def _timings(
    p: _Pass, timings: dict[str, float], n_workers: int, sources: list[Path], t_start: float
) -> dict[str, Any]:
    loop_s = timings["read_split_write_s"]
    return {
        "total_s": round(time.monotonic() - t_start, 3),
        "hash_inputs_s": round(timings["hash_inputs_s"], 3),
        "read_split_write_s": round(loop_s, 3),
        "docs_per_s": round((p.index - p.consumed) / max(loop_s, 1e-9), 2),
        "mchars_per_s": round(p.chars_in / max(loop_s, 1e-9) / 1e6, 3),
        "workers": n_workers,
        "resumed_after_inputs": p.consumed,
        "split_units": p.units_split,  # units this run split
        "split_docs_reused": p.docs_reused,  # documents a killed run had split past its checkpoint
        # wall seconds reading and processing each source in this run (a resumed run counts
        # only its own pass); they add up to about read_split_write_s
        "per_source_s": {
            src: round(p.source_s[src], 3) for src in dict.fromkeys(str(x) for x in sources)
        },
    }


def _iter_all(
    sources: list[Path], params: IngestParams, out: Path, position: ReadPosition | None = None
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
            position=position,
        )


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
