"""Pieces shared by pretraining and fine-tuning: seeding, schedules, checkpoint publishing,
progress, and the loss-curve plot.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from longdoc.components.core.io import (
    check_own_dir,
    claim_output_dir,
    mark_output_dir,
    remove_own_dir,
)


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


def _sibling(dest: Path, suffix: str) -> Path:
    return Path(dest).with_name(Path(dest).name + suffix)


def check_publish_target(dest: Path, stage: str, *, force: bool = False) -> None:
    """Fail now, before hours of work, if publishing to `dest` would destroy data longdoc did not
    write: `dest` must be absent, empty or longdoc's (or `force`), and `<dest>.old` /
    `<dest>.partial`, which publishing deletes, absent, empty or longdoc's whatever `force` says.
    Changes nothing."""
    claim_output_dir(dest, stage, force=force, create=False)
    for suffix in (".old", ".partial"):
        check_own_dir(_sibling(dest, suffix), stage)


def publish_dir(staging: Path, dest: Path, *, stage: str = "", force: bool = False) -> None:
    """Replace `dest` with the fully written `staging` directory.

    Why: a checkpoint directory must never be half written under its final name; readers see
    either the old complete one or the new complete one. And only a directory longdoc wrote is
    replaced (`check_publish_target`; `force` lets a foreign `dest` go): the previous `dest` is
    moved to `<dest>.old` and deleted once the new one is in place, and a `<dest>.old` that is
    not longdoc's is never deleted.
    """
    dest = Path(dest)
    check_publish_target(dest, stage, force=force)
    old = _sibling(dest, ".old")
    remove_own_dir(old, stage)
    moved = False
    if dest.exists() or dest.is_symlink():
        dest.rename(old)
        moved = True
    Path(staging).rename(dest)
    if moved:  # what this run moved aside: checked above (or released by `force`)
        if old.is_symlink():
            old.unlink()  # the link only; whatever it pointed at stays
        else:
            shutil.rmtree(old)


def staging_dir(dest: Path, stage: str = "") -> Path:
    """A fresh, marked `<dest>.partial` to write into before `publish_dir`; a leftover one of a
    killed run is deleted only if longdoc wrote it."""
    staging = _sibling(dest, ".partial")
    remove_own_dir(staging, stage)
    staging.mkdir(parents=True)
    mark_output_dir(staging, stage or "longdoc")
    return staging


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


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' per-weight load report and progress bar for loads where a fresh
    task head is expected (MLM checkpoint -> classifier); real problems still raise."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()
