"""Pieces shared by pretraining and fine-tuning: seeding, schedules, the optimizer recipe,
throughput, bits per character and the loss-curve plot. (Publishing a checkpoint directory is
`core.io.publish_dir`; quiet checkpoint loading is `modeling.model.quiet_loading`.)
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def warmup_linear_decay(optimizer: torch.optim.Optimizer, warmup: int, total: int):
    """Linear warmup to the base LR, then linear decay to zero at `total` steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without decay on biases and LayerNorm weights (the usual BERT recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


class Throughput:
    """Tokens/s over the whole run, for logs and MLflow."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.tokens = 0

    def add(self, n: int) -> float:
        self.tokens += n
        return self.tokens / max(1e-9, time.perf_counter() - self.start)


def plot_curve(series: dict[str, list[tuple[int, float]]], path: Path, ylabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=label, marker="." if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def bits_per_char(loss_nats_per_token: float, chars_per_token: float) -> float:
    return loss_nats_per_token / math.log(2) / chars_per_token
