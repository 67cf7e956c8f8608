"""The packed rows' sentence starts (what denoising permutes): a hand-checked packing, and on a
real tokenize run the starts re-derived from the docs shards and the packing order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from longdoc.components.data import tokenize as tok
from tests.components.test_tokenize import SEQ_LEN, corpus, docs_table, read_ipc, shards  # noqa: F401


class _Batches:
    """An IPC writer stand-in that keeps what is written."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []

    def write_batch(self, batch: pa.RecordBatch) -> None:
        self.batches.append(batch)


def test_packing_by_hand():
    schema = tok.packed_schema(300, 4, sentences=True)
    writer = _Batches()
    packer = tok._Packer(writer, schema, 4, bos=0, eos=2)
    # A: <s> 11 12 13 | 14 15 </s>   (sentences at tokens 0 and 3)
    packer.add(np.array([11, 12, 13, 14, 15], np.uint16), np.array([0, 3], np.int32))
    # B: <s> 21 | 22 23 </s>         (sentences at 0, 1 and 1 again: two starts in one token)
    packer.add(np.array([21, 22, 23], np.uint16), np.array([0, 1, 1], np.int32))
    packer.flush()
    (batch,) = writer.batches
    assert batch.column("input_ids").to_pylist() == [
        [0, 11, 12, 13],
        [14, 15, 2, 0],
        [21, 22, 23, 2],
    ]
    # row 2 opens with A's second sentence (start 0) and B's <s> at 3; row 3 opens inside B's
    # first sentence (0: the row's own first piece) and B's second sentence starts at 1
    assert batch.column("sentence_starts").to_pylist() == [[0], [0, 3], [0, 1]]
    assert packer.sequences == 3 and len(packer.carry) == 0


def test_packed_starts_are_the_documents_sentences(shards):  # noqa: F811
    out, manifest = shards
    docs = docs_table(out)
    seed = manifest["params"]["seed"]
    for split in tok.SPLITS:
        mine = docs.filter(pc.equal(docs.column("split"), split))
        order = sorted(range(mine.num_rows), key=lambda i: mine.column("doc_id")[i].as_py())
        stream, at = [], 0
        for k in np.random.default_rng(seed).permutation(len(order)):
            i = order[k]
            stream.append(at)  # the document's <s>
            starts = mine.column("sentence_token_starts")[i].as_py()
            stream.extend(at + 1 + t for t in sorted(set(starts)) if t > 0)
            at += mine.column("n_tokens")[i].as_py() + 2
        packed = read_ipc(out / "packed" / f"{split}.arrow")
        got = packed.column("sentence_starts").to_pylist()
        assert len(got) == packed.num_rows > 0
        for r, row in enumerate(got):
            want = sorted({0} | {a - r * SEQ_LEN for a in stream if 0 <= a - r * SEQ_LEN < SEQ_LEN})
            assert row == want, (split, r)
