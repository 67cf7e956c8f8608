"""HotpotQA, distractor setting (Yang et al. 2018), as distributed.

Files (the root is the directory holding them): `hotpot_train_v1.1.json` (split "train") and
`hotpot_dev_distractor_v1.json` (split "dev"), each a JSON array of
`{"_id", "question", "answer", "supporting_facts": [[title, sent_id], ...],
"context": [[title, [sentence, ...]], ...], "type", "level"}`.

Metric: exactly hotpot_evaluate_v1.py. Answers are normalised (lowercase, punctuation removed,
articles dropped, whitespace collapsed); answer F1 is 0 when either side normalises to "yes",
"no" or "noanswer" and they differ. Supporting facts are compared as sets of (title, sent_id):
EM when the sets are equal, precision/recall/F1 otherwise. Joint precision = answer precision x
sp precision, joint recall likewise, joint F1 their harmonic mean, joint EM = answer EM x sp EM.
Every metric is averaged over all gold questions (fractions, not percentages, as the official
script prints them); a question with a missing answer or sp prediction contributes 0 to that part
and to the joint metrics (the official script prints "missing answer/sp fact"; we count them).
Predictions: `{"answer": {_id: answer}, "sp": {_id: [[title, sent_id], ...]}}`.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from longdoc.components.core.io import InputError, require_path
from longdoc.components.tasks import HotpotExample, LoadResult, Skipped, register_module
from longdoc.components.tasks.official import (
    RecordError,
    check_str_map,
    field,
    read_json,
    read_predictions,
    records,
    write_json_predictions,
)

NAME = "hotpotqa"
PRIMARY_METRIC = "joint_f1"
# What `longdoc evaluate` takes (shown in its --help):
GOLD_PATH = "hotpot_dev_distractor_v1.json (or any HotpotQA file), or its directory"
PREDICTIONS_FORMAT = 'JSON {"answer": {_id: "answer"}, "sp": {_id: [[title, sent_id], ...]}}'

FILES = {"train": "hotpot_train_v1.1.json", "dev": "hotpot_dev_distractor_v1.json"}
SPECIAL = ("yes", "no", "noanswer")
_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
METRIC_KEYS = (
    "em",
    "f1",
    "prec",
    "recall",
    "sp_em",
    "sp_f1",
    "sp_prec",
    "sp_recall",
    "joint_em",
    "joint_f1",
    "joint_prec",
    "joint_recall",
)


# --- official metric -----------------------------------------------------------------------------


def normalize_answer(s: str) -> str:
    """hotpot_evaluate_v1.normalize_answer: lowercase, drop punctuation, drop articles, spaces.
    (Unlike TriviaQA's, punctuation is removed, not turned into a space.)"""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def answer_scores(prediction: str, gold: str) -> tuple[float, float, float, float]:
    """(em, f1, precision, recall) of one answer."""
    pred, truth = normalize_answer(prediction), normalize_answer(gold)
    em = float(pred == truth)
    if (pred in SPECIAL or truth in SPECIAL) and pred != truth:
        return em, 0.0, 0.0, 0.0
    p_tok, g_tok = pred.split(), truth.split()
    same = sum((Counter(p_tok) & Counter(g_tok)).values())
    if same == 0:
        return em, 0.0, 0.0, 0.0
    precision, recall = same / len(p_tok), same / len(g_tok)
    return em, 2 * precision * recall / (precision + recall), precision, recall


def sp_scores(
    prediction: Iterable[Iterable], gold: Iterable[Iterable]
) -> tuple[float, float, float, float]:
    """(em, f1, precision, recall) of one question's supporting facts, compared as sets."""
    pred, truth = {tuple(x) for x in prediction}, {tuple(x) for x in gold}
    tp, fp, fn = len(pred & truth), len(pred - truth), len(truth - pred)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(fp + fn == 0), f1, precision, recall


def evaluate(gold: list[HotpotExample], predictions: dict) -> dict:
    """hotpot_evaluate_v1.eval over `gold`; see the module docstring."""
    check_predictions(predictions, "HotpotQA predictions")
    if not gold:
        raise InputError("HotpotQA gold set is empty: nothing to score")
    answers, sps = predictions["answer"], predictions["sp"]
    m = dict.fromkeys(METRIC_KEYS, 0.0)
    missing_answer = missing_sp = 0
    for ex in gold:
        if ex.answer is None:
            raise InputError(f"gold question {ex.id!r} has no answer to score against")
        a = s = None
        if ex.id in answers:
            a = answer_scores(answers[ex.id], ex.answer)
            for key, value in zip(("em", "f1", "prec", "recall"), a, strict=True):
                m[key] += value
        else:
            missing_answer += 1
        if ex.id in sps:
            s = sp_scores(sps[ex.id], ex.supporting_facts)
            for key, value in zip(("sp_em", "sp_f1", "sp_prec", "sp_recall"), s, strict=True):
                m[key] += value
        else:
            missing_sp += 1
        if a is not None and s is not None:
            prec, recall = a[2] * s[2], a[3] * s[3]
            m["joint_em"] += a[0] * s[0]
            m["joint_f1"] += 2 * prec * recall / (prec + recall) if prec + recall > 0 else 0.0
            m["joint_prec"] += prec
            m["joint_recall"] += recall
    n = len(gold)
    return {
        **{k: v / n for k, v in m.items()},
        "n": n,
        "missing_answer": missing_answer,
        "missing_sp": missing_sp,
    }


# --- predictions --------------------------------------------------------------------------------


def check_predictions(obj: object, where: str) -> dict:
    """The official prediction object: {"answer": {id: str}, "sp": {id: [[title, int], ...]}}."""
    if not isinstance(obj, dict) or not {"answer", "sp"} <= obj.keys():
        raise InputError(
            f'{where}: expected a JSON object with "answer" and "sp" '
            '({"answer": {_id: answer}, "sp": {_id: [[title, sent_id], ...]}})'
        )
    check_str_map(obj["answer"], f'{where} "answer"')
    if not isinstance(obj["sp"], dict):
        raise InputError(f'{where}: "sp" must be an object {{_id: [[title, sent_id], ...]}}')
    for key, facts in obj["sp"].items():
        ok = isinstance(facts, list | tuple) and all(
            isinstance(f, list | tuple)  # tuples: predictions built in Python, not read from JSON
            and len(f) == 2
            and isinstance(f[0], str)
            and isinstance(f[1], int)
            and not isinstance(f[1], bool)
            for f in facts
        )
        if not ok:
            raise InputError(
                f'{where}: "sp" for {key!r} must be a list of [title, sentence index] pairs '
                f"(a string and an integer), got {facts!r:.200}"
            )
    return obj


def load_predictions(path: Path | str) -> dict:
    return check_predictions(read_predictions(path), str(path))


def write_predictions(path: Path | str, predictions: dict) -> Path:
    return write_json_predictions(path, check_predictions(predictions, "HotpotQA predictions"))


# --- loading ------------------------------------------------------------------------------------


def _context(raw: dict) -> tuple[tuple[str, tuple[str, ...]], ...]:
    out = []
    for i, para in enumerate(field(raw, "context", list)):
        if not (
            isinstance(para, list)
            and len(para) == 2
            and isinstance(para[0], str)
            and isinstance(para[1], list)
            and all(isinstance(s, str) for s in para[1])
        ):
            raise RecordError(f"context[{i}] must be [title, [sentence, ...]]")
        out.append((para[0], tuple(para[1])))
    return tuple(out)


def _facts(raw: dict) -> tuple[tuple[str, int], ...]:
    out = []
    for i, fact in enumerate(field(raw, "supporting_facts", list)):
        if not (
            isinstance(fact, list)
            and len(fact) == 2
            and isinstance(fact[0], str)
            and isinstance(fact[1], int)
            and not isinstance(fact[1], bool)
        ):
            raise RecordError(f"supporting_facts[{i}] must be [title, sentence index]")
        out.append((fact[0], fact[1]))
    return tuple(out)


def _optional_str(raw: dict, key: str) -> str | None:
    return field(raw, key, str) if raw.get(key) is not None else None


def _load_file(path: Path) -> LoadResult:
    data = read_json(path, "HotpotQA file")
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON array of questions, got {type(data).__name__}")
    result = LoadResult()

    def parse(index: int, raw: object) -> HotpotExample:
        ex_id = field(raw, "_id", str)
        context = _context(raw)
        facts = _facts(raw) if "supporting_facts" in raw else ()
        answer = _optional_str(raw, "answer")
        sentences = dict(context)
        for title, sid in facts:  # kept as-is: the official score compares them verbatim
            if title not in sentences or not 0 <= sid < len(sentences[title]):
                result.notes.append(
                    Skipped(
                        str(path),
                        index,
                        f"{ex_id}: supporting fact [{title!r}, {sid}] "
                        "is not a sentence of the context",
                    )
                )
        if answer is not None and answer not in SPECIAL:
            if not any(answer in s for _, sents in context for s in sents):
                result.notes.append(
                    Skipped(str(path), index, f"{ex_id}: answer {answer!r} not in the context")
                )
        return HotpotExample(
            ex_id,
            field(raw, "question", str),
            context,
            answer,
            facts,
            _optional_str(raw, "type"),
            _optional_str(raw, "level"),
        )

    result.examples = records(data, path, parse, result.skipped)
    return result


def load(root: Path | str, split: str) -> LoadResult:
    """One split. Malformed records are skipped and reported; records kept with a supporting
    fact outside the context or an answer not found in it are listed in `notes`."""
    if split not in FILES:
        raise InputError(f"HotpotQA split must be one of {', '.join(FILES)}, got {split!r}")
    return _load_file(require_path(Path(root) / FILES[split], f"HotpotQA {split} file"))


def load_gold(path: Path | str) -> LoadResult:
    """`path` is a HotpotQA file (e.g. `hotpot_dev_distractor_v1.json`) or the directory
    holding `hotpot_dev_distractor_v1.json`."""
    path = require_path(path, "HotpotQA gold")
    return load(path, "dev") if path.is_dir() else _load_file(path)


TASK = register_module(
    __name__,
    adapter="hotpot",
    epochs=4,
    sample="longdoc.components.synthetic.hotpotqa_sample:write_hotpotqa",
)
