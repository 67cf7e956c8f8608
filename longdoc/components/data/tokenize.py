"""Tokenize: the ingested corpus into token-id shards and packed MLM sequences.

Three streaming passes over the corpus, none of which holds the corpus in memory:

1. ids only: the train/validation split (the validation set is the `val_fraction` of documents
   with the smallest hash of their doc_id, so it is deterministic, independent of order and of
   the seed, and never empty when there are two or more documents);
2. per corpus shard, texts are encoded in batches by the Rust tokenizer (which uses every core)
   and written as Arrow IPC record batches to `docs/part-NNNNN.arrow`, one per corpus shard, with
   each sentence's first token index mapped from the corpus' char offsets;
3. per split, documents are wrapped `<s> ... </s>`, concatenated in an order shuffled by `seed`,
   and cut into `seq_len` rows of `packed/<split>.arrow`; the last partial row is dropped and
   counted. Documents are read back zero-copy from the memory-mapped docs shards.

Token accounting (checked before the manifest is written), per split s:
    tokens[s] + 2 * documents[s] == seq_len * sequences[s] + dropped_tail_tokens[s]
where tokens[s] is the sum of `n_tokens` (no special tokens) and the 2 per document are the
`<s>`/`</s>` wrappers added when packing.

Completed docs shards are checkpointed (`.tokenize-state.json`): a rerun after a crash with the
same corpus and params reuses the saved tokenizer and the finished shards.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from longdoc.components.core.config import TokenizeParams, params_dict
from longdoc.components.core.io import (
    InputError,
    atomic_path,
    claim_output_dir,
    require_path,
    sha256_bytes,
    sha256_file,
    sha256_tree,
    versions,
)
from longdoc.components.core.stage import Progress, Stage, fingerprint
from longdoc.components.core.units import INLINE, UnitRunner, run_units
from longdoc.components.data.ingest import corpus_shards

__all__ = [
    "MODEL_MAX_LENGTH",
    "SPECIAL_TOKENS",
    "assign_splits",
    "docs_schema",
    "id_type",
    "iter_packed",
    "load_tokenizer",
    "packed_schema",
    "tokenize",
    "train_tokenizer",
]

log = logging.getLogger(__name__)

#: RoBERTa's special tokens, in id order: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
MODEL_MAX_LENGTH = 4096  # what the long model is built for (max_position_embeddings 4098 - 2)
LENGTH_THRESHOLDS = (512, 4096, 16384)
STATE_FILE = ".tokenize-state.json"
SPLITS = ("train", "validation")
_ENCODE_DOCS = 1024  # documents per encode batch, at most ...
# ... and this much UTF-8 text (one document may be longer): a byte-level tokenizer makes at most
# one token per byte and the Rust encodings cost ~100 bytes per token, so this bounds them
_ENCODE_BYTES = 1_000_000
_PIECE_CHARS = 250_000  # longer documents are encoded in pieces (byte-level tokenizers)
_READ_DOCS = 64  # corpus rows per Parquet read (fewer in a shard with long documents)
_PACK_ROWS = 1024  # packed rows per record batch
_MAX_OPEN_SHARDS = 64  # docs shard files _DocStore keeps open at once
_PROGRESS_EVERY_S = 5.0


# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------


def id_type(vocab_size: int) -> pa.DataType:
    """uint16 when every id fits (vocab <= 65,536), else int32: halves shard size and I/O."""
    return pa.uint16() if vocab_size <= 1 << 16 else pa.int32()


def docs_schema(vocab_size: int) -> pa.Schema:
    return pa.schema(
        [
            ("doc_id", pa.string()),
            ("split", pa.string()),
            ("input_ids", pa.list_(id_type(vocab_size))),
            ("n_tokens", pa.int32()),
            ("n_chars", pa.int64()),
            ("sentence_token_starts", pa.list_(pa.int32())),
        ]
    )


def packed_schema(vocab_size: int, seq_len: int, *, sentences: bool = False) -> pa.Schema:
    """With `sentences` (as tokenize writes them) a `sentence_starts` column: where the row's
    sentences start (ascending, 0 first: a row cut mid-sentence starts with that sentence's
    tail; every document's `<s>` starts a sentence, its `</s>` ends its last one), for
    denoising's sentence permutation; MLM reads `input_ids` only."""
    fields = [("input_ids", pa.list_(id_type(vocab_size), seq_len))]
    if sentences:
        fields.append(("sentence_starts", pa.list_(pa.int32())))
    return pa.schema(fields, metadata={"seq_len": str(seq_len)})


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _split_key(doc_id: str) -> int:
    return int(sha256_bytes(f"split:{doc_id}".encode())[:16], 16)


def assign_splits(doc_ids: list[str], val_fraction: float) -> set[str]:
    """The validation doc_ids: the round(val_fraction * n) with the smallest split hash.

    At least one when val_fraction > 0 and n >= 2, and never all of them, so both splits exist
    on tiny corpora. Depends only on the ids: same corpus, same split, whatever the seed.
    """
    n = len(doc_ids)
    if val_fraction <= 0 or n < 2:
        return set()
    k = min(max(1, round(val_fraction * n)), n - 1)
    return set(sorted(doc_ids, key=_split_key)[:k])


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def read_batches(shard: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The corpus shard's rows in record batches of `_READ_DOCS` rows, fewer when its longest
    document (from the Parquet statistics of `n_chars`: nothing is read to find it) is long, so
    one read holds about `_ENCODE_BYTES` of text, one document at least."""
    pf = pq.ParquetFile(shard)
    col = pf.schema_arrow.get_field_index("n_chars")
    longest = 0
    for g in range(pf.metadata.num_row_groups):
        stats = pf.metadata.row_group(g).column(col).statistics
        if stats is None or not stats.has_min_max:  # not written by ingest: read the column
            longest = int(pc.max(pf.read(columns=["n_chars"]).column(0)).as_py() or 0)
            break
        longest = max(longest, int(stats.max))
    rows = max(1, min(_READ_DOCS, _ENCODE_BYTES // max(longest, 1)))
    yield from pf.iter_batches(batch_size=rows, columns=columns)


def _sample_key(doc_id: str) -> float:
    """A uniform number in [0, 1) per document, independent of the split key."""
    return int(sha256_bytes(f"train-sample:{doc_id}".encode())[:16], 16) / float(1 << 64)


class TrainSample:
    """The texts the tokenizer is trained on: the training split, or when it holds more than
    `sample_mb` million characters, a deterministic sample of about that size.

    Why a sample: the trainer's memory grows with the text it sees (every distinct pre-token is
    counted), and a tokenizer learnt from 100 MB of text is about as good as one learnt from
    the whole of a multi-GB corpus (SentencePiece samples the same way: `input_sentence_size`).
    A document is drawn when a hash of its doc_id falls below sample / training chars, so the
    sample spreads evenly over the corpus parts and does not depend on their layout or order;
    drawing stops once `sample_mb` is reached. `stats` (for the manifest) is filled while
    iterating.
    """

    def __init__(self, corpus: Path, val_ids: set[str], sample_mb: float | None) -> None:
        self.corpus, self.val_ids = corpus, val_ids
        self.cap = None if sample_mb is None else int(sample_mb * 1e6)
        total = docs = 0
        for path in corpus_shards(corpus):
            table = pq.read_table(path, columns=["doc_id", "n_chars"])
            ids = table.column("doc_id").to_pylist()
            chars = table.column("n_chars").to_numpy()
            keep = np.fromiter((i not in val_ids for i in ids), dtype=bool, count=len(ids))
            total, docs = total + int(chars[keep].sum()), docs + int(keep.sum())
        self.fraction = 1.0 if self.cap is None or total <= self.cap else self.cap / total
        self.stats = {"train_sample_mb": sample_mb, "split_documents": docs, "split_chars": total}

    def __iter__(self) -> Iterator[list[str]]:
        docs = chars = 0
        for path in corpus_shards(self.corpus):
            for batch in read_batches(path, ["doc_id", "text"]):
                ids = batch.column("doc_id").to_pylist()
                texts = [
                    t
                    for i, t in zip(ids, batch.column("text").to_pylist(), strict=True)
                    if i not in self.val_ids
                    and (self.fraction >= 1.0 or _sample_key(i) < self.fraction)
                ]
                docs, chars = docs + len(texts), chars + sum(map(len, texts))
                self.stats.update(documents=docs, chars=chars)
                yield texts
                if self.cap is not None and self.fraction < 1.0 and chars >= self.cap:
                    return


def _model_and_trainer(model: str, vocab_size: int, min_frequency: int) -> tuple[Any, Any]:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer, UnigramTrainer

    common = {
        "vocab_size": vocab_size,
        "special_tokens": SPECIAL_TOKENS,
        "initial_alphabet": pre_tokenizers.ByteLevel.alphabet(),
        "show_progress": False,
    }
    if model == "bpe":
        return Tokenizer(models.BPE()), BpeTrainer(min_frequency=min_frequency, **common)
    if model == "unigram":
        return Tokenizer(models.Unigram()), UnigramTrainer(unk_token="<unk>", **common)
    raise ValueError(f"tokenizer model must be 'bpe' or 'unigram', not {model!r}")


def train_tokenizer(
    texts: Iterable[list[str]] | Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    length: int | None = None,
    model: str = "bpe",
):
    """A byte-level BPE (or unigram) with RoBERTa's special tokens and post-processor, as a fast
    HF tokenizer.

    Byte-level means no <unk> in practice: every byte has a token, so any text round-trips.
    `model="unigram"` trains a unigram LM (SentencePiece's algorithm) over the same byte-level
    pre-tokenization, so ids, offsets, special tokens and packing work identically; unigram
    ignores `min_frequency` and may stop below `vocab_size` on a small corpus.
    """
    from tokenizers import AddedToken, decoders, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok, trainer = _model_and_trainer(model, vocab_size, min_frequency)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer, length=length)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    # As in RoBERTa, "<mask>" absorbs the space before it ("a <mask>" masks the word " b").
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False)])
    tok.post_processor = processors.RobertaProcessing(
        sep=("</s>", 2), cls_token=("<s>", 0), trim_offsets=True, add_prefix_space=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, special=True),
        model_max_length=MODEL_MAX_LENGTH,
    )


def _save_tokenizer(hf_tok, dest: Path) -> None:
    """save_pretrained into a temp dir beside `dest`, then swap it in (a dir cannot be renamed
    over atomically, but a reader never sees a half-written tokenizer under `dest`).

    `tokenizer_class` is written as the generic PreTrainedTokenizerFast (tokenizer.json is loaded
    as-is, by transformers 4 and 5 alike) and special_tokens_map.json is added for tools that
    still look for it.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=dest.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the tokenizer is an ordinary output
        hf_tok.save_pretrained(str(tmp))
        cfg_path = tmp / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg["model_max_length"] = int(min(hf_tok.model_max_length, 10**9))
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        special = {
            k: str(getattr(hf_tok, k))
            for k in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token")
            if getattr(hf_tok, k, None) is not None
        }
        if hf_tok.mask_token is not None:
            special["mask_token"] = {
                "content": str(hf_tok.mask_token),
                "lstrip": True,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
            }
        (tmp / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
        old = dest.parent / f".tokenizer.old.{os.getpid()}"
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_hf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many types; the user needs one line
        msg = " ".join(str(exc).split())[:300]
        raise InputError(f"cannot load tokenizer from {path}: {msg}") from None
    if not getattr(tok, "is_fast", False):
        raise InputError(f"tokenizer in {path} is not a fast tokenizer (need offset mappings)")
    return tok


def load_tokenizer(shards_dir: Path | str):
    """The tokenizer the shards were made with (`shards_dir/tokenizer`, HF format)."""
    path = require_path(Path(shards_dir) / "tokenizer", "tokenizer")
    return _load_hf_tokenizer(path)


def _wrapper_ids(hf_tok) -> tuple[int, int]:
    bos = hf_tok.bos_token_id if hf_tok.bos_token_id is not None else hf_tok.cls_token_id
    eos = hf_tok.eos_token_id if hf_tok.eos_token_id is not None else hf_tok.sep_token_id
    if bos is None or eos is None:
        raise InputError("tokenizer has no bos/cls and eos/sep tokens to separate documents")
    return int(bos), int(eos)


# --------------------------------------------------------------------------------------------
# Pass 2: documents
# --------------------------------------------------------------------------------------------


def _list_array(parts: list[np.ndarray], value_type: pa.DataType) -> pa.ListArray:
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(parts) if parts else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))


def _sentence_token_starts(enc: Any, starts: np.ndarray) -> np.ndarray:
    """Index of the token holding each sentence's first character.

    `char_to_token` per sentence is ~25x fewer Python calls than materialising every token's
    offsets; the offsets path is the fallback for a char no token covers (e.g. a tokenizer that
    drops characters), where the first token ending after the char is taken.
    """
    n = len(enc.ids)
    if n == 0:
        return np.zeros(len(starts), dtype=np.int32)
    out = np.empty(len(starts), dtype=np.int32)
    for k, c in enumerate(starts.tolist()):
        t = enc.char_to_token(c)
        if t is None:
            ends = np.maximum.accumulate(np.asarray(enc.offsets, dtype=np.int64)[:, 1])
            return np.minimum(np.searchsorted(ends, starts, side="right"), n - 1).astype(np.int32)
        out[k] = t
    return out


def encode_batches(shard: Path) -> Iterator[pa.RecordBatch]:
    """The corpus shard as record batches of up to `_ENCODE_DOCS` documents and `_ENCODE_BYTES`
    of text (a longer document alone), cut at document boundaries whatever the read size.
    Large batches matter: document lengths are long-tailed, and in a batch of 64 one long
    document keeps one core busy while the others wait; bounded ones keep memory bounded."""
    columns = ["doc_id", "text", "n_chars", "sentences"]
    group: list[pa.RecordBatch] = []
    docs = size = 0
    for batch in read_batches(shard, columns):
        sizes = pc.binary_length(batch.column("text")).to_numpy(zero_copy_only=False)
        start = 0
        for j, n in enumerate(sizes.tolist()):
            if docs and (docs >= _ENCODE_DOCS or size + n > _ENCODE_BYTES):
                group.append(batch.slice(start, j - start))
                yield pa.concat_batches([g for g in group if g.num_rows])
                group, docs, size, start = [], 0, 0, j
            docs, size = docs + 1, size + n
        group.append(batch.slice(start))
    if docs:
        yield pa.concat_batches([g for g in group if g.num_rows])


_CUT = re.compile(r"(?<=\S)[ \n](?=\S)")


def _is_cut(text: str, i: int) -> bool:
    return text[i] in " \n" and not text[i - 1].isspace() and not text[i + 1].isspace()


def word_start_pieces(text: str, limit: int) -> list[str]:
    """`text` in pieces of at most about `limit` chars, cut only before a lone space or line
    break between two non-space characters. GPT-2's pre-tokenizer rule (byte-level BPE and
    unigram here) starts a pre-token there in the whole text as in the piece, and no token spans
    pre-tokens, so the pieces' ids concatenate to the whole text's ids (tested). A text with no
    such place (no whitespace at all) stays whole."""
    pieces: list[str] = []
    start = 0
    while len(text) - start > limit:
        cut = text.rfind(" ", start + limit // 2, start + limit)
        while cut > start and not _is_cut(text, cut):
            cut = text.rfind(" ", start + limit // 2, cut)
        if cut <= start:  # no space in the second half of the window: the next cut after it
            found = _CUT.search(text, start + limit)
            if found is None:
                break
            cut = found.start()
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def byte_level_lengths(backend) -> np.ndarray | None:
    """Bytes of text covered by each token id, when the tokenizer is purely byte-level (no
    normalizer, ByteLevel pre-tokenizer, BPE/unigram over the byte alphabet), else None.

    Why: with it, token boundaries are a cumulative sum, so the encode pass can use
    `encode_batch_fast` (no offsets; faster than `encode_batch`: benchmarks/RESULTS.md, "Ingest
    and tokenize throughput") and still
    map sentence starts to tokens. Every document is checked (its token bytes must add up to its
    UTF-8 length, which fails e.g. when `<mask>` absorbed a space); one that fails is re-encoded
    with offsets.
    """
    from tokenizers import pre_tokenizers

    cfg = json.loads(backend.to_str())
    pre = cfg.get("pre_tokenizer") or {}
    model = cfg.get("model") or {}
    if cfg.get("normalizer") is not None or pre.get("type") != "ByteLevel":
        return None
    if model.get("type") not in ("BPE", "Unigram"):
        return None
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    added = {t["content"] for t in cfg.get("added_tokens", [])}
    vocab = backend.get_vocab(with_added_tokens=True)
    lens = np.zeros(max(vocab.values()) + 1, dtype=np.int64)
    for token, i in vocab.items():
        if token in added:
            lens[i] = len(token.encode("utf-8"))
        elif all(ch in alphabet for ch in token):
            lens[i] = len(token)
        else:
            return None
    return lens


def _starts_from_bytes(
    text: str, ids: np.ndarray, byte_lens: np.ndarray, starts: np.ndarray
) -> np.ndarray | None:
    """Sentence token starts from token byte lengths (see `byte_level_lengths`), or None when
    the tokens do not tile the text's bytes exactly."""
    raw = text.encode("utf-8")
    if len(ids) == 0:
        return np.zeros(len(starts), dtype=np.int32) if not raw else None
    ends = np.cumsum(byte_lens[ids])
    if ends[-1] != len(raw):
        return None
    if len(raw) != len(text):  # non-ASCII: char index -> byte index of the char's lead byte
        b = np.frombuffer(raw, dtype=np.uint8)
        starts = np.flatnonzero((b & 0xC0) != 0x80)[starts]
    tok = np.searchsorted(ends, starts, side="right")
    return np.minimum(tok, len(ids) - 1).astype(np.int32)


class _Encoder:
    """The per-part step of pass 2: one corpus shard into one docs shard.

    Both cores: the Rust tokenizer encodes a batch on all cores with the GIL released, in a
    helper thread, while this thread turns the previous batch into Arrow and writes it (the
    Python side is the smaller part of the work; overlapping hides most of it). One batch ahead
    bounds memory to two batches (see `encode_batches`).
    """

    def __init__(
        self,
        backend,
        schema: pa.Schema,
        val_ids: set[str],
        progress: Progress,
        byte_lens: np.ndarray | None = None,
    ) -> None:
        self.backend, self.schema, self.val_ids = backend, schema, val_ids
        self.progress, self.byte_lens = progress, byte_lens
        self.value_type = schema.field("input_ids").type.value_type
        self.np_dtype = np.uint16 if self.value_type == pa.uint16() else np.int32
        self.fast = byte_lens is not None and hasattr(backend, "encode_batch_fast")

    def encode(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, list[str], list[Any]]:
        """(batch, texts, per text: its ids array (fast path) or its Encoding)."""
        texts = batch.column("text").to_pylist()
        if self.fast:
            return batch, texts, self.encode_ids(texts)
        return batch, texts, self.backend.encode_batch(texts, add_special_tokens=False)

    def encode_ids(self, texts: list[str]) -> list[np.ndarray]:
        """Ids per text: long texts in pieces (`word_start_pieces`), at most `_ENCODE_BYTES` of
        chars per call, each call's encodings turned into arrays and freed before the next, so a
        document of any length costs its ids (2-4 bytes a token) plus one call's encodings."""
        owner, pieces = [], []
        for j, text in enumerate(texts):
            for piece in word_start_pieces(text, _PIECE_CHARS):
                owner.append(j)
                pieces.append(piece)
        parts: list[list[np.ndarray]] = [[] for _ in texts]
        lo = 0
        while lo < len(pieces):
            hi, size = lo + 1, len(pieces[lo])
            while hi < len(pieces) and size + len(pieces[hi]) <= _ENCODE_BYTES:
                size, hi = size + len(pieces[hi]), hi + 1
            encodings = self.backend.encode_batch_fast(pieces[lo:hi], add_special_tokens=False)
            for j, enc in zip(owner[lo:hi], encodings, strict=True):
                parts[j].append(np.asarray(enc.ids, dtype=self.np_dtype))
            lo = hi
        return [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]

    def write_part(self, shard: Path, tmp: Path, val_ids: set[str] | None = None) -> None:
        """Encode `shard` into the Arrow IPC file `tmp` (renamed into place by the caller);
        `val_ids`: the validation doc_ids (default: those the encoder was made with)."""
        val_ids = self.val_ids if val_ids is None else val_ids
        batches = encode_batches(shard)
        with (
            ipc.new_file(str(tmp), self.schema) as writer,
            ThreadPoolExecutor(1, thread_name_prefix="encode") as pool,
        ):
            first = next(batches, None)
            ahead = pool.submit(self.encode, first) if first is not None else None
            while ahead is not None:
                batch, texts, encodings = ahead.result()
                nxt = next(batches, None)
                ahead = pool.submit(self.encode, nxt) if nxt is not None else None
                record = self.record(batch, texts, encodings, val_ids)
                writer.write_batch(record)
                n_tokens = record.column("n_tokens").to_numpy()
                self.progress.add(record.num_rows, tokens=int(n_tokens.sum()))
                _maybe_log(self.progress)

    def token_starts(self, text: str, ids: np.ndarray, enc: Any, starts: np.ndarray):
        tok_starts = None
        if self.fast:  # `enc` is None: the ids came from `encode_ids`
            tok_starts = _starts_from_bytes(text, ids, self.byte_lens, starts)
            if tok_starts is None:  # rare: re-encode this one with offsets
                enc = self.backend.encode(text, add_special_tokens=False)
        if tok_starts is None:
            tok_starts = _sentence_token_starts(enc, starts)
        return tok_starts

    def record(
        self, batch: pa.RecordBatch, texts: list[str], encodings: list[Any], val_ids: set[str]
    ):
        doc_ids = batch.column("doc_id").to_pylist()
        sents = batch.column("sentences")
        sent_offsets = sents.offsets.to_numpy()
        sent_starts = sents.values.field("start").to_numpy(zero_copy_only=False)
        ids_list, starts_list = [], []
        for j, item in enumerate(encodings):
            enc = None if self.fast else item
            ids = item if self.fast else np.asarray(item.ids, dtype=self.np_dtype)
            ids_list.append(ids)
            starts = sent_starts[sent_offsets[j] : sent_offsets[j + 1]]
            starts_list.append(self.token_starts(texts[j], ids, enc, starts))
        n_tokens = np.fromiter((len(a) for a in ids_list), dtype=np.int32, count=len(doc_ids))
        return pa.RecordBatch.from_arrays(
            [
                pa.array(doc_ids, pa.string()),
                pa.array(["validation" if i in val_ids else "train" for i in doc_ids]),
                _list_array(ids_list, self.value_type),
                pa.array(n_tokens, pa.int32()),
                batch.column("n_chars"),
                _list_array(starts_list, pa.int32()),
            ],
            schema=self.schema,
        )


def _maybe_log(progress: Progress, force: bool = False) -> None:
    progress.maybe_log(force)


def _encode_part(
    backend,
    shard: Path,
    dest: Path,
    schema: pa.Schema,
    val_ids: set[str],
    progress: Progress,
    byte_lens: np.ndarray | None = None,
) -> None:
    """Encode one corpus shard into one docs shard, written atomically (see `_Encoder`)."""
    with atomic_path(dest) as tmp:
        _Encoder(backend, schema, val_ids, progress, byte_lens).write_part(shard, tmp)


# --------------------------------------------------------------------------------------------
# Pass 3: packing
# --------------------------------------------------------------------------------------------


class _DocStore:
    """Random access to per-document ids and sentence starts of the docs shards, by positioned
    reads (`os.pread`).

    Why not memory maps: packing visits documents in shuffled order, so over a split it touches
    every page of the docs shards, and touched pages of a file mapping count as the process's
    resident memory. Dropping them every 128 MiB read with madvise did not bound it (the kernel
    maps pages around each fault, so they come back; figures in benchmarks/RESULTS.md, History,
    "Multi-GB memory check"). A pread goes through the page cache,
    which is not the process's memory, so RSS stays at the packer's own buffers whatever the
    corpus size. The files are mapped only while their layout is read: per record batch and
    list column read, the file position of its values and a copy of its offsets are kept.
    """

    COLUMNS = ("input_ids", "sentence_token_starts")

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        # per column, per slot (record batch): (path index, byte position of values, offsets)
        self._layout: dict[str, list[tuple[int, int, np.ndarray]]] = {c: [] for c in self.COLUMNS}
        self._dtypes: dict[str, np.dtype] = {}
        self.index: dict[str, list[tuple[str, int, int]]] = {s: [] for s in SPLITS}
        self._fds: dict[int, int] = {}
        for k, path in enumerate(self.paths):
            self._read_layout(k, path)

    def _read_layout(self, k: int, path: Path) -> None:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        whole = pa.py_buffer(mm)
        reader = ipc.open_file(pa.BufferReader(whole))
        for b in range(reader.num_record_batches):
            batch = reader.get_batch(b)
            slot = len(self._layout["input_ids"])
            for name in self.COLUMNS:
                col = batch.column(name)
                values = col.values
                dtype = self._dtypes.setdefault(name, np.dtype(values.type.to_pandas_dtype()))
                data = values.buffers()[1]
                pos = data.address - whole.address + values.offset * dtype.itemsize
                offsets = np.array(col.offsets.to_numpy(), dtype=np.int64)  # a copy
                self._layout[name].append((k, pos, offsets))
            for row, (doc_id, split) in enumerate(
                zip(
                    batch.column("doc_id").to_pylist(),
                    batch.column("split").to_pylist(),
                    strict=True,
                )
            ):
                self.index[split].append((doc_id, slot, row))
        del reader, batch, col, values, data, whole  # no view left: the map can go
        mm.close()

    def _fd(self, k: int) -> int:
        fd = self._fds.get(k)
        if fd is None:
            if len(self._fds) >= _MAX_OPEN_SHARDS:  # stay well under the fd limit
                os.close(self._fds.pop(next(iter(self._fds))))
            fd = self._fds[k] = os.open(self.paths[k], os.O_RDONLY)
        return fd

    def _read(self, name: str, slot: int, row: int) -> np.ndarray:
        k, pos, off = self._layout[name][slot]
        dtype = self._dtypes[name]
        start, n = int(off[row]), int(off[row + 1] - off[row])
        data = os.pread(self._fd(k), n * dtype.itemsize, pos + start * dtype.itemsize)
        if len(data) != n * dtype.itemsize:
            raise RuntimeError(f"docs shard {self.paths[k]} is shorter than its index says")
        return np.frombuffer(data, dtype=dtype)

    def ids(self, slot: int, row: int) -> np.ndarray:
        return self._read("input_ids", slot, row)

    def sentence_starts(self, slot: int, row: int) -> np.ndarray:
        return self._read("sentence_token_starts", slot, row)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class _Packer:
    """Pass 3 for one split: documents joined as `<s> ids </s>` and cut into `seq_len` rows,
    written to an open IPC `writer` in record batches of `_PACK_ROWS` rows, with each row's
    sentence starts (see `packed_schema`; a document's `<s>` starts its first sentence)."""

    def __init__(self, writer, schema: pa.Schema, seq_len: int, bos: int, eos: int) -> None:
        self.writer, self.schema, self.seq_len = writer, schema, seq_len
        self.value_type = schema.field("input_ids").type.value_type
        np_dtype = np.uint16 if self.value_type == pa.uint16() else np.int32
        self.bos = np.asarray([bos], dtype=np_dtype)
        self.eos = np.asarray([eos], dtype=np_dtype)
        self.carry = np.zeros(0, dtype=np_dtype)  # the tail not yet a full row
        self.carry_starts = np.zeros(0, dtype=np.int64)  # sentence starts within the carry
        self.pending: list[np.ndarray] = []
        self.pending_starts: list[np.ndarray] = []
        self.pending_rows = self.sequences = 0

    def add(self, ids: np.ndarray, sentence_starts: np.ndarray) -> None:
        at = len(self.carry)  # where this document's <s> lands
        joined = np.concatenate([self.carry, self.bos, ids, self.eos])
        inner = np.unique(sentence_starts[sentence_starts > 0]).astype(np.int64) + at + 1
        starts = np.concatenate([self.carry_starts, [at], inner])
        n_full = len(joined) // self.seq_len
        row_ends = np.searchsorted(starts, np.arange(1, n_full + 1) * self.seq_len)
        lo = 0
        for r, hi in enumerate(row_ends.tolist()):
            row = starts[lo:hi] - r * self.seq_len
            if not len(row) or row[0] != 0:  # the row opens mid-sentence
                row = np.concatenate([[0], row])
            self.pending_starts.append(row.astype(np.int32))
            lo = hi
        if n_full:
            self.pending.append(joined[: n_full * self.seq_len].reshape(n_full, self.seq_len))
            self.pending_rows += n_full
            self.sequences += n_full
        self.carry = joined[n_full * self.seq_len :]
        self.carry_starts = starts[lo:] - n_full * self.seq_len
        if self.pending_rows >= _PACK_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.pending_rows:
            flat = np.concatenate(self.pending).reshape(-1)
            ids = pa.FixedSizeListArray.from_arrays(pa.array(flat, self.value_type), self.seq_len)
            starts = _list_array(self.pending_starts, pa.int32())
            self.writer.write_batch(pa.RecordBatch.from_arrays([ids, starts], schema=self.schema))
        self.pending, self.pending_starts, self.pending_rows = [], [], 0


def _pack_split(
    store: _DocStore,
    split: str,
    dest: Path,
    schema: pa.Schema,
    seq_len: int,
    seed: int,
    bos: int,
    eos: int,
) -> dict[str, int]:
    """Write `dest` with fixed-length rows; returns {documents, sequences, dropped_tail_tokens}."""
    docs = sorted(store.index[split])  # by doc_id: independent of the corpus' shard layout
    order = np.random.default_rng(seed).permutation(len(docs))
    with atomic_path(dest) as tmp, ipc.new_file(str(tmp), schema) as writer:
        packer = _Packer(writer, schema, seq_len, bos, eos)
        for k in order:
            _, slot, row = docs[k]
            packer.add(store.ids(slot, row), store.sentence_starts(slot, row))
        packer.flush()
    return {
        "documents": len(docs),
        "sequences": packer.sequences,
        "dropped_tail_tokens": len(packer.carry),
    }


def iter_packed(
    shards_dir: Path | str, split: str, batch_size: int, *, drop_last: bool = False
) -> Iterator[np.ndarray]:
    """Packed MLM rows of `split` as arrays of shape (batch, seq_len), in file order.

    Streams record batches from the memory-mapped IPC file (never the whole file in memory).
    The dtype is the file's (uint16 or int32); convert with `.astype(np.int64)` for torch. The
    last batch may be smaller unless `drop_last`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    path = require_path(Path(shards_dir) / "packed" / f"{split}.arrow", "packed shard")
    reader = ipc.open_file(pa.memory_map(str(path), "r"))
    seq_len = reader.schema.field("input_ids").type.list_size
    buf: list[np.ndarray] = []
    have = 0
    for b in range(reader.num_record_batches):
        arr = reader.get_batch(b).column("input_ids")
        rows = arr.values.to_numpy(zero_copy_only=False).reshape(-1, seq_len)
        start = 0
        while start < len(rows):
            take = min(batch_size - have, len(rows) - start)
            buf.append(rows[start : start + take])
            have += take
            start += take
            if have == batch_size:
                yield np.concatenate(buf) if len(buf) > 1 else buf[0].copy()
                buf, have = [], 0
    if have and not drop_last:
        yield np.concatenate(buf)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def _length_stats(n_tokens: np.ndarray) -> dict[str, Any]:
    """Document lengths in tokens: summary, counts over the model-relevant lengths (512 = a
    short model's window, 4,096 = ours, 16,384 = the long end), and power-of-two bucket counts
    (`bucket_edges[i] <= n < bucket_edges[i + 1]`), the histogram in numbers."""
    if len(n_tokens) == 0:
        return {"documents": 0}
    top = max(int(n_tokens.max()), 1)
    edges = [0] + [1 << k for k in range(int(np.ceil(np.log2(top + 1))) + 1)]
    counts, _ = np.histogram(n_tokens, bins=np.asarray(edges, dtype=np.int64))
    return {
        "documents": int(len(n_tokens)),
        "min": int(n_tokens.min()),
        "median": float(np.median(n_tokens)),
        "mean": round(float(n_tokens.mean()), 2),
        "p90": float(np.percentile(n_tokens, 90)),
        "p99": float(np.percentile(n_tokens, 99)),
        "max": int(n_tokens.max()),
        **{f"over_{t}": int((n_tokens > t).sum()) for t in LENGTH_THRESHOLDS},
        "bucket_edges": edges,
        "bucket_counts": counts.astype(int).tolist(),
    }


def _histogram(n_tokens: np.ndarray, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    lo, hi = max(int(n_tokens.min()), 1), max(int(n_tokens.max()), 2)
    bins = np.unique(np.geomspace(lo, hi + 1, num=min(60, hi - lo + 2)).astype(int))
    ax.hist(n_tokens, bins=bins, color="#4477aa")
    ax.set_xscale("log")
    for t in LENGTH_THRESHOLDS:
        if t <= hi * 2:
            ax.axvline(t, color="#cc3311", linestyle="--", linewidth=1)
            ax.text(t, ax.get_ylim()[1] * 0.95, f" {t}", color="#cc3311", va="top", fontsize=8)
    ax.set_xlabel("document length (tokens, log scale)")
    ax.set_ylabel("documents")
    ax.set_title(f"Document lengths: {len(n_tokens)} documents")
    fig.tight_layout()
    with atomic_path(dest, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def _clean_outputs(out: Path) -> None:
    (out / "manifest.json").unlink(missing_ok=True)
    (out / STATE_FILE).unlink(missing_ok=True)
    (out / "length_histogram.png").unlink(missing_ok=True)
    for sub in ("docs", "packed"):
        if (out / sub).is_dir():
            shutil.rmtree(out / sub)
    for p in out.glob(".tokenizer.*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in out.glob(".*.tmp"):
        p.unlink(missing_ok=True)


def _remove_leftovers(out: Path) -> None:
    """Temp files and dirs of a killed run (torn shards, a half-saved tokenizer): never part of
    a finished output, and a rerun does not reuse them, so they go before anything else."""
    for sub in (out, out / "docs", out / "packed"):
        for p in sub.glob(".*.tmp"):
            p.unlink(missing_ok=True)
    for p in out.glob(".tokenizer.*"):
        shutil.rmtree(p, ignore_errors=True)


def _corpus_ids(corpus: Path, shards: list[Path]) -> list[str]:
    """Pass 1: the corpus' doc ids, in order."""
    doc_ids: list[str] = []
    for path in shards:
        doc_ids.extend(pq.read_table(path, columns=["doc_id"]).column("doc_id").to_pylist())
    if not doc_ids:
        raise InputError(f"corpus is empty: no documents in {corpus}")
    return doc_ids


def _tokenizer_intact(out: Path, state: dict[str, Any]) -> bool:
    tok_json = out / "tokenizer" / "tokenizer.json"
    sha = state.get("tokenizer_sha256")
    return bool(sha) and tok_json.is_file() and sha256_file(tok_json) == sha


def _resume(stage: Stage) -> dict[str, Any]:
    state = stage.load_state(lambda s: _tokenizer_intact(stage.out, s))
    if state is None:
        _clean_outputs(stage.out)
        return stage.new_state(parts={})
    log.info("tokenize: resuming, %d docs shards already done", len(state.get("parts", {})))
    return state


def _make_tokenizer(
    params: TokenizeParams, corpus: Path, tok_dir: Path, val_ids: set
) -> tuple[Any, str, dict | None]:
    """(tokenizer, source, sample stats): the base tokenizer, or one trained on a bounded
    sample of the train split (`TrainSample`)."""
    if params.base_tokenizer is not None:
        base = require_path(params.base_tokenizer, "base tokenizer")
        hf_tok = _load_hf_tokenizer(base)
        _save_tokenizer(hf_tok, tok_dir)
        return hf_tok, f"base:{base}", None
    sample = TrainSample(corpus, val_ids, params.train_sample_mb)
    log.info(
        "tokenize: training byte-level %s (vocab %d) on %s of %d train docs (%d chars)",
        params.tokenizer_model,
        params.vocab_size,
        "all" if sample.fraction >= 1 else f"a {params.train_sample_mb:g}M-char sample",
        sample.stats["split_documents"],
        sample.stats["split_chars"],
    )
    hf_tok = train_tokenizer(
        sample,
        params.vocab_size,
        params.min_frequency,
        length=sample.stats["split_documents"] if sample.fraction >= 1 else None,
        model=params.tokenizer_model,
    )
    _save_tokenizer(hf_tok, tok_dir)
    return hf_tok, f"trained:byte-level-{params.tokenizer_model}", sample.stats


def _tokenizer(stage: Stage, state: dict, params: TokenizeParams, corpus: Path, val_ids: set):
    """The run's tokenizer: the checkpointed one on resume, else made and checkpointed."""
    tok_dir = stage.out / "tokenizer"
    if state.get("tokenizer_sha256"):
        return _load_hf_tokenizer(tok_dir)
    hf_tok, source, sample = _make_tokenizer(params, corpus, tok_dir, val_ids)
    state.update(
        tokenizer_sha256=sha256_file(tok_dir / "tokenizer.json"),
        tokenizer_source=source,
        tokenizer_sample=sample,
    )
    stage.checkpoint(state)
    return hf_tok


@dataclass(frozen=True)
class EncoderSpec:
    """What a worker process needs to build the run's encoder: the tokenizer directory (in the
    output, on a filesystem the workers share), its tokenizer.json hash (a worker that sees
    another tokenizer refuses the unit) and the vocabulary size (the ids' Arrow type)."""

    tokenizer_dir: str
    tokenizer_sha256: str
    vocab_size: int


_ENCODERS: dict[EncoderSpec, tuple[_Encoder, bool]] = {}  # per process; True: counts progress


def _encoder(spec: EncoderSpec) -> tuple[_Encoder, bool]:
    found = _ENCODERS.get(spec)
    if found is None:
        tok_dir = Path(spec.tokenizer_dir)
        if sha256_file(tok_dir / "tokenizer.json") != spec.tokenizer_sha256:
            raise InputError(
                f"{tok_dir}: not the run's tokenizer (is the output on a shared disk?)"
            )
        backend = _plain_backend(_load_hf_tokenizer(tok_dir))
        quiet = Progress("tokenize", "docs", every_s=float("inf"))  # the stage counts units
        schema = docs_schema(spec.vocab_size)
        found = (_Encoder(backend, schema, set(), quiet, byte_level_lengths(backend)), False)
        _ENCODERS.clear()  # one run's tokenizer at a time
        _ENCODERS[spec] = found
    return found


def encode_unit(
    spec: EncoderSpec, shard: str, dest: str, val_ids: list[str]
) -> tuple[int, int, str, bool]:
    """One work unit, wherever it runs: corpus shard `shard` encoded into the docs shard `dest`
    (written to a temp name and renamed: a killed unit leaves only a temp file); returns
    (documents, tokens, the part's sha256, whether its progress was already counted)."""
    encoder, counted = _encoder(spec)
    with atomic_path(dest) as tmp:
        encoder.write_part(Path(shard), tmp, set(val_ids))
    n_tokens = ipc.open_file(pa.memory_map(dest, "r")).read_all().column("n_tokens")
    return len(n_tokens), int(pc.sum(n_tokens).as_py() or 0), sha256_file(dest), counted


def _shard_val_ids(shards: list[Path], val_ids: set[str]) -> list[list[str]]:
    """Per corpus shard, its validation doc_ids (what a unit needs of the split)."""
    return [
        [
            d
            for d in pq.read_table(s, columns=["doc_id"]).column("doc_id").to_pylist()
            if d in val_ids
        ]
        for s in shards
    ]


def _encode_all(
    stage: Stage,
    state: dict,
    shards: list[Path],
    encoder: _Encoder,
    spec: EncoderSpec,
    runner: UnitRunner = INLINE,
) -> list[Path]:
    """Pass 2: one docs shard per corpus shard, each a work unit on `runner`, checkpointed as
    soon as it is renamed into place (in any order); finished ones (same sha256 as the state
    says) are kept, so a rerun reuses every part that was finished."""
    docs_dir = stage.out / "docs"
    docs_dir.mkdir(exist_ok=True)
    part_paths = [docs_dir / f"part-{i:05d}.arrow" for i in range(len(shards))]
    todo = []
    for shard, dest in zip(shards, part_paths, strict=True):
        done = state["parts"].get(dest.name)
        if done and dest.is_file() and sha256_file(dest) == done:
            encoder.progress.skip(pq.ParquetFile(shard).metadata.num_rows)
        else:
            todo.append((shard, dest))
    val_by_shard = dict(zip(shards, _shard_val_ids(shards, encoder.val_ids), strict=True))
    _ENCODERS[spec] = (encoder, True)  # units run here use this encoder and its progress

    def finished(unit: tuple[Path, Path], result: tuple[int, int, str, bool]) -> None:
        docs, tokens, sha, counted = result
        state["parts"][unit[1].name] = sha  # the part was renamed into place before this
        stage.checkpoint(state)
        if not counted:  # (a unit run here counted its batches as it went)
            encoder.progress.add(docs, tokens=tokens)
            encoder.progress.maybe_log()

    try:
        run_units(
            runner,
            todo,
            lambda u: (encode_unit, (spec, str(u[0]), str(u[1]), val_by_shard[u[0]])),
            finished,
            lambda unit: None,
        )
    finally:
        _ENCODERS.pop(spec, None)
    for stale in docs_dir.glob("part-*.arrow"):
        if stale not in part_paths:
            stale.unlink()
    for torn in docs_dir.glob(".*.tmp"):  # a unit whose worker died mid-part (it ran again)
        torn.unlink(missing_ok=True)
    _maybe_log(encoder.progress, force=True)
    return part_paths


def _pack_all(out: Path, part_paths: list[Path], params: TokenizeParams, vocab_size, bos, eos):
    """Pass 3: packing, per split."""
    store = _DocStore(part_paths)
    try:
        pschema = packed_schema(vocab_size, params.seq_len, sentences=True)
        return {
            split: _pack_split(
                store,
                split,
                out / "packed" / f"{split}.arrow",
                pschema,
                params.seq_len,
                params.seed,
                bos,
                eos,
            )
            for split in SPLITS
        }
    finally:
        store.close()


def _counts(part_paths: list[Path], packed: dict, seq_len: int) -> tuple[dict, np.ndarray]:
    """Counts from the docs shards (small columns only), checked against the accounting
    identity in the module docstring; and every document's n_tokens."""
    tables = [
        ipc.open_file(pa.memory_map(str(p), "r"))
        .read_all()
        .select(["split", "n_tokens", "n_chars"])
        for p in part_paths
    ]
    stats = pa.concat_tables(tables)
    split_col = np.asarray(stats.column("split").to_pylist())
    n_tokens = stats.column("n_tokens").to_numpy().astype(np.int64)
    n_chars = stats.column("n_chars").to_numpy().astype(np.int64)
    counts: dict[str, Any] = {
        "documents": {s: int((split_col == s).sum()) for s in SPLITS},
        "tokens": {s: int(n_tokens[split_col == s].sum()) for s in SPLITS},
        "chars": {s: int(n_chars[split_col == s].sum()) for s in SPLITS},
        "sequences": {s: packed[s]["sequences"] for s in SPLITS},
        "dropped_tail_tokens": {s: packed[s]["dropped_tail_tokens"] for s in SPLITS},
        "special_tokens_added": {s: 2 * packed[s]["documents"] for s in SPLITS},
    }
    counts["tokens_total"] = int(n_tokens.sum())
    counts["chars_total"] = int(n_chars.sum())
    counts["documents_total"] = int(len(n_tokens))
    counts["packed_tokens"] = {s: seq_len * packed[s]["sequences"] for s in SPLITS}
    for s in SPLITS:
        lhs = counts["tokens"][s] + counts["special_tokens_added"][s]
        rhs = counts["packed_tokens"][s] + counts["dropped_tail_tokens"][s]
        if lhs != rhs or counts["documents"][s] != packed[s]["documents"]:
            raise RuntimeError(f"tokenize accounting does not add up for {s}: {counts}")
    return counts, n_tokens


def _cpt(chars: int, tokens: int) -> float | None:
    return round(chars / tokens, 6) if tokens else None


def _tokenizer_info(hf_tok, state: dict) -> dict[str, Any]:
    bos, eos = _wrapper_ids(hf_tok)
    return {
        "dir": "tokenizer",
        "source": state["tokenizer_source"],
        "vocab_size": len(hf_tok),
        # what it was trained on: {train_sample_mb, documents, chars, split_documents,
        # split_chars}; None for a base tokenizer
        "training_sample": state.get("tokenizer_sample"),
        "bos_id": bos,
        "eos_id": eos,
        "pad_id": hf_tok.pad_token_id,
        "mask_id": hf_tok.mask_token_id,
    }


def _files(out: Path, state: dict, part_paths: list[Path]) -> dict[str, Any]:
    packed = {s: out / "packed" / f"{s}.arrow" for s in SPLITS}
    return {
        "docs": [{"name": f"docs/{p.name}", "sha256": state["parts"][p.name]} for p in part_paths],
        "packed": {
            s: {"name": f"packed/{s}.arrow", "sha256": sha256_file(p)} for s, p in packed.items()
        },
        "histogram": "length_histogram.png",
    }


def _manifest(
    params: TokenizeParams, inputs: dict, hf_tok, state: dict, counts: dict, n_tokens
) -> dict[str, Any]:
    vocab_size = len(hf_tok)
    return {
        "stage": "tokenize",
        "inputs": inputs,
        "params": params_dict(params),
        "tokenizer": _tokenizer_info(hf_tok, state),
        "tokenizer_sha256": state["tokenizer_sha256"],
        "vocab_size": vocab_size,
        "id_dtype": str(id_type(vocab_size)),
        "seq_len": params.seq_len,
        "counts": counts,
        "chars_per_token": _cpt(counts["chars_total"], counts["tokens_total"]),
        "chars_per_token_by_split": {
            s: _cpt(counts["chars"][s], counts["tokens"][s]) for s in SPLITS
        },
        "length_distribution": _length_stats(n_tokens),
        "versions": versions("tokenizers", "transformers", "pyarrow", "numpy"),
    }


def _inputs(params: TokenizeParams, corpus: Path, corpus_manifest: dict) -> dict[str, Any]:
    base_sha = None
    if params.base_tokenizer is not None:
        base_sha = sha256_tree(require_path(params.base_tokenizer, "base tokenizer"))
    return {
        "corpus": str(corpus),
        "corpus_shards": corpus_manifest.get("shards"),
        "base_tokenizer": str(params.base_tokenizer) if params.base_tokenizer else None,
        "base_tokenizer_sha256": base_sha,
    }


def tokenize(params: TokenizeParams, *, runner: UnitRunner = INLINE) -> dict[str, Any]:
    """Run the tokenize stage; returns the manifest (also written to `params.out/manifest.json`).

    Encoding each corpus shard into its docs shard is one work unit on `runner` (default: here,
    one after another; the flows pass a Dask-backed one for `runner.kind: dask`, whose workers
    then read the corpus and write the output on a shared filesystem). Training the tokenizer
    and packing stay in this process; the outputs do not depend on the runner.

    Raises InputError when the corpus is missing, unfinished or empty, the base tokenizer
    cannot be loaded, another run is writing into `params.out`, or the disk is full or
    read-only.
    """
    t_start = time.monotonic()
    corpus = Path(params.corpus)
    shards = corpus_shards(corpus)  # InputError: missing / no manifest / no shards
    corpus_manifest = json.loads((corpus / "manifest.json").read_text())
    out = Path(params.out)
    # docs/, packed/, tokenizer/ are deleted and replaced below: only in a directory longdoc wrote.
    claim_output_dir(out, "tokenize", force=params.force, legacy=(STATE_FILE,))
    with Stage("tokenize", out, STATE_FILE) as stage:
        (out / "manifest.json").unlink(missing_ok=True)  # from here on, the dir is unfinished
        _remove_leftovers(out)
        doc_ids = _corpus_ids(corpus, shards)
        val_ids = assign_splits(doc_ids, params.val_fraction)
        inputs = _inputs(params, corpus, corpus_manifest)
        stage.fingerprint = fingerprint(
            params=params_dict(params),
            corpus=inputs["corpus_shards"],
            base_tokenizer=inputs["base_tokenizer_sha256"],
            code=versions("tokenizers"),
        )
        state = _resume(stage)
        timings = _Timings()
        with timings("tokenizer_s"):
            hf_tok = _tokenizer(stage, state, params, corpus, val_ids)
        vocab_size, (bos, eos) = len(hf_tok), _wrapper_ids(hf_tok)
        encoder, spec = _run_encoder(out, hf_tok, state, val_ids, len(doc_ids))
        with timings("encode_s"):
            part_paths = _encode_all(stage, state, shards, encoder, spec, runner)
        with timings("pack_s"):
            packed = _pack_all(out, part_paths, params, vocab_size, bos, eos)
        counts, n_tokens = _counts(part_paths, packed, params.seq_len)
        if counts["documents_total"] != len(doc_ids):
            raise RuntimeError("tokenize: docs shards do not match the corpus")
        _histogram(n_tokens, out / "length_histogram.png")
        manifest = _manifest(params, inputs, hf_tok, state, counts, n_tokens)
        manifest["files"] = _files(out, state, part_paths)
        manifest["timings"] = timings.summary(t_start, counts["tokens_total"])
        result = stage.finish(manifest)
    log.info(
        "tokenize: %d docs, %d tokens, %s sequences of %d in %.1fs (%s)",
        *(counts["documents_total"], counts["tokens_total"], counts["sequences"]),
        *(params.seq_len, manifest["timings"]["total_s"], out),
    )
    return result


def _run_encoder(
    out: Path, hf_tok, state: dict, val_ids: set[str], n_docs: int
) -> tuple[_Encoder, EncoderSpec]:
    """The encoder of this process (with the stage's progress) and the spec workers build
    theirs from."""
    vocab_size = len(hf_tok)
    backend = _plain_backend(hf_tok)
    progress = Progress("tokenize", "docs", n_docs, _PROGRESS_EVERY_S, ("tokens",))
    encoder = _Encoder(
        backend, docs_schema(vocab_size), val_ids, progress, byte_level_lengths(backend)
    )
    spec = EncoderSpec(str((out / "tokenizer").resolve()), state["tokenizer_sha256"], vocab_size)
    return encoder, spec


class _Timings(dict):
    """Wall seconds per named phase (`with timings("encode_s"): ...`)."""

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self[name] = time.monotonic() - t0

    def summary(self, t_start: float, tokens: int) -> dict[str, float]:
        out = {"total_s": round(time.monotonic() - t_start, 3)}
        out.update({k: round(v, 3) for k, v in self.items()})
        out["tokens_per_s"] = round(tokens / max(self["encode_s"], 1e-9), 1)
        return out


def _plain_backend(hf_tok):
    """A copy of the Rust tokenizer with truncation/padding off (a base tokenizer.json may
    carry them), so documents are encoded whole."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend
