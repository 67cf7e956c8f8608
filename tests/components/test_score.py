"""Scoring reads any archive ingest reads, loads the registered champion through MLflow, puts
every unreadable member in errors.jsonl with its reason, batches by a token budget without
changing any prediction, answers questions with QA models, and resumes after kill -9 scoring
each document exactly once."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest

from longdoc.components.core import tracking
from longdoc.components.core.config import ScoreParams, TrackingParams
from longdoc.components.inference.serving import (
    CLASSIFICATION,
    InferenceEngine,
    log_longdoc_model,
    token_budget_batches,
)
from longdoc.components.modeling.model import (
    LongformerForQuestionAnswering,
    LongformerForSequenceClassification,
)
from tests.components.tiny import tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["the film was brilliant and long", "a dreadful tedious plot", "quiet rain on the hill"]


def make_checkpoint(path: Path, kind: str = "classification", seed: int = 0) -> Path:
    """A tiny random-init checkpoint (model + tokenizer) of `kind` at `path`."""
    if kind == "classification":
        labels = {"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
        cls = LongformerForSequenceClassification
        tiny_checkpoint(path, TEXTS, cls, seed=seed, num_labels=2, **labels)
    else:
        tiny_checkpoint(path, TEXTS, LongformerForQuestionAnswering, seed=seed)
    return path


def register(tmp_path: Path, name: str, kind: str = "classification", seed: int = 0) -> str:
    """Log + register a tiny model as `name`, make it champion; returns its version."""
    ckpt = make_checkpoint(tmp_path / f"ckpt-{name}-{seed}", kind, seed)
    with mlflow.start_run():
        info = log_longdoc_model(ckpt, name)
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    return version


def own_store(tmp_path: Path, monkeypatch) -> TrackingParams:
    """A fresh MLflow store in tmp_path. MLflow's set_tracking_uri also exports
    MLFLOW_TRACKING_URI (which wins over params), so pin it here; monkeypatch restores it."""
    tracking_params = TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_params.uri)
    tracking.setup(tracking_params)
    return tracking_params


@pytest.fixture
def champion(tmp_path, monkeypatch):
    tracking_params = own_store(tmp_path, monkeypatch)
    register(tmp_path, "longdoc-test")
    return tracking_params


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _errors(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]


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
    records = tmp_path / "more.jsonl"
    records.write_text(
        json.dumps({"text": " ".join(TEXTS * 40)}) + "\n" + "{not json\n" + json.dumps({"x": 1})
    )
    params = ScoreParams(
        inputs=[src, records],
        model_uri="models:/longdoc-test@champion",
        out=tmp_path / "pred",
        chunk_docs=2,
        batch_tokens=64,
        max_len=64,
    )
    from longdoc.components.inference.score import score

    manifest = score(params, champion)
    rows = pq.read_table(tmp_path / "pred/predictions.parquet").to_pylist()
    errors = _errors(tmp_path / "pred")
    assert sorted(r["member"] for r in rows) == ["a.txt", "b.html", "c.txt", "more.jsonl:1"]
    assert sorted(e["member"] for e in errors) == [
        "../escape.txt",
        "bin.txt",
        "blank.txt",
        "more.jsonl:2",
        "more.jsonl:3",
    ]
    assert all(e["reason"] and e["source"] for e in errors)
    assert manifest["counts"] == {"inputs": 9, "scored": 4, "errors": 5}
    assert manifest["per_source"][str(src)] == {"scored": 3, "errors": 3}
    assert manifest["model_version"] == "1"
    assert sum(manifest["labels"].values()) == 4
    for r in rows:
        assert r["label"] in {"neg", "pos"} and r["model_version"] == "1"
        assert r["model_name"] == "longdoc-test" and r["scored_at"] is not None
        assert abs(sum(r["probabilities"]) - 1) < 1e-5
        assert len(r["doc_id"]) == 64
    # a classifier's table carries no QA columns
    assert pq.read_schema(next((tmp_path / "pred/predictions.parquet").iterdir())).names == [
        "doc_id",
        "source",
        "member",
        "tokens",
        "truncated",
        "windows",
        "label",
        "probabilities",
        "model_name",
        "model_version",
        "scored_at",
    ]
    # one chunk in memory at a time: every part holds at most chunk_docs documents
    parts = sorted((tmp_path / "pred/predictions.parquet").glob("part-*.parquet"))
    assert [p.name for p in parts] == manifest["parts"] and len(parts) == 2
    assert all(pq.read_metadata(p).num_rows <= 2 for p in parts)
    long_doc = next(r for r in rows if r["member"] == "more.jsonl:1")
    assert long_doc["truncated"] and long_doc["tokens"] == 64
    assert not any(r["truncated"] for r in rows if r is not long_doc)

    # The same inputs, model version and parameters again: nothing is rescored.
    parts = sorted(p.stat().st_mtime_ns for p in (tmp_path / "pred/predictions.parquet").iterdir())
    again = score(params, champion)
    assert again["counts"] == manifest["counts"] and again["runs"] == 1
    assert parts == sorted(
        p.stat().st_mtime_ns for p in (tmp_path / "pred/predictions.parquet").iterdir()
    )

    # A new champion makes the old predictions stale: everything is scored again with it.
    register(tmp_path, "longdoc-test", seed=1)
    fresh = score(params, champion)
    assert fresh["model_version"] == "2" and fresh["counts"] == manifest["counts"]
    rows = pq.read_table(tmp_path / "pred/predictions.parquet").to_pylist()
    assert len(rows) == 4 and {r["model_version"] for r in rows} == {"2"}
    assert len(_errors(tmp_path / "pred")) == 5


def test_token_budget_batches_cover_each_index_once():
    lengths = [5, 300, 17, 17, 64, 1, 900, 33, 2, 250]
    batches = token_budget_batches(lengths, batch_tokens=128)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * longest <= 128
        assert [lengths[i] for i in b] == sorted(lengths[i] for i in b)
    # sorted by length, so padding waste is what the budget forces, not the input order
    assert [lengths[i] for b in batches for i in b] == sorted(lengths)


def _max_diff(a: dict, b: dict) -> float:
    return max(abs(x - y) for x, y in zip(a["probabilities"], b["probabilities"], strict=True))


def test_batched_predictions_equal_one_at_a_time(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    engine = InferenceEngine.from_checkpoint(ckpt, max_len=48)
    assert engine.kind == CLASSIFICATION
    texts = [TEXTS[i % 3] * (1 + i % 5) for i in range(9)] + [" ".join(TEXTS * 9)]
    batched = engine.predict_texts(texts, batch_tokens=200)
    single = [engine.predict_texts([t], batch_tokens=1)[0] for t in texts]
    for a, b in zip(batched, single, strict=True):
        assert a["label"] == b["label"]
        assert _max_diff(a, b) < 1e-5
    encoded = engine.encode(texts)
    full = [len(engine.tokenizer(t)["input_ids"]) for t in texts]
    assert [e.truncated for e in encoded] == [n > 48 for n in full]
    assert any(n > 48 for n in full) and any(n <= 48 for n in full)
    assert [e.tokens for e in encoded] == [min(n, 48) for n in full]
    assert [len(e.windows) for e in encoded] == [1] * len(texts)  # a checkpoint without
    assert len(encoded[-1].windows[0].ids) == 48  # recorded window settings truncates
    # the truncated ids are what truncating at max_len gives
    ref = engine.tokenizer(texts[-1], truncation=True, max_length=48)["input_ids"]
    assert encoded[-1].windows[0].ids == list(ref)
    bf16 = InferenceEngine.from_checkpoint(ckpt, max_len=48, bf16=True).predict_texts(texts)
    for a, b in zip(bf16, single, strict=True):
        assert _max_diff(a, b) < 0.05
    # read as windows, the windows of several documents share batches without changing a
    # prediction, and nothing is truncated
    windowed = InferenceEngine.from_checkpoint(ckpt, max_len=48, windows=True, window_overlap=8)
    encoded = windowed.encode(texts)
    assert not any(e.truncated for e in encoded) and [e.tokens for e in encoded] == full
    assert len(encoded[-1].windows) > 2
    batched = windowed.predict_texts(texts, batch_tokens=200)
    single = [windowed.predict_texts([t], batch_tokens=1)[0] for t in texts]
    for a, b in zip(batched, single, strict=True):
        assert a["label"] == b["label"] and _max_diff(a, b) < 1e-5


def test_score_qa_model_with_question_field(tmp_path, monkeypatch):
    tp = own_store(tmp_path, monkeypatch)
    register(tmp_path, "longdoc-qa", kind="qa")
    src = tmp_path / "qa.jsonl"
    lines = [
        {"text": "the film was brilliant and long", "question": "what was the film?"},
        {"text": "quiet rain on the hill", "question": "where was the rain?"},
        {"text": "a dreadful tedious plot"},
    ]
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    from longdoc.components.core.io import InputError
    from longdoc.components.inference.score import score

    params = ScoreParams(
        inputs=[src], model_uri="models:/longdoc-qa@champion", out=tmp_path / "qa", max_len=64
    )
    with pytest.raises(InputError, match="question_field"):
        score(params, tp)
    manifest = score(params.model_copy(update={"question_field": "question"}), tp)
    assert manifest["counts"] == {"inputs": 3, "scored": 2, "errors": 1}
    assert manifest["model"]["kind"] == "qa"
    rows = pq.read_table(tmp_path / "qa/predictions.parquet").to_pylist()
    for r, line in zip(sorted(rows, key=lambda r: r["member"]), lines, strict=False):
        assert r["answer"] and r["answer"] in line["text"]
        assert 0 < r["score"] <= 1
        assert "label" not in r and "probabilities" not in r  # no classification columns
    assert _errors(tmp_path / "qa")[0]["member"] == "qa.jsonl:3"
    assert "question" in _errors(tmp_path / "qa")[0]["reason"]


def test_score_missing_source(tmp_path, champion):
    from longdoc.components.core.io import InputError
    from longdoc.components.inference.score import score

    params = ScoreParams(source=tmp_path / "nope.tar.gz", out=tmp_path / "pred")
    with pytest.raises(InputError, match="score input not found"):
        score(params, champion)


def test_second_score_into_a_locked_output_stops_before_loading_a_model(tmp_path, monkeypatch):
    from longdoc.components.core.io import claim_output_dir
    from longdoc.components.core.stage import OutputLocked, output_lock
    from longdoc.components.inference import score as score_mod

    def no_model(*args):  # the lock must stop the run first: loading a model takes seconds
        raise AssertionError("the model was loaded although the output is locked")

    monkeypatch.setattr(score_mod, "_load_model", no_model)
    src = tmp_path / "docs.jsonl"
    src.write_text('{"text": "a document"}\n')
    params = ScoreParams(source=src, out=tmp_path / "pred")
    claim_output_dir(params.out, "score")  # as the first run did before it locked
    with output_lock(params.out, "score"), pytest.raises(OutputLocked, match=str(os.getpid())):
        score_mod.score(params, TrackingParams(uri=f"sqlite:///{tmp_path}/m.db", experiment="t"))


# The driver scores in a child process whose input stream stops after PAUSE_AT items (the test
# then kills it with SIGKILL): a deterministic "mid-way", with two parts written and a chunk
# still in memory.
_DRIVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from longdoc.components.inference import score as score_mod
    from longdoc.components.core.config import ScoreParams, TrackingParams

    src, out, uri, marker, pause_at = sys.argv[1:6]
    real = score_mod._stream

    def paused(params, sources, *args):
        for i, item in enumerate(real(params, sources, *args)):
            if i == int(pause_at):
                Path(marker).write_text("paused")
                time.sleep(600)
            yield item

    score_mod._stream = paused
    params = ScoreParams(inputs=[src], model_uri="models:/longdoc-test@champion", out=out,
                         chunk_docs=4, max_len=32)
    score_mod.score(params, TrackingParams(uri=uri, experiment="t"))
    """
)


@pytest.mark.slow  # a child process that loads torch + MLflow, then a rerun: ~25 s
def test_resume_after_kill_scores_each_document_once(tmp_path, champion):
    src = tmp_path / "inbox.tar.gz"
    members = [(f"doc{i:02d}.txt", f"{TEXTS[i % 3]} number {i}".encode()) for i in range(14)]
    members.insert(5, ("bad.txt", b"\x00\x01binary\x00"))
    _tar(src, members)
    out, marker = tmp_path / "pred", tmp_path / "paused"
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(src), str(out), champion.uri, str(marker), "10"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the scoring child never reached the pause"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    state = json.loads((out / ".score-state.json").read_text())
    assert state["consumed"] == 9 and state["parts"] == ["part-00000.parquet", "part-00001.parquet"]
    assert not (out / "manifest.json").exists()

    from longdoc.components.inference.score import score

    params = ScoreParams(
        inputs=[src],
        model_uri="models:/longdoc-test@champion",
        out=out,
        chunk_docs=4,
        max_len=32,
    )
    manifest = score(params, champion)
    rows = pq.read_table(out / "predictions.parquet").to_pylist()
    assert Counter(r["member"] for r in rows) == Counter(m for m, _ in members if m != "bad.txt")
    assert [e["member"] for e in _errors(out)] == ["bad.txt"]
    assert manifest["counts"] == {"inputs": 15, "scored": 14, "errors": 1}
    assert manifest["runs"] == 2 and manifest["this_run"]["resumed_after_items"] == 9
    assert manifest["this_run"]["scored"] == 6


def test_champion_moves_only_to_a_better_model(tmp_path, champion):
    from longdoc.components.training.finetune import _register

    ckpt = tmp_path / "ckpt-longdoc-test-0"
    results = []
    for accuracy in (0.7, 0.6, 0.9):
        with mlflow.start_run():
            results.append(_register("longdoc-promo", ckpt, accuracy))
    assert [r["champion"] for r in results] == [True, False, True]
    assert [r["version"] for r in results] == ["1", "2", "3"]
    assert tracking.resolve_model_version("models:/longdoc-promo@champion") == "3"
    assert tracking.champion_metric("longdoc-promo", "accuracy") == 0.9


def test_a_document_the_model_chokes_on_becomes_one_error(tmp_path, champion, monkeypatch):
    """A failure inside the model call is retried document by document: the bad one is recorded
    with the reason, its chunk neighbours are still scored."""
    real_encode = InferenceEngine.encode

    def choking_encode(self, texts, questions=None, max_len=None):
        if any("poison" in t for t in texts):
            raise ValueError("tokenizer exploded")
        return real_encode(self, texts, questions, max_len)

    monkeypatch.setattr(InferenceEngine, "encode", choking_encode)
    src = tmp_path / "docs"
    src.mkdir()
    for i, text in enumerate([TEXTS[0], "poison pill", TEXTS[1], TEXTS[2]]):
        (src / f"{i}.txt").write_text(text)
    from longdoc.components.inference.score import score

    params = ScoreParams(
        inputs=[src], model_uri="models:/longdoc-test@champion", out=tmp_path / "p", max_len=32
    )
    manifest = score(params, champion)
    assert manifest["counts"] == {"inputs": 4, "scored": 3, "errors": 1}
    (err,) = _errors(tmp_path / "p")
    assert err["member"] == "1.txt" and "tokenizer exploded" in err["reason"]
    rows = pq.read_table(tmp_path / "p/predictions.parquet").to_pylist()
    assert sorted(r["member"] for r in rows) == ["0.txt", "2.txt", "3.txt"]
