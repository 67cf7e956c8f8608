"""Helpers the task modules share: reading the distributed JSON files with clear errors,
validating prediction files, classification metrics, and per-record error capture.

Why a shared module: every task needs the same "one bad record is reported and skipped, a bad
file is one clear InputError" behaviour, and the same strict checks on prediction files, so a
user scoring another system's output gets the same kind of message whatever the task.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from longdoc.components.core.io import InputError, atomic_write_json, require_path
from longdoc.components.tasks import ClassificationExample, Skipped


class RecordError(ValueError):
    """A malformed record: caught by the loader, which reports and skips it."""


def read_json(path: Path | str, what: str) -> Any:
    """A whole distributed JSON file; a missing or unparseable file is one clear InputError
    (a file that is not JSON has no records to salvage)."""
    path = require_path(path, what)
    if not path.is_file():
        raise InputError(f"{what} is not a file: {path}")
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a BOM from a Windows editor is fine
            return json.load(f)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: {what} is not UTF-8 text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: {what} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc


def records(
    items: Iterable[Any],
    file: Path | str,
    parse: Callable[[int, Any], Any],
    skipped: list[Skipped],
    indexes: Iterable[int] | None = None,
) -> list[Any]:
    """Apply `parse(index, raw)` to each record; a record that raises RecordError, KeyError,
    TypeError or ValueError is reported as Skipped(file, index, reason) and left out. `indexes`:
    the records' positions in the file when `items` is a selection of them (default 0, 1, ...)."""
    out = []
    for i, raw in zip(itertools.count() if indexes is None else indexes, items, strict=False):
        try:
            out.append(parse(i, raw))
        except RecordError as exc:
            skipped.append(Skipped(str(file), i, str(exc)))
        except KeyError as exc:
            skipped.append(Skipped(str(file), i, f"missing field {exc}"))
        except (TypeError, ValueError, AttributeError) as exc:
            skipped.append(Skipped(str(file), i, f"malformed record: {exc}"))
    return out


def field(record: Any, key: str, kind: type | tuple[type, ...], what: str = "") -> Any:
    """`record[key]`, required to be of `kind`; a RecordError naming the field otherwise."""
    if not isinstance(record, Mapping):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise RecordError(f"missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in _kinds(kind):
        names = "/".join(k.__name__ for k in _kinds(kind))
        raise RecordError(f"field {key!r}{what} must be {names}, got {type(value).__name__}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def str_list(record: Any, key: str) -> list[str]:
    value = field(record, key, list)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise RecordError(f"field {key!r}[{i}] must be a string, got {type(item).__name__}")
    return value


# --- prediction files ---------------------------------------------------------------------------


def read_predictions(path: Path | str) -> Any:
    return read_json(path, "predictions file")


def check_str_map(obj: Any, where: str, values: Sequence[str] | None = None) -> dict[str, str]:
    """`{id: string}`; with `values`, each string must be one of them."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object {{id: answer}}, got {_json_type(obj)}")
    for key, value in obj.items():
        if not isinstance(value, str):
            raise InputError(
                f"{where}: the prediction for {key!r} must be a string, got {_json_type(value)}"
            )
        if values is not None and value not in values:
            raise InputError(
                f"{where}: the prediction for {key!r} is {value!r}; expected one of "
                + ", ".join(repr(v) for v in values)
            )
    return obj


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else f"a {type(value).__name__}"
    )


def write_json_predictions(path: Path | str, predictions: dict) -> Path:
    """Atomic JSON (a half-written predictions file must never look complete)."""
    path = Path(path)
    atomic_write_json(path, predictions)
    return path


# --- metrics ------------------------------------------------------------------------------------


def accuracy(gold: Mapping[str, str], predictions: Mapping[str, str]) -> dict[str, float | int]:
    """Fraction of gold ids whose prediction equals the gold answer. The denominator is every
    gold id: a missing prediction counts as wrong (and is counted in `missing`); predictions for
    ids not in the gold set are ignored (counted in `extra`)."""
    n = len(gold)
    correct = sum(predictions.get(k) == v for k, v in gold.items())
    return {
        "accuracy": correct / n if n else 0.0,
        "correct": correct,
        "n": n,
        "missing": sum(k not in predictions for k in gold),
        "extra": sum(k not in gold for k in predictions),
    }


def binary_metrics(
    gold: Mapping[str, str], predictions: Mapping[str, str], positive: str
) -> dict[str, float | int]:
    """Accuracy plus precision, recall and F1 of the `positive` class, as the SemEval-2019 Task 4
    evaluator (semeval-pan-2019-evaluator.py) counts them: over the gold items that have a
    prediction. A gold item without one is left out of every count (the evaluator only warns
    "Missing N predictions"; we report it as `missing`). Zero denominators give 0.0."""
    tp = fp = tn = fn = 0
    for key, label in gold.items():
        if key not in predictions:
            continue
        hit = predictions[key] == positive
        if label == positive:
            tp, fn = tp + hit, fn + (not hit)
        else:
            fp, tn = fp + hit, tn + (not hit)
    scored = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / scored if scored else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_positives": tp,
        "false_positives": fp,
        "true_negatives": tn,
        "false_negatives": fn,
        "n": len(gold),
        "missing": len(gold) - scored,
        "extra": sum(k not in gold for k in predictions),
    }


def classification_gold(
    examples: Iterable[ClassificationExample], labels: Sequence[str]
) -> dict[str, str]:
    """{id: label name} for labelled examples (label indexes into the task's LABELS)."""
    gold = {}
    for ex in examples:
        if ex.label is None:
            raise InputError(f"gold example {ex.id!r} has no label")
        gold[ex.id] = labels[ex.label]
    return gold
