"""Score a prediction file in a task's official format against its gold data
(`longdoc evaluate --task NAME --gold PATH --predictions FILE`).

What `--gold` is, per task (the path a user already has from the distributed data):
    wikihop        qangaroo_v1.1/wikihop/dev.json, or the qangaroo_v1.1/wikihop directory
    triviaqa       a qa file (qa/wikipedia-dev.json, qa/web-dev.json, qa/verified-*.json), or the
                   root holding qa/ (then qa/wikipedia-dev.json); evidence is not needed
    hotpotqa       hotpot_dev_distractor_v1.json (or any HotpotQA file), or its directory
    imdb           the aclImdb directory (its test/ split) or one split directory (with pos/, neg/)
    hyperpartisan  a ground-truth-*-byarticle*.xml file, or the directory (its dev split, see
                   components.tasks.hyperpartisan)
    summarization  val.txt or test.txt of the arXiv/PubMed release, or its directory (val.txt);
                   the predictions are a text file, one summary per line in the gold order

Gold records that are malformed are left out and reported (logged, and counted in
`gold_skipped`); the metric is computed over the rest, as the loaders define the dev set.
"""

from __future__ import annotations

import logging
from pathlib import Path

from longdoc.components.core.io import InputError, atomic_write_json
from longdoc.components.tasks import get_task

log = logging.getLogger(__name__)


def evaluate_file(
    task: str, gold: Path | str, predictions: Path | str, out: Path | str | None = None
) -> dict:
    """The task's official metrics for `predictions` against `gold`; also written to `out`."""
    mod = get_task(task)
    gold_set = mod.load_gold(Path(gold))
    for s in gold_set.skipped:
        log.warning("gold record skipped: %s[%s]: %s", s.file, s.index, s.reason)
    if not gold_set.examples:
        raise InputError(f"{gold}: no usable {task} gold records to score against")
    preds = mod.load_predictions(Path(predictions))
    if not getattr(preds, "by_position", False):  # a file matched by line has no ids to check
        _warn_on_ids(task, [ex.id for ex in gold_set.examples], preds)
    metrics = {
        "task": task,
        **mod.evaluate(gold_set.examples, preds),
        "gold_skipped": len(gold_set.skipped),
    }
    if out is not None:
        atomic_write_json(out, metrics)
    return metrics


def _warn_on_ids(task: str, gold_ids: list[str], predictions: dict) -> None:
    """Say when predictions miss gold ids or name ids the gold set lacks: a file keyed the wrong
    way (IMDB ids without their folder, TriviaQA Web ids without `--Filename`) otherwise just
    scores 0 with no hint why."""
    if task == "hotpotqa":
        pred_ids = set(predictions["answer"]) | set(predictions["sp"])
    else:
        pred_ids = set(predictions)
    gold = set(gold_ids)
    missing, extra = len(gold - pred_ids), sorted(pred_ids - gold)
    if missing:
        log.warning(
            "%d of %d gold ids have no prediction (scored as the task's script does)",
            missing,
            len(gold),
        )
    if extra:
        log.warning(
            "%d prediction ids are not in the gold set (ignored), e.g. %r; gold ids look like %r",
            len(extra),
            extra[0],
            gold_ids[0],
        )
