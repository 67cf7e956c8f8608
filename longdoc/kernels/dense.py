"""Dense attention: the ``dense`` backend (the oracle) and the fused ``sdpa`` path.

* ``dense_attention``: masked full attention, written out. The oracle every other backend must
  match. It materialises the ``(batch, heads, seq, seq)`` score matrix, so it is only for tests,
  short sequences and the patterns no structured backend covers.
* ``fused_attention``: the same function in one call of PyTorch's fused
  ``scaled_dot_product_attention`` (the flash-attention CPU kernel, forward and backward; no
  score matrix in memory). With no mask at all when the pattern covers the whole sequence and
  nothing is padding (plain full attention, what RoBERTa runs), else a boolean
  ``(batch, heads or 1, seq, seq)`` mask. ``auto`` uses it for short inputs (see
  ``kernels.api``), where a window covers (nearly) everything and a band saves no work.
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


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    global_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``dense_attention`` in one fused SDPA call on ``(batch, seq, heads, dim)`` tensors.

    When the pattern covers the sequence, global tokens change nothing (every pair is allowed
    already): only padding keys are masked. A query with no usable key gets a fully open mask
    row (a finite softmax: no NaN in the forward or the backward) and is zeroed afterwards.
    """
    batch, seq, heads, dim = q.shape
    cdt = compute_dtype(q.dtype)
    qt, kt, vt = (x.transpose(1, 2).to(cdt) for x in (q, k, v))
    if pattern.covers(seq):
        allowed = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
    else:
        allowed = allowed_mask(pattern, seq, heads, global_mask, key_padding_mask, q.device)
    if allowed is None:
        out = F.scaled_dot_product_attention(qt, kt, vt)
    else:
        has_any = allowed.any(dim=-1, keepdim=True)
        if bool(has_any.all()):
            out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=allowed)
        else:
            out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=allowed | ~has_any)
            out = out * has_any.to(out.dtype)
    return out.transpose(1, 2).to(q.dtype)
