"""Scoring reads any archive ingest reads, loads the registered champion through MLflow, and puts
every unreadable member in errors.jsonl with its reason; counts reconcile."""

import io
import json
import tarfile

import mlflow
import pyarrow.parquet as pq
import pytest

from components import tracking
from components.config import ModelParams, ScoreParams, TrackingParams
from components.model import LongformerForSequenceClassification, make_config
from components.serving import log_classifier
from components.tokenize import train_tokenizer

TEXTS = ["the film was brilliant and long", "a dreadful tedious plot", "quiet rain on the hill"]


@pytest.fixture
def champion(tmp_path):
    tracking_params = TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t")
    tokenizer = train_tokenizer(iter(TEXTS * 20), vocab_size=300, min_frequency=1)
    config = make_config(
        ModelParams(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            attention_window=8,
            max_position_embeddings=130,
        ),
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=2,
        id2label={0: "neg", 1: "pos"},
        label2id={"neg": 0, "pos": 1},
    )
    ckpt = tmp_path / "ckpt"
    LongformerForSequenceClassification(config).save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    tracking.setup(tracking_params)
    with mlflow.start_run():
        info = log_classifier(ckpt, "longdoc-test")
    mlflow.MlflowClient().set_registered_model_alias(
        "longdoc-test", "champion", info.registered_model_version
    )
    return tracking_params


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_score_archive_with_bad_members(tmp_path, champion):
    src = tmp_path / "inbox.tar.gz"
    _tar(
        src,
        [
            ("a.txt", TEXTS[0].encode()),
            ("b.html", f"<html><body><p>{TEXTS[1]}</p></body></html>".encode()),
            ("blank.txt", b"   \n"),
            ("bin.txt", b"\x00\x01\x02binary\x00"),
            ("../escape.txt", b"path traversal"),
            ("c.txt", TEXTS[2].encode()),
        ],
    )
    params = ScoreParams(
        source=src,
        model_uri="models:/longdoc-test@champion",
        out=tmp_path / "pred",
        batch_size=2,
        max_len=64,
    )
    from components.score import score

    manifest = score(params, champion)
    rows = pq.read_table(tmp_path / "pred/predictions.parquet").to_pylist()
    errors = [
        json.loads(line) for line in (tmp_path / "pred/errors.jsonl").read_text().splitlines()
    ]
    assert sorted(r["member"] for r in rows) == ["a.txt", "b.html", "c.txt"]
    assert sorted(e["member"] for e in errors) == ["../escape.txt", "bin.txt", "blank.txt"]
    assert all(e["reason"] for e in errors)
    assert manifest["counts"] == {"inputs": 6, "scored": 3, "errors": 3}
    assert manifest["model_version"] == "1"
    for r in rows:
        assert r["label"] in {"neg", "pos"} and r["model_version"] == "1"
        assert abs(sum(r["probabilities"]) - 1) < 1e-5


def test_score_missing_source(tmp_path, champion):
    from components.io import InputError
    from components.score import score

    params = ScoreParams(source=tmp_path / "nope.tar.gz", out=tmp_path / "pred")
    with pytest.raises(InputError, match="score source not found"):
        score(params, champion)


def test_champion_moves_only_to_a_better_model(tmp_path, champion):
    from components.finetune import _register

    ckpt = tmp_path / "ckpt"
    results = []
    for accuracy in (0.7, 0.6, 0.9):
        with mlflow.start_run():
            results.append(_register("longdoc-promo", ckpt, accuracy))
    assert [r["champion"] for r in results] == [True, False, True]
    assert [r["version"] for r in results] == ["1", "2", "3"]
    assert tracking.resolve_model_version("models:/longdoc-promo@champion") == "3"
    assert tracking.champion_metric("longdoc-promo", "accuracy") == 0.9
