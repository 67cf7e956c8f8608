"""Tokenize with bounded memory: encode batches cut by text size, long documents encoded in
pieces with the same ids, and the tokenizer trained on a bounded deterministic sample."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from longdoc.components.core.config import IngestParams, TokenizeParams
from longdoc.components.data import tokenize as tok_mod
from longdoc.components.data.ingest import corpus_shards, ingest

WORDS = (
    "river stone it's they'll 42 3.14 x_1 (a) [b] {c} -- ... caf\u00e9 \u00fcber \u65e5\u672c "
    "emoji\U0001f600 <mask> the a of and"
).split()
SPACES = [" "] * 12 + ["  ", "\n", "\n\n", "\t", " \n ", "   \n"]


def messy_text(rng: random.Random, n_words: int) -> str:
    """Words with every kind of gap: runs of spaces, tabs, line breaks, punctuation."""
    return "".join(rng.choice(WORDS) + rng.choice(SPACES) for _ in range(n_words)).strip()


@pytest.fixture(scope="module")
def tokenizers():
    rng = random.Random(1)
    texts = [messy_text(rng, 200) for _ in range(20)]
    return {
        model: tok_mod._plain_backend(
            tok_mod.train_tokenizer(iter(texts), 300, min_frequency=1, model=model)
        )
        for model in ("bpe", "unigram")
    }


@pytest.mark.parametrize("model", ["bpe", "unigram"])
def test_pieces_encode_to_the_whole_texts_ids(tokenizers, model: str) -> None:
    backend = tokenizers[model]
    rng = random.Random(2)
    for _ in range(30):
        text = messy_text(rng, rng.randint(50, 400))
        limit = rng.randint(8, 120)
        pieces = tok_mod.word_start_pieces(text, limit)
        assert "".join(pieces) == text and len(pieces) > 1
        whole = backend.encode(text, add_special_tokens=False).ids
        parts = [i for p in pieces for i in backend.encode(p, add_special_tokens=False).ids]
        assert parts == whole


def test_pieces_are_bounded_unless_there_is_nowhere_to_cut() -> None:
    text = " ".join(["word"] * 1000)
    pieces = tok_mod.word_start_pieces(text, 100)
    assert max(map(len, pieces)) <= 100 and "".join(pieces) == text
    glued = "x" * 500 + " y" + "z" * 10  # the first place to cut is past the limit
    assert tok_mod.word_start_pieces(glued, 100) == ["x" * 500, " y" + "z" * 10]
    assert tok_mod.word_start_pieces("x" * 500, 100) == ["x" * 500]
    assert tok_mod.word_start_pieces("a  b" * 100, 10) == ["a  b" * 100]  # never in a run


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory) -> Path:
    """Short documents and a few much longer ones, as real archives have."""
    root = tmp_path_factory.mktemp("bounded")
    src = root / "src"
    src.mkdir()
    rng = random.Random(3)
    for i in range(30):
        n = rng.choice([10, 20, 40]) if i % 10 else 600
        sents = [" ".join(rng.choice(WORDS[:8] + WORDS[-4:]) for _ in range(12)) for _ in range(n)]
        (src / f"d{i:02d}.txt").write_text(". ".join(sents) + ".")
    ingest(IngestParams(sources=[src], out=root / "corpus", shard_max_docs=20))
    return root / "corpus"


@pytest.fixture(scope="module")
def whole(long_corpus: Path) -> tuple[Path, dict]:
    """The reference run: default budgets, tokenizer trained on the whole train split."""
    out = long_corpus.parent / "whole"
    return out, run(long_corpus, out, train_sample_mb=None)


def test_encode_batches_are_cut_by_text_size(long_corpus: Path, monkeypatch) -> None:
    monkeypatch.setattr(tok_mod, "_ENCODE_BYTES", 8_000)
    for shard in corpus_shards(long_corpus):
        sizes = pq.read_table(shard, columns=["text"]).column("text")
        expected = [len(t.encode()) for t in sizes.to_pylist()]
        got, seen = [], []
        for batch in tok_mod.encode_batches(shard):
            b = [len(t.encode()) for t in batch.column("text").to_pylist()]
            assert len(b) == 1 or sum(b) <= 8_000  # over the budget only alone
            got.append(sum(b))
            seen.extend(b)
        assert seen == expected  # every document once, in order
        assert max(expected) > 8_000 and len(got) > 2


def test_reads_take_fewer_rows_when_documents_are_long(long_corpus: Path, monkeypatch) -> None:
    shard = corpus_shards(long_corpus)[0]
    longest = max(pq.read_table(shard, columns=["n_chars"]).column(0).to_pylist())
    monkeypatch.setattr(tok_mod, "_ENCODE_BYTES", 3 * longest)
    rows = [b.num_rows for b in tok_mod.read_batches(shard, ["doc_id"])]
    assert max(rows) == 3 and sum(rows) == pq.ParquetFile(shard).metadata.num_rows


def run(corpus: Path, out: Path, **kw) -> dict:
    params = TokenizeParams(corpus=corpus, out=out, vocab_size=300, seq_len=64, **kw)
    return tok_mod.tokenize(params)


def test_small_budgets_write_the_same_documents(long_corpus, whole, tmp_path, monkeypatch):
    """Ids, sentence starts and packed rows do not depend on batch or piece sizes: documents
    split into pieces and tiny batches give the same docs table as whole documents."""
    ref_out, ref = whole
    monkeypatch.setattr(tok_mod, "_ENCODE_BYTES", 5_000)
    monkeypatch.setattr(tok_mod, "_PIECE_CHARS", 700)
    small = run(long_corpus, tmp_path / "small", train_sample_mb=None)
    assert small["tokenizer_sha256"] == ref["tokenizer_sha256"]

    def docs(out: Path) -> pa.Table:
        paths = sorted((out / "docs").glob("part-*.arrow"))
        return pa.concat_tables(ipc.open_file(str(p)).read_all() for p in paths)

    assert docs(tmp_path / "small").equals(docs(ref_out))
    assert max(docs(ref_out).column("n_chars").to_pylist()) > 700 * 10
    for split in ("train", "validation"):
        name = f"packed/{split}.arrow"
        assert (tmp_path / "small" / name).read_bytes() == (ref_out / name).read_bytes()


def test_tokenizer_trained_on_a_bounded_deterministic_sample(long_corpus, whole, tmp_path):
    _, ref = whole
    info = ref["tokenizer"]["training_sample"]
    assert info["documents"] == info["split_documents"] == ref["counts"]["documents"]["train"]
    assert info["chars"] == info["split_chars"] == ref["counts"]["chars"]["train"]
    assert tok_mod.TrainSample(long_corpus, set(), 1000).fraction == 1.0  # more than there is

    cap = 0.04  # million chars, about a third of the split
    drawn = run(long_corpus, tmp_path / "a", train_sample_mb=cap)
    sample = drawn["tokenizer"]["training_sample"]
    assert drawn["tokenizer_sha256"] != ref["tokenizer_sha256"]
    assert 0 < sample["documents"] < info["split_documents"]
    # about the cap: drawn at rate cap / split chars, stopping once it is reached
    assert 0.5 * cap * 1e6 < sample["chars"] < cap * 1e6 + ref["length_distribution"]["max"] * 8
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["tokenizer"]["training_sample"] == {**sample, "train_sample_mb": cap}


def test_sample_draws_by_doc_id_hash_and_skips_validation(long_corpus: Path) -> None:
    rows = [r for s in corpus_shards(long_corpus) for r in pq.read_table(s).to_pylist()]
    val = {r["doc_id"] for r in rows[::5]}
    sample = tok_mod.TrainSample(long_corpus, val, 0.02)
    drawn = [t for batch in sample for t in batch]
    assert 0 < sample.fraction < 1 and sample.stats["documents"] == len(drawn)
    chosen = [
        r["text"]
        for r in rows
        if r["doc_id"] not in val and tok_mod._sample_key(r["doc_id"]) < sample.fraction
    ]
    assert drawn == chosen[: len(drawn)]  # in corpus order, stopped at the cap
    assert sum(map(len, drawn)) >= 0.02e6 or drawn == chosen
