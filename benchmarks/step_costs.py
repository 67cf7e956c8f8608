"""The fixed costs of a training step around the model's layers: ours against torch's and
MLflow's defaults, side by side in one run (no timing assertions; figures go to RESULTS.md).

Usage::

    .venv/bin/python benchmarks/step_costs.py            # ~20 s

Rows:
- AdamW step over the demo model's parameters (hidden 128, 2 layers, vocab 8000: 1.9M) and over
  the `benchmarks/train.py` model's (hidden 256, 4 layers: 7.1M): torch's default (for-each)
  against the fused kernel `training.common.adamw` picks.
- Logging three metrics a step to a fresh sqlite MLflow store: `mlflow.log_metrics` per step
  against `training.common.StepMetrics` (batches of 100 steps), per step.

Every row is the median of repeated calls, 2 threads (torch.set_num_threads).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def median_ms(fn, reps: int = 30) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def adamw_rows() -> list[tuple[str, float, float]]:
    import torch
    import transformers

    from longdoc.components.training.common import adamw

    rows = []
    models = (("demo model", 128, 2, 256), ("train.py model", 256, 4, 1024))
    for name, hidden, layers, ffn in models:
        cfg = transformers.LongformerConfig(
            vocab_size=8000,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=ffn,
            max_position_embeddings=4098,
        )
        model = transformers.LongformerForMaskedLM(cfg)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        n = sum(p.numel() for p in model.parameters()) / 1e6
        default = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ours = adamw(model, 1e-4, 0.01)
        assert ours.defaults["fused"], "adamw did not pick the fused kernel"
        rows.append(
            (f"AdamW step, {name} ({n:.1f}M params)", median_ms(default.step), median_ms(ours.step))
        )
    return rows


def mlflow_rows(steps: int = 300) -> list[tuple[str, float, float]]:
    import mlflow

    from longdoc.components.training.common import StepMetrics

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        metrics = {"loss": 1.0, "lr": 1e-4, "tokens_per_s": 1e4}
        with mlflow.start_run():
            mlflow.log_metrics(metrics, step=0)  # the store's tables, created
            t0 = time.perf_counter()
            for step in range(1, steps + 1):
                mlflow.log_metrics(metrics, step=step)
            per_call = (time.perf_counter() - t0) / steps
            batched = StepMetrics()
            t0 = time.perf_counter()
            for step in range(1, steps + 1):
                batched.log(metrics, step=step)
            batched.flush()
            per_batched = (time.perf_counter() - t0) / steps
    return [("3 metrics to MLflow (sqlite), per step", 1000 * per_call, 1000 * per_batched)]


def main() -> None:
    import torch
    from machine import cpu_flags, load_average

    torch.set_num_threads(2)
    print(f"CPU flags: {cpu_flags()}; load average (1/5/15 min): {load_average()}", flush=True)
    rows = adamw_rows() + mlflow_rows()
    print("\n| what | torch / MLflow default ms | ours ms | speed-up |")
    print("|---|---:|---:|---:|")
    for what, theirs, ours in rows:
        print(f"| {what} | {theirs:.3f} | {ours:.3f} | {theirs / ours:.2f}x |")
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
