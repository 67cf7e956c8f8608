"""A short fine-tune of each task whose loss goes down (tiny model, examples built here, inputs
longer than max_len so windows are used), and the whole `finetune` stage on files in the official
formats: prediction files, metrics, registration, champion promotion."""

import json
from pathlib import Path

import mlflow
import pytest

from longdoc.components.core import tracking
from longdoc.components.core.config import FinetuneParams, FinetuneTask, TrackingParams
from longdoc.components.tasks import (
    ChoiceExample,
    ClassificationExample,
    Document,
    HotpotExample,
    SpanExample,
    get_task,
)
from longdoc.components.training.adapters import Encoded, Window, adapter_for
from longdoc.components.training.finetune import (
    _register,
    finetune,
    micro_batches,
    prediction_paths,
    train_task,
)
from tests.components.tiny import tiny_checkpoint

FILL = "the cat sat on the mat near the old mill."
TEXTS = [
    FILL * 4,
    "who designed the bridge? it was designed by Ada Lovelace and Lovelace alone",
    "Kalen Dorvash was born in Tessia in 1900. Were they the same? yes no Bo Mira Tessia",
    "a brilliant superb film. a dreadful awful film. corrupt radical. balanced careful.",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    tokenizer = tiny_checkpoint(path, TEXTS, vocab_size=400, hidden_size=32, attention_window=16)
    return path, tokenizer


@pytest.fixture
def tracked(tmp_path):
    params = TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t")
    tracking.setup(params)
    return params


def _examples(task: str) -> list:
    people = ["Ada Lovelace", "Bo Mira", "Kalen Dorvash", "Tessia Mill"]
    if task in ("imdb", "hyperpartisan"):
        cues = ("dreadful awful", "brilliant superb")
        return [ClassificationExample(f"c{i}", FILL * 6 + cues[i % 2], i % 2) for i in range(4)]
    if task == "wikihop":
        cands = ("tessia", "mill", "mat")
        docs = [(FILL * 3, f"Bo Mira {c}") for c in cands]
        return [ChoiceExample(f"w{i}", "born in bo mira", cands, docs[i], i) for i in range(3)]
    if task == "triviaqa":
        return [
            SpanExample(
                f"t{i}",
                "Who designed the bridge?",
                (
                    Document("B", FILL * 4 + f" It was designed by {p}. " + FILL),
                    Document("C", FILL),
                ),
                (p, p.split()[1]),
            )
            for i, p in enumerate(people)
        ]
    return [
        HotpotExample(
            f"h{i}",
            "Who was there?" if i % 2 else "Same?",
            (("Cat", ("The cat sat.", " " + FILL * 3)), ("Mill", (f" {p} was there.", " " + FILL))),
            p if i % 2 else "yes",
            (("Mill", 0),),
            "bridge",
            "hard",
        )
        for i, p in enumerate(people)
    ]


@pytest.mark.parametrize("task", ["imdb", "hyperpartisan", "wikihop", "triviaqa", "hotpotqa"])
def test_short_finetune_loss_goes_down(task, base, tracked, tmp_path):
    path, tokenizer = base
    adapter = adapter_for(get_task(task), tokenizer)
    examples = _examples(task)
    params = FinetuneParams(  # no tasks entry: `epochs`, not the task's default, applies
        task=task, tasks={}, data=tmp_path, base=path, epochs=6, batch_size=1, lr=3e-3,
        warmup_ratio=0.0, window_overlap=8,
    )  # fmt: skip
    with mlflow.start_run():
        result = train_task(
            params, adapter, examples, examples, 64, True, None, "long", tmp_path / "p.json"
        )
    assert result["train_windows"] > len(examples)  # inputs longer than 64 tokens: windows
    losses = result["epoch_losses"]
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    # the official prediction file covers every dev example, and scoring it again gives the
    # metric train_task reported (the file is what was scored, not a side copy)
    module = get_task(task)
    predictions = module.load_predictions(tmp_path / "p.json")
    ids = predictions["answer"] if task == "hotpotqa" else predictions
    assert set(ids) == {e.id for e in examples}
    metric = module.primary_metric
    assert module.evaluate(examples, predictions)[metric] == pytest.approx(result[metric])


def _write_hotpot(root, n_train=3, n_dev=2):
    def record(i, split):
        name = f"Person {chr(65 + i)}"
        return {
            "_id": f"{split}{i}",
            "question": f"Where did {name} work?",
            "answer": "yes" if i % 2 else f"Town {chr(65 + i)}",
            "type": "bridge",
            "level": "hard",
            "supporting_facts": [[name, 0]],
            "context": [
                [name, [f"{name} worked in Town {chr(65 + i)}.", " " + FILL * 3]],
                ["Mill", ["The old mill.", " " + FILL]],
            ],
        }

    root.mkdir(parents=True)
    train = [record(i, "t") for i in range(n_train)]
    dev = [record(i, "d") for i in range(n_dev)]
    (root / "hotpot_train_v1.1.json").write_text(json.dumps(train))
    (root / "hotpot_dev_distractor_v1.json").write_text(json.dumps(dev + [{"_id": "broken"}]))


def test_finetune_stage_writes_official_predictions_and_registers(base, tracked, tmp_path):
    path, _ = base
    data = tmp_path / "hotpotqa"
    _write_hotpot(data)
    metrics = tmp_path / "metrics/finetune_hotpotqa.json"
    entry = FinetuneTask(data=data, out=tmp_path / "ckpt", metrics=metrics, epochs=1)
    params = FinetuneParams(
        task="hotpotqa", tasks={"hotpotqa": entry}, base=path, max_len=128, baseline_max_len=48
    )
    first = finetune(params, tracked)
    assert first["skipped"]["dev"] == 1  # the malformed dev record is reported, not fatal
    assert first["primary_metric"] == "joint_f1"
    long_file, base_file = prediction_paths(metrics)
    for file in (long_file, base_file):
        preds = json.loads(file.read_text())
        assert set(preds) == {"answer", "sp"} and set(preds["answer"]) == {"d0", "d1"}
    saved = json.loads(metrics.read_text())
    assert saved["long"]["max_len"] == 128 and saved["baseline"]["max_len"] == 48
    assert first["registered"]["version"] == "1" and first["registered"]["champion"]
    assert (tmp_path / "ckpt/config.json").exists()
    # the same recipe again scores the same: not better, so the champion stays
    second = finetune(params, tracked)
    assert second["registered"]["version"] == "2"
    assert not second["registered"]["champion"]
    assert tracking.resolve_model_version("models:/longdoc-hotpotqa@champion") == "1"
    files = mlflow.artifacts.download_artifacts("models:/longdoc-hotpotqa@champion")
    assert (Path(files) / "config.json").exists()  # the registered version is the checkpoint


def test_checkpoint_registration_promotes_only_a_better_model(tmp_path, tracked):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    results = []
    for f1 in (40.0, 30.0, 55.0):
        with mlflow.start_run():
            results.append(_register("longdoc-qa", ckpt, f1, "f1", servable=False))
    assert [r["champion"] for r in results] == [True, False, True]
    assert tracking.resolve_model_version("models:/longdoc-qa@champion") == "3"
    assert tracking.champion_metric("longdoc-qa", "f1") == 55.0


def test_micro_batches_pack_examples_in_order_within_the_token_budget():
    def enc(name, *lengths):
        return Encoded(name, [Window(ids=[0] * n, global_positions=[0]) for n in lengths])

    encs = [enc("a", 100), enc("b", 300), enc("c", 200, 200), enc("d", 900), enc("e", 50)]
    groups = micro_batches(encs, 600)
    # a+b: 2 rows x 300; +c would be 4 x 300; c: 2 x 200; d alone is over budget; e alone
    # (d's width 900 x 2 rows > 600)
    assert [[e.id for e in g] for g in groups] == [["a", "b"], ["c"], ["d"], ["e"]]
    assert [e.id for g in groups for e in g] == list("abcde")  # every example once, in order
    assert [[e.id for e in g] for g in micro_batches(encs, 10**6)] == [list("abcde")]
    assert all(len(g) == 1 for g in micro_batches(encs, 1))
