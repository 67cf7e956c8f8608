"""One task registry: a task defined in one module outside the package is accepted by the config,
written by `longdoc sample`, listed by the CLI and dvc.yaml, and fine-tuned end to end."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest

from longdoc.components import tasks
from longdoc.components.core import tracking
from longdoc.components.core.config import (
    ConfigError,
    FinetuneParams,
    FinetuneTask,
    Params,
    SampleParams,
    TrackingParams,
    load_params,
)
from longdoc.components.synthetic.generator import owned, write_sample
from longdoc.components.training.finetune import finetune, prediction_paths
from longdoc.flows.cli import build_parser
from longdoc.flows.freshness import pipeline_specs
from tests.components.tiny import tiny_checkpoint

TOY = '''
"""A toy task: is the document about alpha or omega? JSON lines, one file per split."""

import json
import random
from pathlib import Path

from longdoc.components.core.io import atomic_write_json, atomic_write_text
from longdoc.components.tasks import ClassificationExample, LoadResult, Skipped, Task, register

LABELS = ("alpha", "omega")


def load(root, split):
    path = Path(root) / f"{split}.jsonl"
    result = LoadResult()
    for i, line in enumerate(path.read_text().splitlines()):
        rec = json.loads(line)
        if rec.get("label") not in LABELS:
            result.skipped.append(Skipped(str(path), i, "label is not alpha or omega"))
            continue
        result.examples.append(
            ClassificationExample(rec["id"], rec["text"], LABELS.index(rec["label"]))
        )
    return result


def evaluate(gold, predictions):
    right = sum(predictions.get(e.id) == LABELS[e.label] for e in gold)
    return {"accuracy": right / len(gold), "n": len(gold)}


def write_sample(root, params, lex):
    rng = random.Random(f"{params.seed}:toy")
    counts = {}
    for split, n in (("train", params.task_train), ("dev", params.task_dev)):
        lines = []
        for i in range(n):
            label = LABELS[i % 2]
            words = [rng.choice(lex.nouns) for _ in range(40)] + [label] * 3
            rec = {"id": f"{split}-{i}", "text": " ".join(words), "label": label}
            lines.append(json.dumps(rec))
        atomic_write_text(Path(root) / f"{split}.jsonl", "\\n".join(lines) + "\\n")
        counts[split] = n
    return counts


TASK = register(
    Task(
        name="toy",
        load=load,
        evaluate=evaluate,
        load_gold=lambda path: load(path, "dev"),
        load_predictions=lambda path: json.loads(Path(path).read_text()),
        write_predictions=atomic_write_json,
        primary_metric="accuracy",
        adapter="classification",
        labels=LABELS,
        gold_path="the toy directory",
        predictions_format='JSON {id: "alpha"|"omega"}',
        data_dir="toys/toy",
        epochs=1,
        sample=write_sample,
    )
)
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy task, registered from a module in a temporary directory (undone afterwards)."""
    tasks.task_names()  # the built-in ones first
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods/longdoc_toy_task.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.delitem(sys.modules, "longdoc_toy_task", raising=False)
    importlib.import_module("longdoc_toy_task")
    yield tasks.get_task("toy")
    sys.modules.pop("longdoc_toy_task", None)


def test_toy_task_end_to_end(toy, tmp_path):
    assert tasks.task_names()[-1] == "toy" and tasks.task_names()[0] == "wikihop"
    # the default config has an entry for it, where `longdoc sample` writes its data
    entry = Params().finetune.tasks["toy"]
    assert (str(entry.data), entry.epochs) == ("data/sample/toys/toy", 1)
    assert "toys" in owned()
    # the CLI and dvc.yaml read the registry
    args = build_parser().parse_args(
        ["evaluate", "--task", "toy", "--gold", "g", "--predictions", "p"]
    )
    assert args.task == "toy"
    assert "finetune_toy" in [s.name for s in pipeline_specs(Params())]

    sample = SampleParams(
        out=tmp_path / "sample", corpus_docs=5, min_words=50, max_words=80, imdb_train=2,
        imdb_test=2, task_train=8, task_dev=4, score_docs=2,
    )  # fmt: skip
    summary = write_sample(sample)
    assert summary["counts"]["toy"] == {"train": 8, "dev": 4}
    assert (sample.out / "toys/toy/dev.jsonl").exists() and "toy" in summary["sha256"]

    texts = [line for f in ("train", "dev") for line in (sample.out / f"toys/toy/{f}.jsonl").open()]
    base = tmp_path / "base"
    tiny_checkpoint(base, texts, vocab_size=400, hidden_size=32, attention_window=16)
    metrics = tmp_path / "metrics/finetune_toy.json"
    params = load_params(
        None,
        [
            "finetune.task=toy",
            f"finetune.tasks.toy.data={sample.out / 'toys/toy'}",
            f"finetune.tasks.toy.out={tmp_path / 'ckpt'}",
            f"finetune.tasks.toy.metrics={metrics}",
            "finetune.tasks.toy.epochs=1",
            f"finetune.base={base}",
            "finetune.max_len=32",
            "finetune.baseline_max_len=16",
            "finetune.register_model=false",
        ],
    )
    assert params.finetune.task_epochs == 1
    tracking_params = TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t")
    tracking.setup(tracking_params)
    result = finetune(params.finetune, tracking_params)
    assert result["primary_metric"] == "accuracy"
    assert 0.0 <= result["long"]["accuracy"] <= 1.0 and result["long"]["n"] == 4
    assert result["long"]["train_windows"] > 8  # 43-word documents in 32-token windows
    long_file, _ = prediction_paths(metrics)
    assert set(json.loads(long_file.read_text()).values()) <= {"alpha", "omega"}
    assert json.loads(metrics.read_text())["baseline"]["accuracy"] >= 0.0


def test_unknown_task_is_a_one_line_config_error(toy, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_params(None, ["finetune.task=squad"])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("defaults + --set: finetune.task:")
    assert "unknown task 'squad'" in msg and msg.endswith("imdb, hyperpartisan, summarization, toy")
    file = tmp_path / "params.yaml"
    file.write_text("finetune:\n  tasks:\n    squad: {data: d, out: o, metrics: m.json}\n")
    with pytest.raises(ConfigError, match=r"params.yaml: finetune.tasks.squad: .*unknown task"):
        load_params(file)
    # the toy entry itself is accepted
    entry = FinetuneTask(data="d", out="o", metrics="m.json")
    assert FinetuneParams(task="toy", tasks={"toy": entry}).data.name == "d"
