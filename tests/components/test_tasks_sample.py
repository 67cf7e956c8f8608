"""The loaders read what `longdoc sample` writes (a tiny sample): every record loads, the splits
have the sizes the sample was asked for, and gold-perfect predictions written in the official
formats score perfectly through `evaluate_file`, with the gold path a user would give."""

from pathlib import Path

import pytest

from longdoc.components.core.config import SampleParams
from longdoc.components.inference.evaluate import evaluate_file
from longdoc.components.synthetic.generator import write_sample
from longdoc.components.tasks import BUILTIN, get_task, triviaqa

TRAIN, DEV = 6, 3
ROOTS = {
    "wikihop": "qangaroo_v1.1/wikihop",
    "triviaqa": "triviaqa",
    "hotpotqa": "hotpotqa",
    "imdb": "aclImdb",
    "hyperpartisan": "hyperpartisan",
    "summarization": "arxiv",
}
GOLD = {  # as a user points `longdoc evaluate --gold` at the distributed data
    "wikihop": "qangaroo_v1.1/wikihop/dev.json",
    "triviaqa": "triviaqa/qa/wikipedia-dev.json",
    "hotpotqa": "hotpotqa/hotpot_dev_distractor_v1.json",
    "imdb": "aclImdb",
    "hyperpartisan": "hyperpartisan",
    "summarization": "arxiv/val.txt",
}
PERFECT = {"triviaqa": 100.0, "summarization": 100.0}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    params = SampleParams(
        out=out, corpus_docs=1, min_words=40, max_words=50, imdb_train=4, imdb_test=4,
        task_train=TRAIN, task_dev=DEV, score_docs=1,
    )  # fmt: skip
    write_sample(params)
    return out


def _perfect(task: str, examples: list) -> dict:
    if task == "wikihop":
        return {e.id: e.candidates[e.answer] for e in examples}
    if task == "triviaqa":
        return {e.id: e.answers[-1] for e in examples}  # the last alias, not the Value
    if task == "hotpotqa":
        return {
            "answer": {e.id: e.answer for e in examples},
            "sp": {e.id: [list(f) for f in e.supporting_facts] for e in examples},
        }
    if task == "summarization":
        return {e.id: e.summary for e in examples}
    mod = get_task(task)
    return {e.id: mod.labels[e.label] for e in examples}


@pytest.mark.parametrize("task", BUILTIN)
def test_sample_loads_and_scores(sample, task, tmp_path):
    mod = get_task(task)
    train, dev = mod.load(sample / ROOTS[task], "train"), mod.load(sample / ROOTS[task], "dev")
    sizes = (4, 4) if task == "imdb" else (TRAIN, DEV)
    assert (len(train.examples), len(dev.examples)) == sizes
    assert train.skipped == dev.skipped == []
    assert not {e.id for e in train.examples} & {e.id for e in dev.examples}
    preds = tmp_path / "preds.json"
    mod.write_predictions(preds, _perfect(task, dev.examples))
    m = evaluate_file(task, sample / GOLD[task], preds)
    assert m[mod.primary_metric] == PERFECT.get(task, 1.0)
    assert m["gold_skipped"] == 0


def test_sample_hyperpartisan_dev_is_the_sample_dev_articles(sample):
    dev = get_task("hyperpartisan").load(sample / "hyperpartisan", "dev")
    assert [e.id for e in dev.examples] == [f"{i:07d}" for i in range(TRAIN, TRAIN + DEV)]


def test_sample_triviaqa_normalized_aliases_agree(sample):
    for ex in triviaqa.load(sample / "triviaqa", "train").examples:
        assert ex.normalized == tuple(triviaqa.normalize_answer(a) for a in ex.answers)
        assert any(a in d.text for a in ex.answers for d in ex.documents)
