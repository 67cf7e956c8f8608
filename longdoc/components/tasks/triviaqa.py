"""TriviaQA reading comprehension (Joshi et al. 2017) as distributed in triviaqa-rc.tar.gz.

Root layout: `qa/{wikipedia,web}-{train,dev}.json` and `evidence/{wikipedia,web}/<Filename>`.
A qa file is `{"Data": [...], "Domain": "Wikipedia" | "Web", "Version": 1.0, ...}`; each datum has
`QuestionId`, `Question`, `Answer` (`Value`, `Aliases`, `NormalizedAliases`, ...), `EntityPages`
(evidence under `evidence/wikipedia/`) and, in the Web domain, `SearchResults` (under
`evidence/web/`).

Units, as the official evaluation keys them (dataset_utils.get_key_to_ground_truth):
- Wikipedia domain: one example per question, all its EntityPages as documents; id = QuestionId.
- Web domain: one example per (question, document) pair; id = `QuestionId--Filename`.

Metric (official): the prediction and each ground truth are normalised (underscores to spaces,
lowercase, punctuation and the quotes ‘’´` to spaces, articles a/an/the dropped, whitespace
collapsed); EM and token F1 take the max over the ground truths, which are `NormalizedAliases`
plus the normalised `HumanAnswers` where present (not `Value`: the official script does not use
it). Both are percentages over every question in the gold file; a question with no prediction
scores 0 (the official script prints "Missed question ... will receive score 0" and keeps it in
the denominator; we count it in `missing`). Predictions: `{QuestionId: answer}`.
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from pathlib import Path

from longdoc.components.core.io import InputError, require_path
from longdoc.components.tasks import Document, LoadResult, Skipped, SpanExample, register_module
from longdoc.components.tasks.official import (
    RecordError,
    check_str_map,
    field,
    read_json,
    read_predictions,
    records,
    str_list,
    write_json_predictions,
)

log = logging.getLogger(__name__)

NAME = "triviaqa"
PRIMARY_METRIC = "f1"
# What `longdoc evaluate` takes (shown in its --help):
GOLD_PATH = "qa/<domain>-dev.json (or verified-*.json), or the root holding qa/"
PREDICTIONS_FORMAT = 'JSON {QuestionId (Web: QuestionId--Filename): "answer"}'

DOMAINS = ("wikipedia", "web")
SPLITS = ("train", "dev")
_EXCLUDE = frozenset(string.punctuation + "\u2018\u2019\u00b4`")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


# --- official metric -----------------------------------------------------------------------------


def normalize_answer(s: str) -> str:
    """triviaqa_evaluation.normalize_answer: underscores, case, punctuation, articles, spaces."""
    s = s.replace("_", " ").lower()
    s = "".join(" " if ch in _EXCLUDE else ch for ch in s)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split()).strip()


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(ground_truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def ground_truths(ex: SpanExample) -> tuple[str, ...]:
    return ex.normalized or tuple(normalize_answer(a) for a in ex.answers)


def evaluate(gold: list[SpanExample], predictions: dict[str, str]) -> dict:
    """Official EM/F1 (percentages) over the gold questions; see the module docstring."""
    check_str_map(predictions, "TriviaQA predictions")
    truth = {ex.id: ground_truths(ex) for ex in gold}  # a dict, as the official script keys it
    if not truth:
        raise InputError("TriviaQA gold set is empty: nothing to score")
    em = f1 = 0.0
    common = 0
    for qid, answers in truth.items():
        if not answers:
            raise InputError(f"gold question {qid!r} has no answer to score against")
        if qid not in predictions:
            continue
        common += 1
        em += max(float(exact_match_score(predictions[qid], a)) for a in answers)
        f1 += max(f1_score(predictions[qid], a) for a in answers)
    return {
        "exact_match": 100.0 * em / len(truth),
        "f1": 100.0 * f1 / len(truth),
        "common": common,
        "denominator": len(truth),
        "pred_len": len(predictions),
        "gold_len": len(truth),
        "missing": len(truth) - common,
    }


# --- loading ------------------------------------------------------------------------------------


def _answer(raw: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(Value then Aliases, deduplicated; the official ground truths)."""
    if "Answer" not in raw:  # the test files ship without answers
        return (), ()
    ans = field(raw, "Answer", dict)
    value = field(ans, "Value", str, " of Answer")
    aliases = str_list(ans, "Aliases") if "Aliases" in ans else []
    answers = tuple(dict.fromkeys([value, *aliases]))
    if "NormalizedAliases" in ans:
        official = str_list(ans, "NormalizedAliases")
    else:  # not in the real files; keep the definition (aliases, normalised) meaningful
        official = [normalize_answer(a) for a in aliases or [value]]
    human = str_list(ans, "HumanAnswers") if "HumanAnswers" in ans else []
    return answers, tuple(official + [normalize_answer(h) for h in human])


def _pages(raw: dict) -> list[tuple[str, str, str]]:
    """(evidence folder, Filename, Title) for EntityPages then SearchResults."""
    out = []
    for key, folder in (("EntityPages", "wikipedia"), ("SearchResults", "web")):
        if key not in raw:
            continue
        for i, page in enumerate(field(raw, key, list)):
            name = field(page, "Filename", str, f" in {key}[{i}]")
            title = page.get("Title") if isinstance(page.get("Title"), str) else name
            out.append((folder, name, title))
    return out


def _domain(data: dict, path: Path) -> str:
    domain = data.get("Domain")
    if domain not in ("Wikipedia", "Web"):
        raise InputError(f"{path}: 'Domain' must be 'Wikipedia' or 'Web', got {domain!r}")
    return domain


def _data(path: Path) -> tuple[list, list[int], str]:
    """(records, their positions in the file, domain)."""
    data = read_json(path, "TriviaQA qa file")
    if not isinstance(data, dict) or not isinstance(data.get("Data"), list):
        raise InputError(f"{path}: expected a TriviaQA qa file: an object with a 'Data' array")
    domain = _domain(data, path)
    if data.setdefault("Version", None) != 1.0:
        log.warning("%s: TriviaQA version %r, the evaluation expects 1.0", path, data["Version"])
    items = list(enumerate(data["Data"]))
    if data.get("VerifiedEval"):
        items = [(i, _verified(d, domain)) for i, d in items if _in_verified(d)]
    return [d for _, d in items], [i for i, _ in items], domain


def _in_verified(datum: object) -> bool:
    """A verified file (verified-*-dev.json) is scored on its verified questions only, and in the
    Web domain on their verified documents only (dataset_utils.read_triviaqa_data). A record
    without the flag is kept, so the loader reports it if it is malformed otherwise."""
    return not isinstance(datum, dict) or datum.get("QuestionPartOfVerifiedEval", True) is not False


def _verified(datum: object, domain: str) -> object:
    if domain != "Web" or not isinstance(datum, dict):
        return datum
    datum = dict(datum)
    for key in ("EntityPages", "SearchResults"):
        if isinstance(datum.get(key), list):
            datum[key] = [
                p for p in datum[key] if not isinstance(p, dict) or p.get("DocPartOfVerifiedEval")
            ]
    return datum


class _Evidence:
    """Reads evidence files once (pages are shared between questions), refusing names that
    would leave the evidence directory (the qa file is input, its Filenames untrusted)."""

    def __init__(self, root: Path) -> None:
        self.root = (root / "evidence").resolve()
        self.cache: dict[Path, str] = {}

    def read(self, folder: str, name: str) -> str:
        base = self.root / folder
        path = (base / name).resolve()
        if not path.is_relative_to(base):
            raise RecordError(f"evidence Filename {name!r} points outside evidence/{folder}/")
        if path not in self.cache:
            if not path.is_file():
                raise RecordError(f"evidence file evidence/{folder}/{name} not found")
            try:
                self.cache[path] = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise RecordError(f"evidence/{folder}/{name} is not UTF-8 ({exc.reason})") from exc
        return self.cache[path]


def load(
    root: Path | str, split: str, domain: str = "wikipedia", limit: int | None = None
) -> LoadResult:
    """Questions of `qa/<domain>-<split>.json` with their evidence text. A question whose record
    is malformed or whose evidence file is missing is skipped and reported (file, index, why);
    a question whose answer appears in none of its documents is kept (it still counts in the
    official score; span training finds nothing to learn from it) and listed in `notes`.

    `limit`: only the first `limit` question records (a debug cap, like max_train_samples): the
    evidence of the others, gigabytes for the full train set, is never read."""
    if split not in SPLITS:
        raise InputError(f"TriviaQA split must be one of {', '.join(SPLITS)}, got {split!r}")
    if domain not in DOMAINS:
        raise InputError(f"TriviaQA domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
    root = require_path(root, "TriviaQA root")
    path = require_path(root / "qa" / f"{domain}-{split}.json", f"TriviaQA {domain} {split} file")
    items, indexes, file_domain = _data(path)
    if limit is not None:
        items, indexes = items[:limit], indexes[:limit]
    evidence = _Evidence(root)
    result = LoadResult()

    def parse(index: int, raw: object) -> list[SpanExample]:
        qid = field(raw, "QuestionId", str)
        question = field(raw, "Question", str)
        answers, official = _answer(raw)
        pages = _pages(raw)
        if not pages:
            raise RecordError(f"{qid}: no evidence pages")
        docs = [(n, Document(title, evidence.read(folder, n))) for folder, n, title in pages]
        if answers and not any(a in d.text for a in answers for _, d in docs):
            result.notes.append(Skipped(str(path), index, f"{qid}: no answer alias in evidence"))
        if file_domain == "Wikipedia":
            return [SpanExample(qid, question, tuple(d for _, d in docs), answers, official)]
        return [SpanExample(f"{qid}--{n}", question, (d,), answers, official) for n, d in docs]

    groups = records(items, path, parse, result.skipped, indexes)
    result.examples = [ex for group in groups for ex in group]
    return result


def load_gold(path: Path | str) -> LoadResult:
    """`path` is a qa file (e.g. `qa/wikipedia-dev.json`, `qa/verified-web-dev.json`) or the
    TriviaQA root (then `qa/wikipedia-dev.json`). Evidence is not read: scoring needs answers
    only. Malformed records are left out and reported, as the loader does."""
    path = require_path(path, "TriviaQA gold")
    if path.is_dir():
        path = require_path(path / "qa" / "wikipedia-dev.json", "TriviaQA dev file")
    items, indexes, domain = _data(path)

    def parse(index: int, raw: object) -> list[SpanExample]:
        qid = field(raw, "QuestionId", str)
        answers, official = _answer(raw)
        if not answers:
            raise RecordError(f"{qid}: no Answer to score against")
        if domain == "Wikipedia":
            return [SpanExample(qid, "", (), answers, official)]
        return [SpanExample(f"{qid}--{n}", "", (), answers, official) for _, n, _ in _pages(raw)]

    result = LoadResult()
    groups = records(items, path, parse, result.skipped, indexes)
    result.examples = [ex for group in groups for ex in group]
    return result


def load_predictions(path: Path | str) -> dict[str, str]:
    return check_str_map(read_predictions(path), str(path))


def write_predictions(path: Path | str, predictions: dict[str, str]) -> Path:
    return write_json_predictions(path, check_str_map(predictions, "TriviaQA predictions"))


TASK = register_module(
    __name__,
    adapter="span",
    epochs=4,
    sample="longdoc.components.synthetic.triviaqa_sample:write_triviaqa",
)
