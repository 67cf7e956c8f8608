"""Serving scores exactly as fine-tuning evaluates: a tiny model fine-tuned with windows (inputs
longer than max_len), registered, then `longdoc score` on its dev documents gives fine-tuning's
dev predictions (classification: labels, and probabilities of the averaged window logits;
extractive QA: the best span over all windows). And `score` normalises text with the configured
ingest settings, so a document's doc_id is its doc_id in the corpus."""

import json

import mlflow
import pyarrow.parquet as pq
import pytest
import torch

from longdoc.components.core.config import FinetuneParams, IngestParams, ScoreParams
from longdoc.components.inference.score import score
from longdoc.components.inference.serving import InferenceEngine, log_longdoc_model
from longdoc.components.tasks import ClassificationExample, Document, SpanExample, get_task
from longdoc.components.training.adapters import adapter_for
from longdoc.components.training.finetune import train_task
from longdoc.components.training.windows import window_settings
from tests.components.test_finetune import FILL, base  # noqa: F401 - the tiny base fixture
from tests.components.test_score import own_store

MAX_LEN, OVERLAP = 64, 8


def _examples(task: str) -> list:
    if task == "imdb":
        cues = ("dreadful awful", "brilliant superb")
        return [
            ClassificationExample(f"c{i}", FILL * (6 + i) + cues[i % 2] + " " + FILL, i % 2)
            for i in range(6)
        ]
    people = ["Ada Lovelace", "Bo Mira", "Kalen Dorvash", "Tessia Mill"]
    return [  # one evidence document each: what a served QA row is
        SpanExample(
            f"t{i}",
            "Who designed the bridge?",
            (Document("B", FILL * (5 + i) + f" It was designed by {p}. " + FILL * 2),),
            (p, p.split()[1]),
        )
        for i, p in enumerate(people)
    ]


@pytest.mark.parametrize("task", ["imdb", "triviaqa"])
def test_score_reproduces_finetuning_dev_predictions(task, base, tmp_path, monkeypatch):  # noqa: F811
    path, tokenizer = base
    tp = own_store(tmp_path, monkeypatch)
    adapter = adapter_for(get_task(task), tokenizer)
    examples = _examples(task)
    params = FinetuneParams(
        task=task, tasks={}, data=tmp_path, base=path, epochs=2, batch_size=1, lr=3e-3,
        warmup_ratio=0.0, window_overlap=OVERLAP,
    )  # fmt: skip
    ckpt, preds_path = tmp_path / "ckpt", tmp_path / "dev.json"
    with mlflow.start_run():
        result = train_task(
            params, adapter, examples, examples, MAX_LEN, True, ckpt, "long", preds_path
        )
    assert result["train_windows"] > len(examples)  # the dev documents are read as windows
    dev_preds = get_task(task).load_predictions(preds_path)

    # the checkpoint carries the window settings it was evaluated with
    engine = InferenceEngine.from_checkpoint(ckpt)
    assert window_settings(engine.model.config) == {
        "max_len": MAX_LEN, "window_overlap": OVERLAP, "windows": True,
    }  # fmt: skip
    assert (engine.max_len, engine.windows, engine.window_overlap) == (MAX_LEN, True, OVERLAP)

    # `longdoc score` (registered model, JSONL records in, Parquet out) on the dev documents
    with mlflow.start_run():
        version = log_longdoc_model(ckpt, f"longdoc-{task}").registered_model_version
    src = tmp_path / "dev.jsonl"
    records = []
    for ex in examples:
        if task == "imdb":
            records.append({"id": ex.id, "text": ex.text})
        else:
            records.append({"id": ex.id, "text": ex.documents[0].text, "question": ex.question})
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    sp = ScoreParams(
        inputs=[src], model_uri=f"models:/longdoc-{task}/{version}", out=tmp_path / "pred",
        question_field="question" if task == "triviaqa" else None, batch_tokens=256,
    )  # fmt: skip
    manifest = score(sp, tp)
    assert manifest["counts"]["scored"] == len(examples) and manifest["windowed"] == len(examples)
    rows = sorted(
        pq.read_table(tmp_path / "pred/predictions.parquet").to_pylist(),
        key=lambda r: int(r["member"].rsplit(":", 1)[1]),
    )
    assert all(r["windows"] > 1 and not r["truncated"] for r in rows)
    model = engine.model
    for ex, row in zip(examples, rows, strict=True):
        if task == "imdb":
            assert row["label"] == dev_preds[ex.id]
            # and the probabilities are those of fine-tuning's aggregated window logits
            with torch.inference_mode():
                enc = adapter.encode(ex, MAX_LEN, OVERLAP, None, False)
                ref = torch.softmax(adapter.logits(model, [enc])[0], -1).tolist()
            assert max(abs(a - b) for a, b in zip(row["probabilities"], ref, strict=True)) < 1e-5
        else:
            assert row["answer"] == dev_preds[ex.id]


def test_score_doc_ids_follow_the_configured_ingest(tmp_path, monkeypatch):
    """Under non-default ingest settings a scored document's doc_id is its corpus doc_id."""
    from longdoc.components.data.ingest import ingest, read_corpus
    from tests.components.test_score import register

    tp = own_store(tmp_path, monkeypatch)
    register(tmp_path, "longdoc-test")
    src = tmp_path / "docs"
    src.mkdir()
    texts = ["the film  was\n\nbrilliant\tand long", "a dreadful\n tedious &amp; plot\n"]
    for i, t in enumerate(texts):
        (src / f"d{i}.txt").write_text(t)
    settings = IngestParams(sources=[src], out=tmp_path / "corpus", whitespace="single_space")
    ingest(settings)
    corpus = {r["member"]: r["doc_id"] for r in read_corpus(tmp_path / "corpus")}
    sp = ScoreParams(inputs=[src], model_uri="models:/longdoc-test@champion", out=tmp_path / "p")
    score(sp, tp, ingest=settings)
    rows = pq.read_table(tmp_path / "p/predictions.parquet").to_pylist()
    assert {r["member"]: r["doc_id"] for r in rows} == corpus and len(corpus) == 2
    # with the default settings (paragraphs) the ids would differ: the setting matters here
    score(sp.model_copy(update={"out": tmp_path / "q"}), tp)
    rows = pq.read_table(tmp_path / "q/predictions.parquet").to_pylist()
    assert {r["member"]: r["doc_id"] for r in rows} != corpus
