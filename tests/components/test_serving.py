"""The registered pyfunc model: loads with `mlflow.pyfunc.load_model(models:/...@champion)`,
carries its signature and pinned requirements, and predicts for both served kinds
(classification: label + probabilities; QA: answer + score; both: tokens + truncated). It
refuses bad rows and params with one readable message per problem, and calls the same documents
empty as `longdoc score`."""

import json
import re
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.exceptions import MlflowException

from longdoc.components.core.config import ScoreParams
from longdoc.components.data.ingest import normalize
from longdoc.components.inference.serving import (
    Encoded,
    InferenceEngine,
    _best_answer,
    checkpoint_kind,
    is_empty_document,
    serving_requirements,
)
from tests.components.test_score import TEXTS, make_checkpoint, own_store, register


def test_classifier_pyfunc_round_trip(tmp_path, monkeypatch):
    own_store(tmp_path, monkeypatch)
    version = register(tmp_path, "longdoc-cls")
    model = mlflow.pyfunc.load_model("models:/longdoc-cls@champion")
    sig = model.metadata.signature
    assert sig.inputs.input_names() == ["text"]
    assert sig.outputs.input_names() == ["label", "probabilities", "tokens", "truncated", "windows"]
    assert model.metadata.metadata["longdoc_kind"] == "classification"
    assert model.metadata.saved_input_example_info is not None  # logged with an example
    out = model.predict(pd.DataFrame({"text": TEXTS}), params={"max_len": 32})
    assert list(out.columns) == ["label", "probabilities", "tokens", "truncated", "windows"]
    assert len(out) == 3
    # the same predictions as the engine on the checkpoint it was logged from
    engine = InferenceEngine.from_checkpoint(tmp_path / "ckpt-longdoc-cls-0", max_len=32)
    for (_, row), ref in zip(out.iterrows(), engine.predict_texts(TEXTS), strict=True):
        assert row["label"] == ref["label"]
        assert (
            max(abs(a - b) for a, b in zip(row["probabilities"], ref["probabilities"], strict=True))
            < 1e-5
        )
    # tokens read and truncation, as batch scoring reports them
    assert list(out["tokens"]) == [e.tokens for e in engine.encode(TEXTS)]
    assert not out["truncated"].any() and (out["windows"] == 1).all()
    long = model.predict(pd.DataFrame({"text": [" ".join(TEXTS * 20)]}), params={"max_len": 16})
    assert long["truncated"][0] and long["tokens"][0] == 16
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
    assert list(out.columns) == ["answer", "score", "tokens", "truncated", "windows"]
    for answer, score, text in zip(out["answer"], out["score"], TEXTS, strict=True):
        assert answer and answer in text and 0 < score <= 1
    assert (out["tokens"] > 0).all() and not out["truncated"].any()
    with pytest.raises(Exception, match="question"):
        model.predict(pd.DataFrame({"text": TEXTS}))
    # bad questions are refused row by row, as bad texts are
    frame = pd.DataFrame({"text": TEXTS, "question": ["what?", None, "word " * 40]})
    with pytest.raises(MlflowException) as refused:
        model.predict(frame, params={"max_len": 32})
    message = refused.value.message
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "row 0" not in message
    assert "row 1: 'question' is null" in message
    assert re.search(r"row 2: the question is \d+ tokens, .* max_len=32 tokens", message)


def _refusal(model, frame: pd.DataFrame, params: dict | None = None) -> str:
    with pytest.raises(MlflowException) as refused:
        model.predict(frame, params=params)
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    assert refused.value.get_http_status_code() == 400
    assert "Traceback" not in refused.value.serialize_as_json()
    return refused.value.message


def test_bad_rows_and_params_are_refused_one_message_each(tmp_path, monkeypatch):
    own_store(tmp_path, monkeypatch)
    register(tmp_path, "longdoc-cls")
    model = mlflow.pyfunc.load_model("models:/longdoc-cls@champion")
    rows = [TEXTS[0], None, 12345, "", " \n\t\x00\ufeff ", TEXTS[1], float("nan")]
    message = _refusal(model, pd.DataFrame({"text": rows}, dtype=object))
    lines = message.splitlines()
    assert lines[0] == "5 of 7 rows cannot be scored:"
    assert lines[1:] == [
        "  row 1: 'text' is null",
        "  row 2: 'text' must be a string, not int (12345)",
        "  row 3: 'text' is empty (nothing but whitespace or control characters)",
        "  row 4: 'text' is empty (nothing but whitespace or control characters)",
        "  row 6: 'text' is null",
    ]
    assert "empty" in _refusal(model, pd.DataFrame({"text": pd.Series([], dtype=object)}))
    message = _refusal(model, pd.DataFrame({"text": TEXTS}), {"max_len": -5, "batch_tokens": 0})
    assert "param max_len=-5: must be at least 8" in message
    assert "param batch_tokens=0: must be at least 1" in message
    # a max_len past the model's positions reads all of them, as the signature's default does
    out = model.predict(pd.DataFrame({"text": TEXTS}), params={"max_len": 10**9})
    assert len(out) == 3


def test_serving_and_score_call_the_same_documents_empty(tmp_path, monkeypatch):
    """One rule: a document with nothing readable left after ingest's normalisation is an error
    record in `longdoc score` and a refused row in serving; anything else is scored by both."""
    tp = own_store(tmp_path, monkeypatch)
    register(tmp_path, "longdoc-cls")
    texts = ["   ", "\t\n\r\x0b", "\x00\x01\ufeff", "\u00a0\u2028\u3000", ".", "\x00a"]
    assert [is_empty_document(t) for t in texts] == [not normalize(t) for t in texts]
    assert is_empty_document("\n" * 10_000) and not is_empty_document(" " * 10_000 + "x")
    model = mlflow.pyfunc.load_model("models:/longdoc-cls@champion")
    message = _refusal(model, pd.DataFrame({"text": texts}))
    refused = {i for i in range(len(texts)) if f"row {i}:" in message}
    assert refused == {i for i, t in enumerate(texts) if is_empty_document(t)} == {0, 1, 2, 3}

    from longdoc.components.inference.score import score

    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    params = ScoreParams(
        inputs=[src], model_uri="models:/longdoc-cls@champion", out=tmp_path / "p", max_len=32
    )
    manifest = score(params, tp)
    errors = [json.loads(line) for line in (tmp_path / "p/errors.jsonl").read_text().splitlines()]
    assert {int(e["member"].rsplit(":", 1)[1]) - 1 for e in errors} == refused
    rows = pq.read_table(tmp_path / "p/predictions.parquet").to_pylist()
    assert len(rows) == manifest["counts"]["scored"] == len(texts) - len(refused)


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
    from longdoc.components.training.adapters import Window

    text = "Luigi went home"
    # tokens: <s> who </s> Lu igi went home </s>; context = positions 3..6
    offsets = [(0, 0, 2), (0, 2, 5), (0, 5, 10), (0, 10, 15)]
    window = Window(
        ids=list(range(8)),
        global_positions=[0, 1],
        context=(3, 7),
        offsets=offsets,
        word_start=[True, False, True, True],
        word_end=[False, True, True, True],
    )
    doc = Encoded("0", [window], segments=[text])
    start = torch.tensor([0.0, 9.0, 0.0, 2.0, 5.0, 0.0, 0.0, 0.0])
    end = torch.tensor([0.0, 9.0, 0.0, 0.0, 5.0, 1.0, 0.0, 0.0])
    out = _best_answer(doc, [(start, end)])
    assert out["answer"] == "Luigi"
    assert 0.0 < out["score"] <= 1.0
