"""Attention patterns: tiny frozen dataclasses that say which (query, key) pairs may interact.

Each pattern renders its dense boolean mask with ``.mask(seq_len)`` (``True`` = allowed). The
dense mask is the *definition*: the ``dense`` backend uses it directly and every other backend is
tested against it. Backends that exploit structure (the banded ``torch`` path, the TVM kernel)
read the pattern's fields instead of the mask so they never build a ``seq x seq`` tensor.

A mask is ``(seq, seq)`` when every head uses the same pattern and ``(heads, seq, seq)`` when it
differs per head (``SlidingWindow`` with a per-head ``dilation`` tuple).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Pattern", "SlidingWindow", "BlockLocal", "Strided", "Fixed", "Dense"]


def _offsets(seq_len: int, device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    i = torch.arange(seq_len, device=device).view(-1, 1)
    j = torch.arange(seq_len, device=device).view(1, -1)
    return i, j


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


class Pattern:
    """Base class (for isinstance checks and type hints); subclasses are frozen dataclasses."""

    #: number of heads the mask is specific to (None = same for every head)
    heads: int | None = None

    def mask(self, seq_len: int, device: torch.device | str | None = None) -> torch.Tensor:
        raise NotImplementedError

    def covers(self, seq_len: int) -> bool:
        """Whether every (query, key) pair of a ``seq_len`` sequence is allowed, for every head:
        then the pattern is plain full attention at this length (``.mask`` is all True)."""
        raise NotImplementedError


@dataclass(frozen=True)
class SlidingWindow(Pattern):
    """Longformer's local attention, optionally dilated and/or causal.

    Query ``i`` may see key ``j`` iff ``|i - j| <= window * dilation`` and
    ``(i - j) % dilation == 0`` (and ``j <= i`` when ``causal``). ``window`` is *one-sided*: a
    query sees up to ``2 * window + 1`` keys. ``dilation`` is an int or one int per head
    (Longformer dilates some heads and not others).
    """

    window: int
    dilation: int | tuple[int, ...] = 1
    causal: bool = False

    def __post_init__(self) -> None:
        _check_int("SlidingWindow.window", self.window, 0)
        if isinstance(self.dilation, Sequence) and not isinstance(self.dilation, str):
            dil = tuple(self.dilation)
            if not dil:
                raise ValueError("SlidingWindow.dilation tuple must not be empty")
            for d in dil:
                _check_int("SlidingWindow.dilation", d, 1)
            object.__setattr__(self, "dilation", dil)
        else:
            _check_int("SlidingWindow.dilation", self.dilation, 1)

    @property
    def heads(self) -> int | None:  # type: ignore[override]
        return len(self.dilation) if isinstance(self.dilation, tuple) else None

    @property
    def undilated(self) -> bool:
        """Every head sees every offset in its window (dilation 1)."""
        return set(self.dilation if isinstance(self.dilation, tuple) else (self.dilation,)) == {1}

    def dilations(self, heads: int) -> tuple[int, ...]:
        """The dilation of each of ``heads`` heads (checks a per-head tuple's length)."""
        if isinstance(self.dilation, tuple):
            if len(self.dilation) != heads:
                raise ValueError(
                    f"{self} has {len(self.dilation)} per-head dilations but the input has "
                    f"{heads} heads"
                )
            return self.dilation
        return (self.dilation,) * heads

    def mask(self, seq_len: int, device: torch.device | str | None = None) -> torch.Tensor:
        i, j = _offsets(seq_len, device)
        diff = i - j
        if isinstance(self.dilation, tuple):
            d = torch.tensor(self.dilation, device=device).view(-1, 1, 1)
        else:
            d = torch.tensor(self.dilation, device=device)
        allowed = diff.abs() <= self.window * d
        if not self.undilated:  # undilated, every offset in the window is allowed
            allowed = allowed & (torch.remainder(diff, d) == 0)
        if self.causal:
            allowed = allowed & (diff >= 0)
        return allowed

    def covers(self, seq_len: int) -> bool:
        if seq_len <= 1:
            return True
        return not self.causal and self.undilated and self.window >= seq_len - 1


@dataclass(frozen=True)
class BlockLocal(Pattern):
    """Disjoint blocks of ``block`` positions; a query sees its own block and ``neighbors``
    blocks on each side (Xiong et al. 2022, "Simple Local Attentions Remain Competitive")."""

    block: int
    neighbors: int = 0

    def __post_init__(self) -> None:
        _check_int("BlockLocal.block", self.block, 1)
        _check_int("BlockLocal.neighbors", self.neighbors, 0)

    def mask(self, seq_len: int, device: torch.device | str | None = None) -> torch.Tensor:
        i, j = _offsets(seq_len, device)
        return (i // self.block - j // self.block).abs() <= self.neighbors

    def covers(self, seq_len: int) -> bool:
        return (seq_len - 1) // self.block <= self.neighbors


@dataclass(frozen=True)
class Strided(Pattern):
    """Sparse Transformer strided pattern (Child et al. 2019), both heads' sets combined.

    Head 1 sees the previous ``stride`` positions (``0 <= i - j <= stride``), head 2 every
    ``stride``-th position (``(i - j) % stride == 0``). Non-causal: the same sets mirrored.
    """

    stride: int
    causal: bool = True

    def __post_init__(self) -> None:
        _check_int("Strided.stride", self.stride, 1)

    def mask(self, seq_len: int, device: torch.device | str | None = None) -> torch.Tensor:
        i, j = _offsets(seq_len, device)
        diff = i - j
        allowed = (diff.abs() <= self.stride) | (torch.remainder(diff, self.stride) == 0)
        if self.causal:
            allowed = allowed & (diff >= 0)
        return allowed

    def covers(self, seq_len: int) -> bool:
        if seq_len <= 1:
            return True
        return not self.causal and (self.stride >= seq_len - 1 or self.stride == 1)


@dataclass(frozen=True)
class Fixed(Pattern):
    """Sparse Transformer fixed pattern (Child et al. 2019), both heads' sets combined.

    Head 1 sees its own block of ``block`` positions (``i // block == j // block``), head 2 the
    last ``summary`` positions of every block (``j % block >= block - summary``).
    """

    block: int
    summary: int
    causal: bool = True

    def __post_init__(self) -> None:
        _check_int("Fixed.block", self.block, 1)
        _check_int("Fixed.summary", self.summary, 1)
        if self.summary > self.block:
            raise ValueError(f"Fixed.summary ({self.summary}) must be <= block ({self.block})")

    def mask(self, seq_len: int, device: torch.device | str | None = None) -> torch.Tensor:
        i, j = _offsets(seq_len, device)
        allowed = (i // self.block == j // self.block) | (
            j % self.block >= self.block - self.summary
        )
        if self.causal:
            allowed = allowed & (j <= i)
        return allowed

    def covers(self, seq_len: int) -> bool:
        if seq_len <= 1:
            return True
        return not self.causal and (seq_len <= self.block or self.summary == self.block)


@dataclass(frozen=True)
class Dense(Pattern):
    """Full attention (optionally causal)."""

    causal: bool = False

    def mask(self, seq_len: int, device: torch.device | str | None = None) -> torch.Tensor:
        i, j = _offsets(seq_len, device)
        if self.causal:
            return j <= i
        return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device)

    def covers(self, seq_len: int) -> bool:
        return seq_len <= 1 or not self.causal
