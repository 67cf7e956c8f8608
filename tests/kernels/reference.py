"""An independent float64 reference for attention, written from the spec, not from the package.

The masks are built element by element from the definitions in issue 3 so that a mistake in a
pattern's ``.mask`` cannot hide behind the same mistake in the reference.
"""

from __future__ import annotations

import math

import torch

from longdoc.kernels import BlockLocal, Dense, Fixed, SlidingWindow, Strided


def allowed_pair(pattern, i: int, j: int, head: int) -> bool:
    if isinstance(pattern, SlidingWindow):
        d = pattern.dilation[head] if isinstance(pattern.dilation, tuple) else pattern.dilation
        ok = abs(i - j) <= pattern.window * d and (i - j) % d == 0
        return ok and (j <= i or not pattern.causal)
    if isinstance(pattern, BlockLocal):
        return abs(i // pattern.block - j // pattern.block) <= pattern.neighbors
    if isinstance(pattern, Strided):
        s = pattern.stride
        if pattern.causal:
            return j <= i and (i - j <= s or (i - j) % s == 0)
        return abs(i - j) <= s or (i - j) % s == 0
    if isinstance(pattern, Fixed):
        b, c = pattern.block, pattern.summary
        ok = i // b == j // b or j % b >= b - c
        return ok and (j <= i or not pattern.causal)
    if isinstance(pattern, Dense):
        return j <= i or not pattern.causal
    raise TypeError(pattern)


def brute_mask(pattern, n: int, heads: int) -> torch.Tensor:
    """``(heads, n, n)`` by Python loops: only for small n."""
    m = torch.zeros(heads, n, n, dtype=torch.bool)
    for h in range(heads):
        for i in range(n):
            for j in range(n):
                m[h, i, j] = allowed_pair(pattern, i, j, h)
    return m


def vector_mask(pattern, n: int, heads: int) -> torch.Tensor:
    """The same definitions, vectorised (for long sequences), ``(heads, n, n)``."""
    i = torch.arange(n).view(-1, 1)
    j = torch.arange(n).view(1, -1)
    masks = []
    for h in range(heads):
        if isinstance(pattern, SlidingWindow):
            dil = pattern.dilation
            d = dil[h] if isinstance(dil, tuple) else dil
            m = ((i - j).abs() <= pattern.window * d) & ((i - j) % d == 0)
            if pattern.causal:
                m &= j <= i
        elif isinstance(pattern, BlockLocal):
            m = (i // pattern.block - j // pattern.block).abs() <= pattern.neighbors
        elif isinstance(pattern, Strided):
            s = pattern.stride
            m = ((i - j).abs() <= s) | ((i - j) % s == 0)
            if pattern.causal:
                m &= j <= i
        elif isinstance(pattern, Fixed):
            b, c = pattern.block, pattern.summary
            m = (i // b == j // b) | (j % b >= b - c)
            if pattern.causal:
                m &= j <= i
        else:
            m = (j <= i) if pattern.causal else torch.ones(n, n, dtype=torch.bool)
        masks.append(m)
    return torch.stack(masks)


def reference_attention(q, k, v, pattern, global_mask=None, key_padding_mask=None):
    """float64 attention per the spec; q, k, v ``(B, n, H, D)`` of any float dtype."""
    b, n, h, d = q.shape
    q, k, v = (x.double() for x in (q, k, v))
    allowed = vector_mask(pattern, n, h).unsqueeze(0).expand(b, h, n, n).clone()
    if global_mask is not None:
        allowed |= global_mask[:, None, :, None] | global_mask[:, None, None, :]
    if key_padding_mask is not None:
        allowed &= ~key_padding_mask[:, None, None, :]
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)
    scores = torch.where(allowed, scores, torch.tensor(-math.inf, dtype=torch.float64))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(scores - row_max)  # exp(-inf) = 0 for disallowed pairs
    denom = e.sum(dim=-1, keepdim=True)
    probs = e / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.einsum("bhij,bjhd->bihd", probs, v)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Max absolute error relative to the reference's largest magnitude."""
    scale = ref.double().abs().max().clamp_min(1e-12)
    return ((out.double() - ref.double()).abs().max() / scale).item()
