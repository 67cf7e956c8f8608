"""The registered zero-shot classifier served by `mlflow models serve` exactly like a fine-tuned
one: same request, same answer columns, the same 400 for a bad row; stopped by its PID."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from longdoc.components.inference.zeroshot import register_zero_shot
from tests.components.test_score import own_store
from tests.components.test_zeroshot import TEXTS, spec_for
from tests.components.tiny import tiny_checkpoint
from tests.e2e.test_serve import _post, _post_status, _split, served

pytestmark = pytest.mark.slow


def test_mlflow_models_serve_answers_with_the_zero_shot_model(tmp_path, monkeypatch):
    store = own_store(tmp_path, monkeypatch)
    ckpt = tmp_path / "mlm"
    tiny_checkpoint(ckpt, TEXTS, vocab_size=330, hidden_size=32, max_positions=66)
    uri = register_zero_shot("served", spec_for(ckpt), store)
    expected = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": TEXTS}))
    with served(uri, store, tmp_path) as base:
        preds = _post(f"{base}/invocations", _split([[t] for t in TEXTS]))["predictions"]
        assert [p["label"] for p in preds] == list(expected["label"])
        for p, ref in zip(preds, expected["probabilities"], strict=True):
            assert max(abs(a - b) for a, b in zip(p["probabilities"], ref, strict=True)) < 1e-5
        assert all(p["windows"] == 1 and p["truncated"] is False for p in preds)
        status, text = _post_status(f"{base}/invocations", _split([[TEXTS[0]], [None]]))
        assert status == 400 and "row 1: 'text' is null" in json.loads(text)["message"]
