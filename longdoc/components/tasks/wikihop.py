"""WikiHop (QAngaroo v1.1, Welbl et al. 2018) as distributed in qangaroo_v1.1.zip.

Files: `qangaroo_v1.1/wikihop/{train,dev}.json`, each a JSON array of
`{"id", "query", "answer", "candidates": [...], "supports": [...]}` (the dataset is lowercased;
`annotations` in the dev file are ignored). The root is the `qangaroo_v1.1/wikihop` directory.

Metric: accuracy, the prediction string compared exactly with the gold answer string; the
denominator is every gold question (a missing prediction is wrong). Predictions:
`{id: candidate}`.
"""

from __future__ import annotations

from pathlib import Path

from longdoc.components.core.io import InputError, require_path
from longdoc.components.tasks import ChoiceExample, LoadResult, register_module
from longdoc.components.tasks.official import (
    RecordError,
    accuracy,
    check_str_map,
    field,
    read_json,
    read_predictions,
    records,
    str_list,
    write_json_predictions,
)

NAME = "wikihop"
PRIMARY_METRIC = "accuracy"
# What `longdoc evaluate` takes (shown in its --help):
GOLD_PATH = "qangaroo_v1.1/wikihop/dev.json, or that directory"
PREDICTIONS_FORMAT = 'JSON {id: "chosen candidate"}'

FILES = {"train": "train.json", "dev": "dev.json"}


def _parse(index: int, raw: object) -> ChoiceExample:
    ex_id = field(raw, "id", str)
    query = field(raw, "query", str)
    candidates = str_list(raw, "candidates")
    supports = str_list(raw, "supports")
    if not candidates:
        raise RecordError(f"{ex_id}: no candidates")
    answer = None
    if "answer" in raw:  # the test set has none
        gold = field(raw, "answer", str)
        if gold not in candidates:
            raise RecordError(f"{ex_id}: answer {gold!r} is not among the candidates")
        answer = candidates.index(gold)
    return ChoiceExample(ex_id, query, tuple(candidates), tuple(supports), answer)


def _load_file(path: Path) -> LoadResult:
    data = read_json(path, "WikiHop file")
    result = LoadResult()
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON array of questions, got {type(data).__name__}")
    result.examples = records(data, path, _parse, result.skipped)
    return result


def load(root: Path | str, split: str) -> LoadResult:
    if split not in FILES:
        raise InputError(f"WikiHop split must be one of {', '.join(FILES)}, got {split!r}")
    return _load_file(require_path(Path(root) / FILES[split], f"WikiHop {split} file"))


def load_gold(path: Path | str) -> LoadResult:
    """`path` is the dev file (`.../wikihop/dev.json`) or the `qangaroo_v1.1/wikihop` root."""
    path = require_path(path, "WikiHop gold")
    return load(path, "dev") if path.is_dir() else _load_file(path)


def load_predictions(path: Path | str) -> dict[str, str]:
    return check_str_map(read_predictions(path), str(path))


def write_predictions(path: Path | str, predictions: dict[str, str]) -> Path:
    return write_json_predictions(path, check_str_map(predictions, "WikiHop predictions"))


def evaluate(gold: list[ChoiceExample], predictions: dict[str, str]) -> dict:
    check_str_map(predictions, "WikiHop predictions")
    answers = {}
    for ex in gold:
        if ex.answer is None:
            raise InputError(f"gold question {ex.id!r} has no answer")
        answers[ex.id] = ex.candidates[ex.answer]
    return accuracy(answers, predictions)


TASK = register_module(
    __name__,
    adapter="choice",
    data_dir="qangaroo_v1.1/wikihop",
    epochs=6,
    sample="longdoc.components.synthetic.wikihop_sample:write_wikihop",
)
