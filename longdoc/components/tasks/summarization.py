"""Long-document summarization: the arXiv / PubMed data sets as distributed by Cohan et al. 2018
("A Discourse-Aware Attention Model for Abstractive Summarization of Long Documents").

Layout: `<root>/{train,val,test}.txt`, one JSON object per line with `article_id`,
`article_text` (the article's sentences), `abstract_text` (the abstract's sentences, each
wrapped in `<S> ... </S>`), `section_names` and `sections` (per section, its sentences). Split
"train" reads `train.txt`, split "dev" reads `val.txt` (`longdoc evaluate --gold` also takes
`test.txt`). The article is its sentences joined by spaces; the reference summary is the
abstract's sentences without their tags, joined by spaces.

A malformed line (not JSON, a missing or mistyped field, no article or abstract text, invalid
UTF-8, an article_id seen before) is skipped and reported as `Skipped(file, line, reason)` with
its 1-based line number; blank lines are not records.

Predictions: a text file with one summary per line, in the order of the gold file's usable
articles (the convention of summarization outputs, e.g. fairseq's `test.hypo`): line i is the
summary of the i-th article the loader keeps. Metrics: ROUGE-1, ROUGE-2 and ROUGE-L F1 (x100),
with Porter stemming, as papers report them, from Google's `rouge-score` package (the reference
implementation's scorer); `rouge_mean`, their mean, decides champion promotion.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from longdoc.components.core.io import InputError, atomic_write_text, require_path
from longdoc.components.tasks import LoadResult, Skipped, SummaryExample, register_module
from longdoc.components.tasks.official import RecordError, field, str_list

log = logging.getLogger(__name__)

NAME = "summarization"
PRIMARY_METRIC = "rouge_mean"
# What `longdoc evaluate` takes (shown in its --help):
GOLD_PATH = "val.txt or test.txt of the arXiv/PubMed release, or its directory (val.txt)"
PREDICTIONS_FORMAT = "text, one summary per line, in the gold file's article order"

FILES = {"train": "train.txt", "dev": "val.txt"}
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class Summaries(dict):
    """Summaries in gold order: a predictions file is matched to the gold articles by position
    (line i, key "i"), so it carries no ids to check against the gold ones."""

    by_position = True


def _abstract_sentence(text: str) -> str:
    """`<S> we study ... . </S>` -> `we study ... .` (a sentence without tags is kept as is)."""
    text = text.strip()
    text = text.removeprefix("<S>").removesuffix("</S>")
    return text.strip()


def _parse(raw: Any) -> SummaryExample:
    article_id = field(raw, "article_id", (str, int))
    article = " ".join(s.strip() for s in str_list(raw, "article_text") if s.strip())
    if not article:
        raise RecordError("article_text has no text")
    abstract = tuple(
        s for s in (_abstract_sentence(t) for t in str_list(raw, "abstract_text")) if s
    )
    if not abstract:
        raise RecordError("abstract_text has no text")
    for key in ("section_names", "sections"):
        if key in raw and not isinstance(raw[key], list):
            raise RecordError(f"field {key!r} must be a list, got {type(raw[key]).__name__}")
    return SummaryExample(str(article_id), article, abstract)


def _line_record(line: bytes) -> Any:
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RecordError(f"not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"invalid JSON (column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise RecordError("invalid JSON: nested too deeply") from None


def _load_file(path: Path) -> LoadResult:
    """Every usable line of one distributed file, read line by line (bounded memory)."""
    if not path.is_file():
        raise InputError(f"summarization data is not a file: {path}")
    result, seen = LoadResult(), set()
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                example = _parse(_line_record(line.removeprefix(b"\xef\xbb\xbf")))
                if example.id in seen:
                    raise RecordError(f"article_id {example.id!r} seen before")
            except RecordError as exc:
                result.skipped.append(Skipped(str(path), number, str(exc)))
                continue
            seen.add(example.id)
            result.examples.append(example)
    return result


def load(root: Path | str, split: str) -> LoadResult:
    """One split (`train` -> train.txt, `dev` -> val.txt); malformed lines skipped, reported."""
    if split not in FILES:
        raise InputError(f"summarization split must be one of {', '.join(FILES)}, got {split!r}")
    name = FILES[split]
    return _load_file(require_path(Path(root) / name, f"summarization {split} file ({name})"))


def load_gold(path: Path | str) -> LoadResult:
    """`path` is a data file (val.txt, test.txt) or the directory holding val.txt."""
    path = require_path(path, "summarization gold")
    return load(path, "dev") if path.is_dir() else _load_file(path)


def _check(predictions: Any, where: str) -> Mapping[str, str]:
    if not isinstance(predictions, Mapping):
        raise InputError(f"{where}: expected summaries keyed by id, got {type(predictions)}")
    for key, value in predictions.items():
        if not isinstance(value, str):
            raise InputError(f"{where}: the summary for {key!r} must be a string")
    return predictions


def load_predictions(path: Path | str) -> Summaries:
    """Line i of the file (1-based) is the summary of the i-th gold article."""
    path = require_path(path, "predictions file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: predictions file is not UTF-8 text ({exc.reason})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final line break ends the last summary; it does not start another
    return Summaries((str(i), line.rstrip("\r")) for i, line in enumerate(lines, start=1))


def write_predictions(path: Path | str, predictions: Mapping[str, str]) -> Path:
    """One summary per line, in the mapping's order (gold order); line breaks inside a summary
    become spaces, so line i stays the i-th article's."""
    _check(predictions, "summarization predictions")
    lines = (" ".join(s.split()) for s in predictions.values())
    path = Path(path)
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))
    return path


def rouge(references: list[str], summaries: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (x100, Porter stemming) over the pairs, and their mean."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for ref, hyp in zip(references, summaries, strict=True):
        scores = scorer.score(ref, hyp)
        for t in ROUGE_TYPES:
            totals[t] += scores[t].fmeasure
    n = max(1, len(references))
    out = {t: 100.0 * totals[t] / n for t in ROUGE_TYPES}
    out[PRIMARY_METRIC] = sum(out[t] for t in ROUGE_TYPES) / len(ROUGE_TYPES)
    return out


def evaluate(gold: list[SummaryExample], predictions: Mapping[str, str]) -> dict:
    """ROUGE of the i-th summary (in the mapping's order) against the i-th gold abstract; a
    missing summary scores 0 (counted in `missing`), extra ones are ignored (`extra`)."""
    summaries = list(_check(predictions, "summarization predictions").values())
    if len(summaries) != len(gold):
        log.warning("%d summaries for %d gold articles (matched by position)", len(summaries),
                    len(gold))  # fmt: skip
    padded = (summaries + [""] * len(gold))[: len(gold)]
    return {
        **rouge([ex.summary for ex in gold], padded),
        "n": len(gold),
        "missing": max(0, len(gold) - len(summaries)),
        "extra": max(0, len(summaries) - len(gold)),
    }


TASK = register_module(
    __name__,
    adapter="seq2seq",
    data_dir="arxiv",
    epochs=12,
    # BART's input length: the truncated model the LED paper compares with; the decoder's
    # cross-attention and template need a higher rate than the encoder-only heads, and many
    # updates: two articles a step, the encoder frozen (half the cost of a step)
    finetune_defaults={
        "baseline_max_len": 1024,
        "generation": {},
        "lr": 3e-3,
        "batch_size": 2,
        "freeze_encoder": True,
    },
    sample="longdoc.components.synthetic.summarization_sample:write_summarization",
)
