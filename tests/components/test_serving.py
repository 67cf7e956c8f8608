"""The registered pyfunc model: loads with `mlflow.pyfunc.load_model(models:/...@champion)`,
carries its signature and pinned requirements, and predicts for both served kinds
(classification: label + probabilities; QA: answer + score)."""

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from components.serving import InferenceEngine, checkpoint_kind, serving_requirements
from tests.components.test_score import TEXTS, make_checkpoint, own_store, register


def test_classifier_pyfunc_round_trip(tmp_path, monkeypatch):
    own_store(tmp_path, monkeypatch)
    version = register(tmp_path, "longdoc-cls")
    model = mlflow.pyfunc.load_model("models:/longdoc-cls@champion")
    sig = model.metadata.signature
    assert sig.inputs.input_names() == ["text"]
    assert sig.outputs.input_names() == ["label", "probabilities"]
    assert model.metadata.metadata["longdoc_kind"] == "classification"
    out = model.predict(pd.DataFrame({"text": TEXTS}), params={"max_len": 32})
    assert list(out.columns) == ["label", "probabilities"] and len(out) == 3
    # the same predictions as the engine on the checkpoint it was logged from
    engine = InferenceEngine.from_checkpoint(tmp_path / "ckpt-longdoc-cls-0", max_len=32)
    for (_, row), ref in zip(out.iterrows(), engine.predict_texts(TEXTS), strict=True):
        assert row["label"] == ref["label"]
        assert (
            max(abs(a - b) for a, b in zip(row["probabilities"], ref["probabilities"], strict=True))
            < 1e-5
        )
    # requirements are pinned to this environment's versions
    local = Path(mlflow.artifacts.download_artifacts(f"models:/longdoc-cls/{version}"))
    reqs = (local / "requirements.txt").read_text().split()
    assert set(serving_requirements()) <= set(reqs)
    assert all("==" in r for r in serving_requirements())


def test_qa_pyfunc_answers_from_the_text(tmp_path, monkeypatch):
    own_store(tmp_path, monkeypatch)
    register(tmp_path, "longdoc-qa", kind="qa")
    model = mlflow.pyfunc.load_model("models:/longdoc-qa@champion")
    assert model.metadata.signature.inputs.input_names() == ["text", "question"]
    frame = pd.DataFrame({"text": TEXTS, "question": ["what?", "which plot?", "where?"]})
    out = model.predict(frame)
    assert list(out.columns) == ["answer", "score"]
    for answer, score, text in zip(out["answer"], out["score"], TEXTS, strict=True):
        assert answer and answer in text and 0 < score <= 1
    with pytest.raises(Exception, match="question"):
        model.predict(pd.DataFrame({"text": TEXTS}))


def test_unservable_checkpoint_is_refused_clearly(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    cfg = ckpt / "config.json"
    masked_lm = cfg.read_text().replace(
        "LongformerForSequenceClassification", "LongformerForMaskedLM"
    )
    cfg.write_text(masked_lm)
    with pytest.raises(ValueError, match=r"config.json: architectures \['LongformerForMaskedLM'\]"):
        checkpoint_kind(ckpt)
