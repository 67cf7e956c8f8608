"""Zero-shot classification against baselines and the fine-tuned models (issue 19).

On the sample's IMDB and Hyperpartisan dev sets: the zero-shot classifiers of params.yaml
(`zeroshot.classifiers`, calibrated and not) on a pretrained checkpoint, next to the majority
class of the training split, uniform random guessing (the mean over 200 seeded draws) and the
fine-tuned long model's dev metric from its metrics file (`data/metrics/finetune_<task>.json`,
as `longdoc pipeline` writes it). Every number is the task's official metric (`tasks.<task>`).

Usage (after `make demo`, which writes the checkpoint, the sample and the metrics)::

    .venv/bin/python benchmarks/zeroshot.py
    .venv/bin/python benchmarks/zeroshot.py --checkpoint DIR --sample DIR --metrics DIR --no-append
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from machine import cpu_flags, load_average  # noqa: E402

TASKS = {"imdb": "accuracy", "hyperpartisan": "f1"}


def evaluate(task, gold, labels: list[str]) -> dict:
    return task.evaluate(gold, {ex.id: label for ex, label in zip(gold, labels, strict=True)})


def rows_for(name: str, args, params) -> list[tuple[str, float, float]]:
    """(method, primary metric, accuracy) rows for one task."""
    from longdoc.components.inference.zeroshot import ZeroShotEngine
    from longdoc.components.tasks import get_task

    task = get_task(name)
    root = Path(args.sample) / task.sample_dir
    gold, train = task.load(root, "dev").examples, task.load(root, "train").examples
    metric = TASKS[name]
    labels = list(task.labels)
    majority = max(labels, key=lambda lab: sum(labels[ex.label] == lab for ex in train))
    out = [("majority class", *pick(evaluate(task, gold, [majority] * len(gold)), metric))]
    draws = [
        pick(evaluate(task, gold, [random.Random(s).choice(labels) for _ in gold]), metric)
        for s in range(200)
    ]
    out.append(("random (mean of 200)", *(sum(d[i] for d in draws) / len(draws) for i in (0, 1))))
    spec = params.zeroshot.classifiers[name].model_copy(update={"model": str(args.checkpoint)})
    for calibrate in (True, False):
        engine = ZeroShotEngine.from_spec(
            Path(args.checkpoint), spec.model_copy(update={"calibrate": calibrate}), device="cpu"
        )
        preds = [p["label"] for p in engine.predict_texts([ex.text for ex in gold])]
        what = "zero-shot, calibrated" if calibrate else "zero-shot, uncalibrated"
        out.append((what, *pick(evaluate(task, gold, preds), metric)))
    finetuned = Path(args.metrics) / f"finetune_{name}.json"
    if finetuned.exists():
        long = json.loads(finetuned.read_text())["long"]
        out.append(("fine-tuned long model (dev, metrics file)", long[metric], long["accuracy"]))
    return out


def pick(metrics: dict, metric: str) -> tuple[float, float]:
    return float(metrics[metric]), float(metrics["accuracy"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="data/checkpoints/pretrain")
    ap.add_argument("--sample", default="data/sample")
    ap.add_argument("--metrics", default="data/metrics")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()

    from longdoc.components.core.config import load_params

    params = load_params(HERE.parent / "params.yaml")
    start, load_start = time.perf_counter(), load_average()
    lines = ["| task | metric | method | metric value | accuracy |", "|---|---|---|---|---|"]
    for name, metric in TASKS.items():
        for method, value, acc in rows_for(name, args, params):
            lines.append(f"| {name} | {metric} | {method} | {value:.3f} | {acc:.3f} |")
    text = "\n".join(lines)
    header = (
        f"checkpoint {args.checkpoint}; CPU flags: {cpu_flags()}; load average {load_start} at "
        f"start, {load_average()} at end; {time.perf_counter() - start:.0f} s"
    )
    print(f"{text}\n\n{header}")
    if not args.no_append:
        cmd = "python benchmarks/zeroshot.py " + " ".join(sys.argv[1:])
        entry = (
            f"\n## Zero-shot classification vs baselines and fine-tuning (issue 19)\n\n"
            f"Command: `{cmd.strip()}`\n{datetime.date.today()}. {header}\n\n{text}\n"
        )
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(entry)
        print(f"appended to {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
