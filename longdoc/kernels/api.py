"""``attention()``: input checks and backend dispatch.

Backends:

* ``dense``: masked full attention, any pattern; the oracle (O(seq^2) memory).
* ``sdpa``: the same in one fused ``scaled_dot_product_attention`` call (no score matrix; a
  boolean ``seq x seq`` mask unless the pattern covers the sequence; see ``kernels.dense``).
* ``torch``: banded pure PyTorch, O(seq * window) memory, any device; ``SlidingWindow`` (with
  dilation, per-head dilation, causal) and ``BlockLocal``; ``Strided`` and ``Fixed`` as a band or
  block plus their long-range part (O(seq * (s + seq/s)) memory, never seq x seq).
* ``tvm``: TVM-compiled sliding-window kernels (see ``kernels.tvm_backend``).
* ``auto``: ``sdpa`` for short inputs (``fused_dense_pays``: the pattern covers the sequence,
  or its band spans it) and for ``Dense``; else ``tvm`` where it is eligible (CPU calls that
  need no gradient: see ``kernels.tvm_backend.AUTO_ELIGIBLE``) and its kernel is already cached
  for the device/dtype/head_dim; else ``torch`` (``SlidingWindow``, ``BlockLocal``,
  ``Strided``, ``Fixed``).
"""

from __future__ import annotations

import importlib.util

import torch

from . import torch_backend
from .dense import dense_attention, fused_attention
from .patterns import BlockLocal, Dense, Pattern, SlidingWindow

BACKENDS = ("auto", "dense", "sdpa", "torch", "tvm")


def available_backends() -> tuple[str, ...]:
    """Backends usable in this environment (``tvm`` only if the package is installed; checking
    does not import it)."""
    names = ["dense", "sdpa", "torch"]
    if importlib.util.find_spec("tvm") is not None:
        names.append("tvm")
    return tuple(names)


def _check_inputs(q, k, v, pattern, global_mask, key_padding_mask) -> None:
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a kernels pattern (SlidingWindow, ...), got {pattern!r}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a (batch, seq, heads, head_dim) tensor")
        if x.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            raise ValueError(f"{name} has unsupported dtype {x.dtype}; use float32 or bfloat16")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {v.shape}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    b, n, h, _ = q.shape
    if n < 1:
        raise ValueError("sequence length must be >= 1")
    if pattern.heads is not None and pattern.heads != h:
        raise ValueError(f"{pattern} is defined for {pattern.heads} heads, the input has {h}")
    for name, m in (("global_mask", global_mask), ("key_padding_mask", key_padding_mask)):
        if m is None:
            continue
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != (b, n):
            raise ValueError(f"{name} must be a bool tensor of shape (batch, seq) = ({b}, {n})")


def fused_dense_pays(pattern: Pattern, seq_len: int) -> bool:
    """Whether one fused dense call (``sdpa``) is the cheaper way to compute ``pattern`` at this
    length: the pattern covers the sequence (plain full attention: nothing for a band to skip),
    or its band spans it (an undilated bidirectional window of ``2w+1 >= seq`` keys, blocks
    reaching ``(2 neighbors + 1) * block >= seq`` positions), where the dense call does at most
    about 4/3 of the band's work but in one fused kernel instead of chunks or row tiles that
    each overhang the sequence; or ``Dense``, which no structured backend serves."""
    if isinstance(pattern, Dense) or pattern.covers(seq_len):
        return True
    if isinstance(pattern, SlidingWindow):
        bidirectional = not pattern.causal and pattern.undilated
        return bidirectional and seq_len <= 2 * pattern.window + 1
    if isinstance(pattern, BlockLocal):
        return seq_len <= (2 * pattern.neighbors + 1) * pattern.block
    return False


def select_backend(q: torch.Tensor, pattern: Pattern, needs_grad: bool) -> str:
    """The backend ``auto`` picks for this call (exposed for logging and tests)."""
    from . import tvm_backend

    if fused_dense_pays(pattern, q.shape[1]):
        return "sdpa"
    if tvm_backend.usable_cached(q, pattern, needs_grad):
        return "tvm"
    if torch_backend.supports(pattern):
        return "torch"
    return "dense"


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    *,
    global_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    backend: str = "auto",
    global_rows: bool = True,
    mask_cache: dict | None = None,
) -> torch.Tensor:
    """Local/sparse + global attention with scale ``1/sqrt(head_dim)``.

    ``q, k, v``: ``(batch, seq, heads, head_dim)``, float32 or bfloat16, any ``seq >= 1``.
    ``global_mask``, ``key_padding_mask``: bool ``(batch, seq)``, True = global / padding.
    Query ``i`` may use key ``j`` iff (``pattern`` allows ``(i, j)`` for that head, or ``i`` or
    ``j`` is global) and ``j`` is not padding; a query with no usable key outputs zeros.
    Returns ``(batch, seq, heads, head_dim)`` in the input dtype; differentiable in q, k, v.

    ``global_rows=False``: the rows of the global queries are zero (and pass no gradient) instead
    of computed, for a caller that computes them itself: Longformer's global queries use their
    own projections (``query_global``, ...), so its model overwrites these rows anyway and the
    ``torch`` and ``tvm`` backends skip their work (forward and backward); ``dense`` and
    ``sdpa`` compute every row anyway and zero these afterwards.

    ``mask_cache``: a dict that calls with the same ``global_mask`` and ``key_padding_mask``
    share (a model's layers in one forward): ``sdpa`` builds its mask once there instead of
    once per call. Other backends ignore it.
    """
    _check_inputs(q, k, v, pattern, global_mask, key_padding_mask)
    if global_mask is not None:
        global_mask = global_mask.to(q.device)
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask.to(q.device)
    if backend == "auto":
        needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
        backend = select_backend(q, pattern, needs_grad)
    if backend in ("dense", "sdpa"):
        if backend == "dense":
            out = dense_attention(q, k, v, pattern, global_mask, key_padding_mask)
        else:
            out = fused_attention(q, k, v, pattern, global_mask, key_padding_mask, mask_cache)
        if global_rows or global_mask is None:
            return out
        return torch_backend.zero_global_rows(out, global_mask)
    if backend == "torch":
        if not torch_backend.supports(pattern):
            raise ValueError(
                f"backend 'torch' does not support pattern {pattern}; use backend='dense' "
                "(or 'auto', which falls back to it)"
            )
        return torch_backend.torch_attention(
            q, k, v, pattern, global_mask, key_padding_mask, global_rows=global_rows
        )
    if backend == "tvm":
        from . import tvm_backend

        return tvm_backend.tvm_attention(
            q, k, v, pattern, global_mask, key_padding_mask, global_rows=global_rows
        )
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
