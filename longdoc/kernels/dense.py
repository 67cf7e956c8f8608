"""Dense attention: the ``dense`` backend (the oracle) and the fused ``sdpa`` path.

* ``dense_attention``: masked full attention, written out. The oracle every other backend must
  match. It materialises the ``(batch, heads, seq, seq)`` score matrix, so it is only for tests,
  short sequences and the patterns no structured backend covers.
* ``fused_attention``: the same function in one call of PyTorch's fused
  ``scaled_dot_product_attention`` (the flash-attention CPU kernel, forward and backward; no
  score matrix in memory). With no mask at all when the pattern covers the whole sequence and
  nothing is padding (plain full attention, what RoBERTa runs), a padding row
  ``(batch, 1, 1, seq)`` when only padding is masked, else a ``(batch or 1, heads or 1, seq,
  seq)`` one: additive masks, which callers may keep across calls. ``auto`` uses it for short
  inputs (see ``kernels.api``), where a window covers (nearly) everything and a band saves no
  work.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .patterns import Pattern


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are computed in float32 (softmax in bf16 loses too much); float32
    and float64 stay as they are."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def allowed_mask(
    pattern: Pattern,
    seq_len: int,
    heads: int,
    global_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """The full ``(batch or 1, heads or 1, seq, seq)`` boolean mask of allowed (query, key)."""
    pat = pattern.mask(seq_len, device=device)
    if pat.dim() == 3 and pat.shape[0] != heads:
        raise ValueError(f"{pattern} gives a mask for {pat.shape[0]} heads, input has {heads}")
    allowed = pat.view(1, -1, seq_len, seq_len) if pat.dim() == 3 else pat.view(1, 1, *pat.shape)
    if global_mask is not None:
        g = global_mask
        allowed = allowed | g[:, None, :, None] | g[:, None, None, :]
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    return allowed


def masked_softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor
) -> torch.Tensor:
    """``q, k, v``: ``(batch, heads, seq, dim)``; ``allowed`` broadcastable to the scores.

    Disallowed scores get the dtype's most negative finite value (not -inf, which would turn a
    fully masked row into NaN and poison the backward pass); such rows are zeroed at the end.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v)
    has_any = allowed.any(dim=-1, keepdim=True)
    return out * has_any.to(out.dtype)


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    global_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense masked attention on ``(batch, seq, heads, dim)`` tensors."""
    batch, seq, heads, dim = q.shape
    allowed = allowed_mask(pattern, seq, heads, global_mask, key_padding_mask, q.device)
    cdt = compute_dtype(q.dtype)
    qt, kt, vt = (x.transpose(1, 2).to(cdt) for x in (q, k, v))
    out = masked_softmax_attention(qt, kt, vt, allowed)
    return out.transpose(1, 2).to(q.dtype)


def fused_mask(
    pattern: Pattern,
    seq_len: int,
    heads: int,
    global_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``fused_attention``'s SDPA mask and the queries with no usable key: ``(bias, empty)``.

    ``bias`` is additive (0 allowed, -inf not), what SDPA turns a boolean mask into on every
    call, so a caller that keeps it for several calls converts once; None when nothing is
    masked. When the pattern covers the sequence, global tokens change nothing (every pair is
    allowed already) and only padding keys are masked: one ``(batch, 1, 1, seq)`` row. ``empty``
    (``(batch, heads or 1, seq, 1)`` bool, None if every query has a key) marks queries with no
    usable key; their mask rows are left open (a finite softmax, no NaN forward or backward)
    and their outputs are zeroed afterwards.
    """
    if pattern.covers(seq_len):
        if key_padding_mask is None:
            return None, None
        allowed = ~key_padding_mask[:, None, None, :]
    else:
        allowed = allowed_mask(pattern, seq_len, heads, global_mask, key_padding_mask, device)
    has_any = allowed.any(dim=-1, keepdim=True)
    empty = None if bool(has_any.all()) else ~has_any
    if empty is not None:
        allowed = allowed | empty
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, float("-inf")), empty


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    global_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    mask_cache: dict | None = None,
) -> torch.Tensor:
    """``dense_attention`` in one fused SDPA call on ``(batch, seq, heads, dim)`` tensors, with
    no mask at all when the pattern covers the sequence and nothing is padding (see
    ``fused_mask``). ``mask_cache``: a dict shared by calls that have the same global and
    padding masks (a model's layers in one forward); the mask is built on the first call for
    each pattern, length, dtype and device and reused by the others.
    """
    batch, seq, heads, dim = q.shape
    cdt = compute_dtype(q.dtype)
    qt, kt, vt = (x.transpose(1, 2).to(cdt) for x in (q, k, v))
    key = (pattern, seq, heads, cdt, q.device)
    if mask_cache is not None and key in mask_cache:
        bias, empty = mask_cache[key]
    else:
        bias, empty = fused_mask(pattern, seq, heads, global_mask, key_padding_mask, cdt, q.device)
        if mask_cache is not None:
            mask_cache[key] = bias, empty
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias)
    if empty is not None:
        out = out.masked_fill(empty, 0.0)
    return out.transpose(1, 2).to(q.dtype)
