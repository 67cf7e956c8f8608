"""The registered pyfunc model: loads with `mlflow.pyfunc.load_model(models:/...@champion)`,
carries its signature and pinned requirements, and predicts for both served kinds
(classification: label + probabilities; QA: answer + score)."""

from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from longdoc.components.serving import (
    Encoded,
    InferenceEngine,
    _best_span,
    checkpoint_kind,
    serving_requirements,
)
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


def test_qa_answer_is_whole_words_within_the_context():
    """Decoding as fine-tuning does: a span may not start or end inside a word, nor leave the
    context; here the model prefers the sub-word piece "igi" of "Luigi" and the question."""
    text = "Luigi went home"
    # tokens: <s> who </s> Lu igi went home </s>
    offsets = [(0, 0), (0, 3), (0, 0), (0, 2), (2, 5), (5, 10), (10, 15), (0, 0)]
    context = [False, False, False, True, True, True, True, False]
    doc = Encoded(
        input_ids=list(range(8)), truncated=False, offsets=offsets, context=context, text=text
    )
    start = torch.tensor([0.0, 9.0, 0.0, 2.0, 5.0, 0.0, 0.0, 0.0])
    end = torch.tensor([0.0, 9.0, 0.0, 0.0, 5.0, 1.0, 0.0, 0.0])
    out = _best_span(doc, start, end)
    assert out["answer"] == "Luigi"
    assert 0.0 < out["score"] <= 1.0
