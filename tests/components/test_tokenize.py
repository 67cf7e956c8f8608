"""Tokenize: trained tokenizer, docs and packed shards, splits, accounting, base tokenizer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from longdoc.components.core.config import IngestParams, TokenizeParams
from longdoc.components.core.io import InputError
from longdoc.components.data import tokenize as tok_mod
from longdoc.components.data.ingest import ingest, read_corpus
from longdoc.components.data.tokenize import (
    SPECIAL_TOKENS,
    STATE_FILE,
    assign_splits,
    docs_schema,
    id_type,
    iter_packed,
    load_tokenizer,
    packed_schema,
    tokenize,
)

SEQ_LEN = 64
WORDS = (
    "river stone house light quick slow data model long document token sentence paragraph "
    "caf\u00e9 na\u00efve \u00fcber stra\u00dfe \u65e5\u672c emoji\U0001f600 the a of and"
).split()


def make_text(rng: random.Random, n_paras: int) -> str:
    paras = []
    for _ in range(n_paras):
        sents = []
        for _ in range(rng.randint(1, 5)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
            sents.append(" ".join(words).capitalize() + rng.choice(".!?"))
        paras.append(" ".join(sents))
    return "\n\n".join(paras)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    src = root / "src"
    src.mkdir()
    rng = random.Random(0)
    for i in range(30):
        (src / f"d{i:02d}.txt").write_text(make_text(rng, rng.randint(1, 12)))
    ingest(IngestParams(sources=[src], out=root / "corpus", shard_max_docs=12))
    return root / "corpus"


@pytest.fixture(scope="module")
def shards(corpus: Path) -> tuple[Path, dict]:
    out = corpus.parent / "shards"
    params = TokenizeParams(
        corpus=corpus, out=out, vocab_size=400, min_frequency=2, seq_len=SEQ_LEN, val_fraction=0.2
    )
    return out, tokenize(params)


def read_ipc(path: Path) -> pa.Table:
    return ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def docs_table(out: Path) -> pa.Table:
    return pa.concat_tables(read_ipc(p) for p in sorted((out / "docs").glob("part-*.arrow")))


def test_trained_tokenizer_special_ids_and_round_trip(shards) -> None:
    out, manifest = shards
    tok = load_tokenizer(out)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    assert (tok.unk_token_id, tok.mask_token_id) == (3, 4)
    text = "Caf\u00e9 na\u00efve text \u2014 with \u65e5\u672c and \U0001f600, never seen: xyzzy!"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte-level: anything round-trips
    with_specials = tok(text)["input_ids"]
    assert with_specials[0] == 0 and with_specials[-1] == 2 and with_specials[1:-1] == ids
    masked = tok("one <mask> two", add_special_tokens=False)["input_ids"]
    assert 4 in masked and masked[masked.index(4) - 1] != tok.convert_tokens_to_ids("\u0120")
    assert manifest["vocab_size"] == len(tok) <= 400
    assert manifest["tokenizer"]["source"] == "trained:byte-level-bpe"


def test_tokenizer_dir_loads_with_auto_tokenizer(shards) -> None:
    from transformers import AutoTokenizer

    out, manifest = shards
    tdir = out / "tokenizer"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tdir / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(tdir)
    assert tok.is_fast
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    assert tok.unk_token == "<unk>" and tok.mask_token == "<mask>"
    assert tok.model_max_length == 4096
    from longdoc.components.core.io import sha256_file

    assert manifest["tokenizer_sha256"] == sha256_file(tdir / "tokenizer.json")


def test_docs_shards_schema_ids_and_sentence_starts(shards, corpus: Path) -> None:
    out, manifest = shards
    tok = load_tokenizer(out)
    table = docs_table(out)
    assert table.schema.equals(docs_schema(manifest["vocab_size"]))
    assert table.schema.field("input_ids").type == pa.list_(pa.uint16())
    assert manifest["id_dtype"] == "uint16"
    rows = {r["doc_id"]: r for r in table.to_pylist()}
    texts = {r["doc_id"]: r for r in read_corpus(corpus)}
    assert set(rows) == set(texts)
    for doc_id, row in rows.items():
        doc = texts[doc_id]
        enc = tok(doc["text"], add_special_tokens=False, return_offsets_mapping=True)
        assert row["input_ids"] == enc["input_ids"]
        assert row["n_tokens"] == len(row["input_ids"]) and row["n_chars"] == len(doc["text"])
        starts = row["sentence_token_starts"]
        assert len(starts) == len(doc["sentences"])
        assert starts == sorted(starts) and starts[0] == 0
        offsets = enc["offset_mapping"]
        for sent, t in zip(doc["sentences"], starts, strict=True):
            # the sentence's first character lies in token t, and not in an earlier token
            assert offsets[t][1] > sent["start"]
            assert t == 0 or offsets[t - 1][1] <= sent["start"]
            decoded = tok.decode(row["input_ids"][t:])
            first_word = doc["text"][sent["start"] : sent["end"]].split()[0]
            assert first_word[:1] in decoded[:3]


def test_packed_sequences_shape_and_separators(shards) -> None:
    out, manifest = shards
    for split in ("train", "validation"):
        reader = ipc.open_file(pa.memory_map(str(out / "packed" / f"{split}.arrow"), "r"))
        schema = packed_schema(manifest["vocab_size"], SEQ_LEN, sentences=True)
        assert reader.schema.equals(schema)
        table = reader.read_all()
        rows = np.asarray(table.column("input_ids").combine_chunks().values).reshape(-1, SEQ_LEN)
        assert len(rows) == manifest["counts"]["sequences"][split] > 0
        flat = rows.reshape(-1)
        assert flat[0] == 0  # the first document starts the first row
        bos_at = np.flatnonzero(flat == 0)
        assert (flat[bos_at[1:] - 1] == 2).all()  # every later <s> follows a </s>
        assert (flat == 2).sum() >= len(bos_at) - 1
        assert not (flat == 1).any()  # no padding in packed rows


def test_accounting_identity(shards) -> None:
    out, m = shards
    c = m["counts"]
    for s in ("train", "validation"):
        # tokens + <s>,</s> per document == packed tokens + dropped tail
        lhs = c["tokens"][s] + 2 * c["documents"][s]
        assert c["special_tokens_added"][s] == 2 * c["documents"][s]
        assert lhs == SEQ_LEN * c["sequences"][s] + c["dropped_tail_tokens"][s]
        assert 0 <= c["dropped_tail_tokens"][s] < SEQ_LEN
    assert c["tokens_total"] == c["tokens"]["train"] + c["tokens"]["validation"]
    assert c["documents_total"] == 30 == sum(c["documents"].values())
    table = docs_table(out)
    assert c["tokens_total"] == sum(table.column("n_tokens").to_pylist())
    assert m["chars_per_token"] == pytest.approx(c["chars_total"] / c["tokens_total"], rel=1e-5)
    dist = m["length_distribution"]
    n = np.asarray(table.column("n_tokens").to_pylist())
    assert dist["min"] == n.min() and dist["max"] == n.max() and dist["over_512"] == (n > 512).sum()
    assert dist["median"] == float(np.median(n))
    png = out / "length_histogram.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_split_deterministic_and_disjoint(shards) -> None:
    out, m = shards
    table = docs_table(out)
    ids, splits = table.column("doc_id").to_pylist(), table.column("split").to_pylist()
    split = dict(zip(ids, splits, strict=True))
    val = {d for d, s in split.items() if s == "validation"}
    assert val == assign_splits(list(split), 0.2)
    assert len(val) == m["counts"]["documents"]["validation"] == 6
    ids = sorted(ids)
    assert assign_splits(ids[::-1], 0.2) == val  # order does not matter
    assert assign_splits(ids, 0.0) == set()
    assert len(assign_splits(ids[:2], 0.01)) == 1  # tiny corpora still get one of each
    assert len(assign_splits(ids[:2], 0.99)) == 1


def test_iter_packed_batches(shards) -> None:
    out, m = shards
    n = m["counts"]["sequences"]["train"]
    batches = list(iter_packed(out, "train", 7))
    assert sum(len(b) for b in batches) == n
    assert all(b.shape == (7, SEQ_LEN) for b in batches[:-1])
    assert batches[0].dtype == np.uint16
    dropped = list(iter_packed(out, "train", 7, drop_last=True))
    assert len(dropped) == n // 7
    full = np.concatenate(batches)
    table = read_ipc(out / "packed/train.arrow")
    ref = np.asarray(table.column("input_ids").combine_chunks().values).reshape(-1, SEQ_LEN)
    assert (full == ref).all()
    with pytest.raises(ValueError):
        next(iter_packed(out, "test", 2))


def test_seed_controls_packing_order_only(shards, corpus: Path, tmp_path: Path) -> None:
    out, m = shards
    params = dict(
        corpus=corpus, vocab_size=400, min_frequency=2, seq_len=SEQ_LEN, val_fraction=0.2,
        base_tokenizer=out / "tokenizer",
    )  # fmt: skip
    same = tokenize(TokenizeParams(out=tmp_path / "same", **params))
    other = tokenize(TokenizeParams(out=tmp_path / "other", seed=1, **params))
    a = (out / "packed/train.arrow").read_bytes()
    assert (tmp_path / "same/packed/train.arrow").read_bytes() == a
    assert (tmp_path / "other/packed/train.arrow").read_bytes() != a
    assert same["counts"]["documents"] == other["counts"]["documents"] == m["counts"]["documents"]
    assert other["counts"]["tokens"] == m["counts"]["tokens"]


def test_base_tokenizer_reused(shards, corpus: Path, tmp_path: Path) -> None:
    out, m = shards
    params = TokenizeParams(
        corpus=corpus, out=tmp_path / "based", base_tokenizer=out / "tokenizer",
        vocab_size=300, seq_len=SEQ_LEN, val_fraction=0.2,
    )  # fmt: skip
    m2 = tokenize(params)
    assert m2["tokenizer"]["source"].startswith("base:")
    assert m2["vocab_size"] == m["vocab_size"]  # the base's vocab, not params.vocab_size
    a, b = load_tokenizer(out), load_tokenizer(tmp_path / "based")
    assert a.get_vocab() == b.get_vocab()
    assert docs_table(out).column("input_ids").to_pylist() == (
        docs_table(tmp_path / "based").column("input_ids").to_pylist()
    )
    assert m2["counts"]["sequences"] == m["counts"]["sequences"]


def test_missing_or_unfinished_corpus(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="^corpus not found: "):
        tokenize(TokenizeParams(corpus=tmp_path / "nope", out=tmp_path / "o"))
    (tmp_path / "half").mkdir()
    with pytest.raises(InputError, match="no manifest.json"):
        tokenize(TokenizeParams(corpus=tmp_path / "half", out=tmp_path / "o"))


def test_bad_base_tokenizer_is_input_error(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="base tokenizer not found"):
        tokenize(TokenizeParams(corpus=corpus, out=tmp_path / "o", base_tokenizer=tmp_path / "x"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot load tokenizer"):
        tokenize(
            TokenizeParams(corpus=corpus, out=tmp_path / "o", base_tokenizer=tmp_path / "junk")
        )


def test_resume_reuses_finished_docs_shards(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "s"
    params = TokenizeParams(corpus=corpus, out=out, vocab_size=300, seq_len=SEQ_LEN)
    real = tok_mod._pack_split

    def crash(*a, **k):
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(tok_mod, "_pack_split", crash)
    with pytest.raises(KeyboardInterrupt):
        tokenize(params)
    assert not (out / "manifest.json").exists()
    state = json.loads((out / STATE_FILE).read_text())
    assert len(state["parts"]) == 3
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "docs").glob("*.arrow")}
    tok_stamp = (out / "tokenizer/tokenizer.json").stat().st_mtime_ns

    monkeypatch.setattr(tok_mod, "_pack_split", real)
    m = tokenize(params)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "docs").glob("*.arrow")} == stamps
    assert (out / "tokenizer/tokenizer.json").stat().st_mtime_ns == tok_stamp
    assert not (out / STATE_FILE).exists()
    fresh = tokenize(TokenizeParams(corpus=corpus, out=tmp_path / "f", vocab_size=300,
                                    seq_len=SEQ_LEN))  # fmt: skip
    assert m["counts"] == fresh["counts"]

    # A rerun with different params starts over and leaves no stale files behind.
    m3 = tokenize(TokenizeParams(corpus=corpus, out=out, vocab_size=300, seq_len=32))
    assert m3["seq_len"] == 32 and not (out / STATE_FILE).exists()
    assert iter_packed(out, "train", 1).__next__().shape == (1, 32)


def test_id_type_widens_for_large_vocab() -> None:
    assert id_type(65536) == pa.uint16()
    assert id_type(65537) == pa.int32()
    assert packed_schema(70000, 16).field("input_ids").type == pa.list_(pa.int32(), 16)


def test_unigram_tokenizer_option(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "uni"
    m = tokenize(
        TokenizeParams(corpus=corpus, out=out, vocab_size=400, seq_len=SEQ_LEN,
                       tokenizer_model="unigram")
    )  # fmt: skip
    assert m["tokenizer"]["source"] == "trained:byte-level-unigram"
    assert m["params"]["tokenizer_model"] == "unigram"
    tok = load_tokenizer(out)
    assert json.loads((out / "tokenizer/tokenizer.json").read_text())["model"]["type"] == "Unigram"
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    text = "Unseen \u00fcber-words \u65e5\u672c \U0001f600 zzz!"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and tok.unk_token_id not in ids
    table = docs_table(out)
    rows = {r["doc_id"]: r for r in table.to_pylist()}
    for doc in read_corpus(corpus):
        row = rows[doc["doc_id"]]
        enc = tok(doc["text"], add_special_tokens=False, return_offsets_mapping=True)
        assert row["input_ids"] == enc["input_ids"]
        offsets = enc["offset_mapping"]
        for sent, t in zip(doc["sentences"], row["sentence_token_starts"], strict=True):
            assert offsets[t][0] <= sent["start"] < offsets[t][1]
    c = m["counts"]
    assert c["tokens_total"] + 2 * c["documents_total"] == sum(
        SEQ_LEN * c["sequences"][s] + c["dropped_tail_tokens"][s] for s in ("train", "validation")
    )


def test_sentence_token_starts_fallback_matches_char_to_token() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "bb": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    enc = tok.encode("a bb  a bb")
    starts = np.asarray([0, 2, 6, 8])
    assert tok_mod._sentence_token_starts(enc, starts).tolist() == [0, 1, 2, 3]
    # a start on a char that no token covers (a space) takes the next token
    assert tok_mod._sentence_token_starts(enc, np.asarray([0, 4])).tolist() == [0, 2]
    assert tok_mod._sentence_token_starts(tok.encode(""), np.asarray([0])).tolist() == [0]


def test_byte_level_fast_path_matches_offsets(shards) -> None:
    """The encode pass uses token byte lengths instead of offsets for byte-level tokenizers; a
    document whose tokens do not tile its bytes (`<mask>` absorbs a space) falls back."""
    out, _ = shards
    backend = tok_mod._plain_backend(load_tokenizer(out))
    lens = tok_mod.byte_level_lengths(backend)
    assert lens is not None and lens[4] == len("<mask>")
    text = "Caf\u00e9 \u65e5\u672c stone. Na\u00efve \U0001f600 house!\n\nRiver data."
    starts = np.asarray([0, 17, 33])
    enc = backend.encode(text, add_special_tokens=False)
    ids = np.asarray(backend.encode_batch_fast([text], add_special_tokens=False)[0].ids)
    assert ids.tolist() == enc.ids
    fast = tok_mod._starts_from_bytes(text, ids, lens, starts)
    assert fast is not None
    assert fast.tolist() == tok_mod._sentence_token_starts(enc, starts).tolist()
    masked = "one <mask> two"
    mids = np.asarray(backend.encode(masked, add_special_tokens=False).ids)
    assert tok_mod._starts_from_bytes(masked, mids, lens, np.asarray([0])) is None

    from tokenizers import Tokenizer, models, normalizers

    bert_like = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    bert_like.normalizer = normalizers.Lowercase()
    assert tok_mod.byte_level_lengths(bert_like) is None  # -> encode_batch with offsets


def test_packing_matches_an_independent_reference(shards, corpus: Path, tmp_path: Path,
                                                   monkeypatch) -> None:  # fmt: skip
    """The packed rows are exactly: documents sorted by doc_id, permuted by the seed, each
    wrapped <s> ... </s>, concatenated and cut into seq_len rows (the tail dropped). Read here
    with pyarrow from the docs shards, independently of the stage's positioned reads; and the
    same with only one docs shard file open at a time."""
    out, m = shards
    table = docs_table(out)
    for split in ("train", "validation"):
        rows = sorted(
            (d, ids)
            for d, s, ids in zip(
                table.column("doc_id").to_pylist(),
                table.column("split").to_pylist(),
                table.column("input_ids").to_pylist(),
                strict=True,
            )
            if s == split
        )
        order = np.random.default_rng(m["params"]["seed"]).permutation(len(rows))
        stream = [t for k in order for t in [0, *rows[k][1], 2]]
        n_rows = len(stream) // SEQ_LEN
        want = np.asarray(stream[: n_rows * SEQ_LEN]).reshape(n_rows, SEQ_LEN)
        got = read_ipc(out / f"packed/{split}.arrow").column("input_ids").combine_chunks()
        assert (np.asarray(got.values).reshape(-1, SEQ_LEN) == want).all()

    monkeypatch.setattr(tok_mod, "_MAX_OPEN_SHARDS", 1)
    params = TokenizeParams(
        corpus=corpus, out=tmp_path / "one-fd", base_tokenizer=out / "tokenizer",
        vocab_size=400, seq_len=SEQ_LEN, val_fraction=0.2,
    )  # fmt: skip
    tokenize(params)
    for split in ("train", "validation"):
        a = (out / f"packed/{split}.arrow").read_bytes()
        assert (tmp_path / f"one-fd/packed/{split}.arrow").read_bytes() == a


def test_length_stats_thresholds_and_buckets() -> None:
    n = np.array([0, 3, 511, 512, 513, 4096, 4097, 16384, 16385, 70000])
    s = tok_mod._length_stats(n)
    assert (s["over_512"], s["over_4096"], s["over_16384"]) == (6, 4, 2)
    assert (s["min"], s["max"], s["documents"]) == (0, 70000, 10)
    edges, counts = s["bucket_edges"], s["bucket_counts"]
    assert edges[:3] == [0, 1, 2] and edges[-1] > 70000 and sum(counts) == len(n)
    for lo, hi, c in zip(edges, edges[1:], counts, strict=False):
        assert c == int(((n >= lo) & (n < hi)).sum())
    assert tok_mod._length_stats(np.zeros(0, dtype=np.int64)) == {"documents": 0}
