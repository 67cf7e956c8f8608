"""Unit tests for the small shared pieces: atomic writes, stage freshness, MLM masking. (The IMDB
loader's handling of the official layout is tested with the other task loaders, in
test_tasks_loaders.py.)"""

import json

import pytest
import torch

from longdoc.components.core.config import Params
from longdoc.components.core.io import atomic_path, atomic_write_json
from longdoc.components.training.pretrain import mask_tokens
from longdoc.flows.freshness import fingerprint, is_fresh, mark_done, spec


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out.json"
    atomic_write_json(dest, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(dest.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_stage_freshness_follows_params_and_inputs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("one")
    p = Params.model_validate({"ingest": {"sources": [str(src)], "out": str(tmp_path / "corpus")}})
    s = spec("ingest", p)
    assert not is_fresh(s)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus/manifest.json").write_text("{}")
    mark_done(s)
    assert is_fresh(s)
    before = fingerprint(s)
    (src / "a.txt").write_text("two")
    assert fingerprint(s) != before and not is_fresh(s)
    mark_done(s)
    p.ingest.min_chars = 5
    assert not is_fresh(spec("ingest", p))


def test_mlm_masking_recipe():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (64, 512))
    ids[:, 0], ids[:, -1] = 0, 2  # <s> ... </s>
    inputs, labels = mask_tokens(
        ids,
        mask_token_id=4,
        vocab_size=1000,
        special_ids=[0, 1, 2, 3, 4],
        probability=0.15,
        generator=gen,
    )
    picked = labels != -100
    assert not picked[:, 0].any() and not picked[:, -1].any()
    assert abs(picked.float().mean().item() - 0.15 * 510 / 512) < 0.01
    assert torch.equal(labels[picked], ids[picked])
    masked = (inputs == 4) & picked
    unchanged = (inputs == ids) & picked
    assert abs(masked.sum().item() / picked.sum().item() - 0.8) < 0.02
    assert abs(unchanged.sum().item() / picked.sum().item() - 0.1) < 0.02  # (+ random hits)
    assert torch.equal(inputs[~picked], ids[~picked])
