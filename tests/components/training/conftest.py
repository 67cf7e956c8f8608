"""Tiny token shards for the parallel pretraining tests: test_pretrain's recipe (a tokenizer,
20 training and 4 validation rows of 32 random ids), written with whatever columns the packed
schema has (every row starts one sentence at 0 for the denoising columns)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pyarrow import ipc

from longdoc.components.data import tokenize as tok
from tests.components.test_pretrain import SEQ


def _write_packed(path: Path, rows: np.ndarray) -> None:
    schema = tok.packed_schema(400, SEQ)
    ids = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1), pa.uint16()), SEQ)
    columns = {"input_ids": ids}
    if "sentence_starts" in schema.names:
        columns["sentence_starts"] = pa.array([[0]] * len(rows), pa.list_(pa.int32()))
    batch = pa.record_batch([columns[name] for name in schema.names], schema=schema)
    with ipc.new_file(str(path), schema) as w:
        for i in range(0, len(rows), 8):  # several record batches, to cross their boundaries
            w.write_batch(batch.slice(i, 8))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    texts = ["long documents need long models and patient readers"] * 20
    tokenizer = tok.train_tokenizer(iter(texts), vocab_size=300, min_frequency=1)
    tokenizer.save_pretrained(out / "tokenizer")
    rng = np.random.default_rng(0)
    (out / "packed").mkdir()
    for split, n in (("train", 20), ("validation", 4)):
        rows = rng.integers(5, len(tokenizer), size=(n, SEQ))
        rows[:, 0] = 0
        _write_packed(out / "packed" / f"{split}.arrow", rows)
    (out / "manifest.json").write_text(json.dumps({"chars_per_token": 4.0}))
    return out
