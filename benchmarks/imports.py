"""What a torchrun rank pays before its first step: importing the training modules, ours (MLflow
imported only where the main rank tracks) vs the same modules with MLflow imported first, as
every rank did before (the peer), side by side in one run, each in a fresh interpreter, rounds
taking turns. The libraries underneath are timed alone for scale.

    python benchmarks/imports.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags, load_average  # noqa: E402

TRAINING = ("longdoc.components.training.pretrain", "longdoc.components.training.finetune")
LIBRARIES = ("torch", "transformers", "mlflow", "prefect")


def seconds(imports: list[str]) -> float:
    """Wall seconds to import `imports` in a fresh interpreter (its start-up not counted)."""
    code = (
        "import time\nt = time.perf_counter()\n"
        + "".join(f"import {m}\n" for m in imports)
        + "print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"CPU flags: {cpu_flags()}; load average (1/5/15 min): {load_average()}")
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for module in TRAINING:
            times.setdefault(f"{module} ours", []).append(seconds([module]))
            times.setdefault(f"{module} peer", []).append(seconds(["mlflow", module]))
    for module in LIBRARIES:
        times[module] = [seconds([module]) for _ in range(args.rounds)]
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n| median of {args.rounds}, import wall s | ours | peer (MLflow too) | peer/ours |")
    print("|---|---:|---:|---:|")
    for module in TRAINING:
        ours, peer = med[f"{module} ours"], med[f"{module} peer"]
        print(f"| `{module}` | {ours:.2f} | {peer:.2f} | {peer / ours:.2f}x |")
    print("\n| library alone | s |\n|---|---:|")
    for module in LIBRARIES:
        print(f"| `{module}` | {med[module]:.2f} |")


if __name__ == "__main__":
    main()
