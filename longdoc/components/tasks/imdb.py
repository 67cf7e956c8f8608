"""IMDB (Maas et al. 2011) as distributed in aclImdb_v1.tar.gz.

Layout: `aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt`, one review per file, paragraphs
separated by `<br />`. Split "train" reads `train/`, split "dev" reads `test/` (IMDB has no
separate dev set; the test set is what papers report). `unsup/` (unlabelled) is not read.

Example ids are `<folder>/<label>/<id>` (e.g. `test/pos/12`): review ids repeat between the pos
and neg folders, so the folder is part of the identity. Predictions: `{id: "pos" | "neg"}`.
"""

from __future__ import annotations

import re
from pathlib import Path

from longdoc.components.core.io import InputError, require_path
from longdoc.components.tasks import ClassificationExample, LoadResult, Skipped, register_module
from longdoc.components.tasks.official import (
    accuracy,
    check_str_map,
    classification_gold,
    read_predictions,
    write_json_predictions,
)

NAME = "imdb"
PRIMARY_METRIC = "accuracy"
# What `longdoc evaluate` takes (shown in its --help):
GOLD_PATH = "the aclImdb directory (its test/ split) or one split directory with pos/ neg/"
PREDICTIONS_FORMAT = 'JSON {"test/pos/12": "pos"|"neg", ...}'

LABELS = ("neg", "pos")
FOLDERS = {"train": "train", "dev": "test"}
RATINGS = {"neg": range(1, 5), "pos": range(7, 11)}  # aclImdb has no 5s or 6s
_FILE_NAME = re.compile(r"^(\d+)_(\d+)\.txt$")


def _split_dir(root: Path, split: str) -> Path:
    if split not in FOLDERS:
        raise InputError(f"IMDB split must be one of {', '.join(FOLDERS)}, got {split!r}")
    return require_path(Path(root) / FOLDERS[split], f"IMDB {split} split ({FOLDERS[split]}/)")


def load(root: Path | str, split: str) -> LoadResult:
    """Every review under `<root>/<folder>/{neg,pos}`; a file with a bad name, a rating that
    contradicts its folder (pos is 7-10, neg 1-4), undecodable bytes or no text is skipped and
    reported with its path."""
    return _load_dir(_split_dir(Path(root), split))


def _load_dir(split_dir: Path) -> LoadResult:
    result = LoadResult()
    found: list[tuple[int, int, ClassificationExample]] = []
    for label, name in enumerate(LABELS):
        folder = split_dir / name
        if not folder.is_dir():
            raise InputError(f"{split_dir}: no {name}/ folder (expected the aclImdb layout)")
        for index, path in enumerate(sorted(folder.glob("*.txt"))):
            m = _FILE_NAME.match(path.name)
            reason = None
            if not m:
                reason = "expected an IMDB file name <id>_<rating>.txt"
            elif int(m.group(2)) not in RATINGS[name]:
                reason = f"rating {m.group(2)} contradicts the '{name}' folder"
            else:
                try:
                    text = path.read_text(encoding="utf-8").replace("<br />", "\n").strip()
                except UnicodeDecodeError as exc:
                    text, reason = "", f"not UTF-8 text ({exc.reason})"
                if not reason and not text:
                    reason = "empty review"
            if reason:
                result.skipped.append(Skipped(str(path), index, reason))
                continue
            ex = ClassificationExample(f"{split_dir.name}/{name}/{m.group(1)}", text, label)
            found.append((int(m.group(1)), label, ex))
    if not found:
        raise InputError(f"{split_dir}: no usable reviews under pos/ or neg/")
    # interleaved by review id (neg 0, pos 0, neg 1, ...) rather than all neg then all pos, so
    # the first N examples (a max_train_samples cap) hold both classes
    result.examples = [ex for *_, ex in sorted(found, key=lambda t: t[:2])]
    return result


def load_gold(path: Path | str) -> LoadResult:
    """`path` is the aclImdb root (scores against `test/`) or one split folder (with pos/, neg/)."""
    path = require_path(path, "IMDB gold directory")
    if (path / "pos").is_dir() and (path / "neg").is_dir():
        return _load_dir(path)
    return load(path, "dev")


def load_predictions(path: Path | str) -> dict[str, str]:
    return check_str_map(read_predictions(path), str(path), LABELS)


def write_predictions(path: Path | str, predictions: dict[str, str]) -> Path:
    return write_json_predictions(path, check_str_map(predictions, "IMDB predictions", LABELS))


def evaluate(gold: list[ClassificationExample], predictions: dict[str, str]) -> dict:
    """Accuracy over every gold review (a missing prediction counts as wrong)."""
    check_str_map(predictions, "IMDB predictions", LABELS)
    return accuracy(classification_gold(gold, LABELS), predictions)


TASK = register_module(
    __name__,
    adapter="classification",
    labels=LABELS,
    data_dir="aclImdb",
    epochs=4,  # params.yaml: the demo model leaves the 0.69 plateau in epoch 2-4, or never
    sample="longdoc.components.synthetic.imdb_sample:write_imdb",
)
