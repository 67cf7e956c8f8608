"""The whole pipeline through Prefect on a tiny configuration, then a rerun that skips it all."""

import json
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from longdoc.components.core.config import FinetuneParams
from longdoc.components.tasks import imdb
from tests.e2e.conftest import run

pytestmark = pytest.mark.slow


def one_epoch_tasks() -> dict:
    """Every task at its default paths, trained for one epoch (the e2e test checks wiring)."""
    tasks = FinetuneParams().tasks.items()
    return {name: {**t.model_dump(mode="json"), "epochs": 1} for name, t in tasks}


def test_pipeline_end_to_end_then_skips(tmp_path, tiny_params):
    params = yaml.safe_load(tiny_params.read_text())
    params["finetune"]["tasks"] = one_epoch_tasks()
    tiny_params.write_text(yaml.safe_dump(params))
    res = run(
        [sys.executable, "-m", "longdoc", "pipeline", "--params", str(tiny_params)], cwd=tmp_path
    )
    out = res.stdout
    assert "longdoc pipeline finished" in out
    assert "dev metric: long model" in out
    for task in ("wikihop", "triviaqa", "hotpotqa", "imdb", "hyperpartisan"):
        assert f"  {task} " in out

    corpus = json.loads((tmp_path / "data/corpus/manifest.json").read_text())["counts"]
    assert corpus["written"] > 0
    assert corpus["inputs"] == (
        corpus["written"] + corpus["duplicates"] + corpus["near_duplicates"] + corpus["quarantined"]
    )
    assert (tmp_path / "data/shards/tokenizer/tokenizer.json").exists()
    assert (tmp_path / "data/kernels").is_dir()
    assert (tmp_path / "data/checkpoints/pretrain/config.json").exists()
    assert list((tmp_path / "data/checkpoints/pretrain").glob("*.safetensors"))
    assert (tmp_path / "data/checkpoints/imdb/config.json").exists()
    metrics = json.loads((tmp_path / "data/metrics/finetune_imdb.json").read_text())
    # the reported accuracy is the fraction of the written dev predictions that match the gold
    # labels (recomputed here from the files, not trusted from the metrics)
    dev = imdb.load(tmp_path / "data/sample/aclImdb", "dev").examples
    gold = {e.id: imdb.LABELS[e.label] for e in dev}
    for name in ("long", "baseline"):
        written = imdb.load_predictions(tmp_path / metrics[name]["predictions"])
        assert set(written) == set(gold)
        correct = sum(written[k] == label for k, label in gold.items())
        assert metrics[name]["accuracy"] == pytest.approx(correct / len(gold))
    for task in ("wikihop", "triviaqa", "hotpotqa", "hyperpartisan"):
        m = json.loads((tmp_path / f"data/metrics/finetune_{task}.json").read_text())
        assert m["primary_metric"] in m["long"] and m["primary_metric"] in m["baseline"]
        assert json.loads((tmp_path / m["long"]["predictions"]).read_text())
        assert (tmp_path / f"data/checkpoints/{task}/config.json").exists()

    preds = pq.read_table(tmp_path / "data/predictions/predictions.parquet").to_pylist()
    score = json.loads((tmp_path / "data/predictions/manifest.json").read_text())
    assert len(preds) == score["counts"]["scored"] > 0
    assert score["counts"]["inputs"] == score["counts"]["scored"] + score["counts"]["errors"]
    assert {p["model_version"] for p in preds} == {"1"}
    for p in preds:
        assert p["label"] in {"pos", "neg"}
        assert abs(sum(p["probabilities"]) - 1) < 1e-4

    again = run(
        [sys.executable, "-m", "longdoc", "pipeline", "--params", str(tiny_params)], cwd=tmp_path
    )
    tasks = [f"finetune_{t}" for t in params["finetune"]["tasks"]]
    for stage in ("sample", "ingest", "tokenize", "build_kernels", "pretrain", *tasks, "score"):
        assert f"{stage} skipped" in again.stdout, again.stdout
