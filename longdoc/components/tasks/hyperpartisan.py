"""Hyperpartisan news detection, by-article part (SemEval-2019 Task 4, Kiesel et al. 2019).

Files (the root is the directory holding them): `articles-<part>-byarticle*.xml`, an
`<articles>` element of `<article id=... title=...><p>...</p>...</article>` records, and
`ground-truth-<part>-byarticle*.xml`, `<article id=... hyperpartisan="true|false" .../>` records.
Parsed with defusedxml: a file with entity declarations or external references is refused.

Text: the title, then each paragraph (`<p>` and any other child of `<article>`) as its own
paragraph (separated by a blank line); markup nested inside a paragraph (`<a>`, `<q>`, `<i>`...)
is kept as its text, so "a <a href=...>link</a> here" reads "a link here".

Splits: "train" is the training part. "dev" is the official by-article test part
(`articles-test-byarticle*.xml` with its ground truth) when it is in the root, else the
validation part (`*-validation-byarticle*`) when present, else a deterministic split of the
training part: the last third of its article records in file order (files in name order) is dev,
the first two thirds train. (The record position decides, not the id, so the split does not move
when a record is malformed; `longdoc sample` writes its train articles first, then its dev ones.)

Metrics: accuracy, and precision/recall/F1 of the positive class hyperpartisan=true, counted as
the SemEval evaluator counts them: over the gold articles that have a prediction (a missing one
is left out of every count and reported as `missing`).

Predictions: `{article id: "true" | "false"}` (JSON booleans accepted); the SemEval run format,
one `<article id> <true|false> [confidence]` line per article, is read too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from longdoc.components.core.io import InputError, require_path
from longdoc.components.tasks import ClassificationExample, LoadResult, Skipped, register_module
from longdoc.components.tasks.official import (
    binary_metrics,
    check_str_map,
    classification_gold,
    write_json_predictions,
)

NAME = "hyperpartisan"
PRIMARY_METRIC = "f1"
# What `longdoc evaluate` takes (shown in its --help):
GOLD_PATH = "a ground-truth-*-byarticle*.xml, or the data directory (its dev split)"
PREDICTIONS_FORMAT = 'JSON {id: "true"|"false"}, or SemEval run lines "id true|false [confidence]"'

LABELS = ("false", "true")  # index 1 = hyperpartisan, the positive class
POSITIVE = "true"
DEV_FRACTION = 1 / 3  # of the training part, when no official dev part is present
# fallback for files that are not well-formed: a record runs from one "<article" to the next
# (or to the closing </articles>), so a truncated or broken record is still counted and reported
_ARTICLE_START = re.compile(rb"<article\b")
_CONTAINER_END = re.compile(rb"\s*</articles\s*>\s*$")


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _text(article: Any) -> str:
    """Title + paragraphs; nested markup flattened to its text (tails included)."""
    paras = [article.get("title") or "", article.text or ""]
    for child in article:
        paras.append("".join(child.itertext()))
        paras.append(child.tail or "")
    return "\n\n".join(" ".join(p.split()) for p in paras if p.strip())


def _parse_articles(path: Path) -> tuple[list[tuple[int, Any]], list[Skipped]]:
    """(record index, <article> element) for each article of `path`.

    The whole file is parsed with defusedxml first. If it is not well-formed (one broken or
    truncated record makes the whole document invalid XML), each `<article ...>` record is
    parsed on its own so that only the broken ones are lost, each reported by index.
    """
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import ParseError, fromstring

    data = path.read_bytes()
    try:
        root = fromstring(data)
    except DefusedXmlException as exc:
        raise InputError(f"{path}: refused by the XML guard ({type(exc).__name__}: {exc})") from exc
    except ParseError as exc:
        skipped: list[Skipped] = []
        out = []
        starts = [m.start() for m in _ARTICLE_START.finditer(data)]
        if not starts:
            raise InputError(f"{path}: not well-formed XML, no <article> records ({exc})") from exc
        ends = starts[1:] + [len(data)]
        blocks = [data[a:b] for a, b in zip(starts, ends, strict=True)]
        blocks[-1] = _CONTAINER_END.sub(b"", blocks[-1])
        for i, block in enumerate(blocks):
            try:
                out.append((i, fromstring(block)))
            except DefusedXmlException as inner:
                raise InputError(f"{path}: refused by the XML guard ({inner})") from inner
            except ParseError as inner:
                skipped.append(Skipped(str(path), i, f"malformed XML: {inner}"))
        return out, skipped
    if _local(root.tag) == "article":
        return [(0, root)], []
    return [(i, e) for i, e in enumerate(e for e in root if _local(e.tag) == "article")], []


def _labels(path: Path) -> tuple[dict[str, str], list[Skipped]]:
    labels: dict[str, str] = {}
    skipped: list[Skipped] = []
    records, bad = _parse_articles(path)
    skipped += bad
    for i, elem in records:
        aid, value = elem.get("id"), (elem.get("hyperpartisan") or "").strip().lower()
        if not aid:
            skipped.append(Skipped(str(path), i, "ground-truth record without an id"))
        elif value not in LABELS:
            skipped.append(Skipped(str(path), i, f"article {aid}: hyperpartisan={value!r}"))
        elif aid in labels:
            skipped.append(Skipped(str(path), i, f"article {aid}: labelled twice"))
        else:
            labels[aid] = value
    return labels, skipped


def _pairs(root: Path, part: str) -> list[tuple[Path, Path]]:
    """(articles file, ground-truth file) pairs for `part` (training, validation, test)."""
    pairs = []
    for articles in sorted(root.glob(f"articles-{part}-byarticle*.xml")):
        truth = root / articles.name.replace("articles-", "ground-truth-", 1)
        if not truth.is_file():
            raise InputError(f"{articles}: no matching ground-truth file {truth.name}")
        pairs.append((articles, truth))
    return pairs


def _load_part(
    pairs: list[tuple[Path, Path]],
) -> tuple[list[tuple[int, ClassificationExample]], LoadResult, int]:
    """All labelled articles of `pairs` with their record position over the files, and the
    number of article records (broken ones included)."""
    result = LoadResult()
    out: list[tuple[int, ClassificationExample]] = []
    position = 0
    seen: set[str] = set()
    for articles, truth in pairs:
        labels, bad = _labels(truth)
        result.skipped += bad
        records, bad = _parse_articles(articles)
        result.skipped += bad
        n_records = max([i + 1 for i, _ in records] + [s.index + 1 for s in bad], default=0)
        used: set[str] = set()
        for i, elem in records:
            aid = elem.get("id")
            reason = None
            if not aid:
                reason = "article without an id"
            elif aid in seen:
                reason = f"article {aid}: duplicate id"
            elif aid not in labels:
                reason = f"article {aid}: no label in {truth.name}"
            elif not (text := _text(elem)):
                reason = f"article {aid}: no text"
            if reason:
                result.skipped.append(Skipped(str(articles), i, reason))
                continue
            seen.add(aid)
            used.add(aid)
            out.append((position + i, ClassificationExample(aid, text, LABELS.index(labels[aid]))))
        for aid in sorted(labels.keys() - used):
            result.notes.append(Skipped(str(truth), -1, f"article {aid}: label without article"))
        position += n_records
    return out, result, position


def load(root: Path | str, split: str) -> LoadResult:
    """Labelled articles of `split` (see the module docstring for what "dev" is). A malformed
    record (broken XML, no id, no label, no text, a duplicate id) is skipped and reported."""
    if split not in ("train", "dev"):
        raise InputError(f"Hyperpartisan split must be train or dev, got {split!r}")
    root = require_path(root, "Hyperpartisan root")
    if not root.is_dir():
        raise InputError(f"Hyperpartisan root is not a directory: {root}")
    official_dev = _pairs(root, "test") or _pairs(root, "validation")
    if split == "dev" and official_dev:
        found, result, _ = _load_part(official_dev)
        result.examples = [ex for _, ex in found]
        return result
    pairs = _pairs(root, "training")
    if not pairs:
        raise InputError(f"{root}: no articles-training-byarticle*.xml")
    found, result, total = _load_part(pairs)
    if official_dev:  # split == "train": the whole training part trains
        result.examples = [ex for _, ex in found]
    else:
        cut = total - int(total * DEV_FRACTION)
        result.examples = [ex for pos, ex in found if (pos >= cut) == (split == "dev")]
    return result


def load_gold(path: Path | str) -> LoadResult:
    """`path` is the directory (dev split as `load` defines it) or a ground-truth XML file
    (every article it labels is gold; the articles file is not needed to score)."""
    path = require_path(path, "Hyperpartisan gold")
    if path.is_dir():
        return load(path, "dev")
    labels, skipped = _labels(path)
    examples = [ClassificationExample(a, "", LABELS.index(v)) for a, v in labels.items()]
    return LoadResult(examples=examples, skipped=skipped)


def _coerce(obj: Any, where: str) -> dict[str, str]:
    if isinstance(obj, dict):
        obj = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in obj.items()}
    return check_str_map(obj, where, LABELS)


def load_predictions(path: Path | str) -> dict[str, str]:
    """JSON `{id: "true"|"false"}` or the SemEval run format (`id true|false [confidence]`)."""
    path = require_path(path, "predictions file")
    if not path.is_file():
        raise InputError(f"predictions file is not a file: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: predictions file is not UTF-8 text ({exc.reason})") from exc
    if text.lstrip().startswith("{"):
        try:
            return _coerce(json.loads(text), str(path))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (2, 3) or parts[1] not in LABELS:
            raise InputError(
                f"{path}:{n}: expected '<article id> <true|false> [confidence]', got {line!r:.100}"
            )
        if parts[0] in out:
            raise InputError(f"{path}:{n}: second prediction for article {parts[0]}")
        out[parts[0]] = parts[1]
    return out


def write_predictions(path: Path | str, predictions: dict) -> Path:
    return write_json_predictions(path, _coerce(predictions, "Hyperpartisan predictions"))


def evaluate(gold: list[ClassificationExample], predictions: dict) -> dict:
    """Accuracy, and precision/recall/F1 of hyperpartisan=true (see the module docstring)."""
    predictions = _coerce(predictions, "Hyperpartisan predictions")
    return binary_metrics(classification_gold(gold, LABELS), predictions, POSITIVE)


TASK = register_module(
    __name__,
    adapter="classification",
    labels=LABELS,
    # the sample's 64 training windows sit on the 0.69 plateau for ~5 epochs from the demo's
    # pretrained model before the stance paragraph is found: 12 leave room to learn it (at 10
    # the long model's dev F1 fell behind the baseline's: 0.533 vs 0.615)
    epochs=12,
    sample="longdoc.components.synthetic.hyperpartisan_sample:write_hyperpartisan",
)
