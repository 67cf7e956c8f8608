"""`pipeline.jobs`: the demo's probe + fine-tuning wave one stage at a time with every thread
(`jobs: 1`) against side by side (`jobs: 2`, what `auto` picks on a CPU), in one run.

Needs `make demo` (or `longdoc pipeline`) to have run in the repository first: it copies the
sample data, the compiled kernels and the pretrained checkpoint (with their freshness markers)
into a scratch directory, so that only probe, the six fine-tuning tasks and score run there,
with a fresh MLflow store and nothing in the repository touched. Each configuration runs
`longdoc pipeline` from the same copy; the table gives the wall time of the command and of the
wave (first stage started to last stage finished, from Prefect's log), the training seconds
the tasks report, and whether the dev metrics agree.

    python benchmarks/pipeline_jobs.py        # ~20 min on 2 slow cores
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_flags, load_average  # noqa: E402

UPSTREAM = (
    "data/sample",
    "data/corpus",
    "data/shards",
    "data/kernels",
    "data/checkpoints/pretrain",
)
BEGIN = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) .*Beginning (?:sub)?flow run .* for flow '(\w+)'")


def _copy(dest: Path) -> None:
    for rel in UPSTREAM:
        if not (ROOT / rel / ".stage.json").exists():
            sys.exit(f"{rel} is missing or unfinished: run `make demo` first")
        shutil.copytree(ROOT / rel, dest / rel, symlinks=True)
    shutil.copy2(ROOT / "params.yaml", dest / "params.yaml")


def _wave_seconds(log: str) -> float:
    """From the first probe or finetune flow run begun to the score flow run begun (after the
    last of them finished)."""
    begun = [m.groups() for m in map(BEGIN.match, log.splitlines()) if m]
    start = min(t for t, name in begun if name in ("probe", "finetune"))
    end = next(t for t, name in begun if name == "score")
    fmt = "%H:%M:%S.%f"
    return (datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds()


def run(jobs: int, base: Path) -> dict:
    work = base / f"jobs{jobs}"
    work.mkdir()
    _copy(work)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    cmd = [sys.executable, "-m", "longdoc", "pipeline", "--set", f"pipeline.jobs={jobs}"]
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if res.returncode:
        sys.exit(f"jobs={jobs}: exited {res.returncode}\n{res.stderr[-3000:]}")
    metrics, train = {}, 0.0
    for path in sorted((work / "data/metrics").glob("finetune_*.json")):
        if path.name.count(".") > 1:  # prediction files beside the metrics
            continue
        m = json.loads(path.read_text())
        key = m["primary_metric"]
        metrics[m["task"]] = (round(m["long"][key], 3), round(m["baseline"][key], 3))
        train += m["long"]["train_seconds"] + m["baseline"]["train_seconds"]
    return {"wall": wall, "wave": _wave_seconds(res.stdout + res.stderr), "train": train,
            "metrics": metrics}  # fmt: skip


def main() -> None:
    print(f"CPU flags: {cpu_flags()}; cores: {os.cpu_count()}; load: {load_average()}")
    with tempfile.TemporaryDirectory(prefix="longdoc-jobs-") as tmp:
        one, two = run(1, Path(tmp)), run(2, Path(tmp))
    print(f"\n{'':34}{'jobs: 1':>10}{'jobs: 2':>10}{'ratio':>8}")
    for key, label in (("wall", "longdoc pipeline (s)"), ("wave", "probe + finetune wave (s)"),
                       ("train", "training seconds, all tasks (s)")):  # fmt: skip
        print(f"{label:34}{one[key]:10.1f}{two[key]:10.1f}{one[key] / two[key]:7.2f}x")
    print("\ndev metric, long / baseline:")
    for task in one["metrics"]:
        a, b = one["metrics"][task], two["metrics"][task]
        same = "same" if a == b else "differs"
        print(
            f"  {task:14} jobs 1: {a[0]:.3f} / {a[1]:.3f}   jobs 2: {b[0]:.3f} / {b[1]:.3f}", same
        )


if __name__ == "__main__":
    main()
