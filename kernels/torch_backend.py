"""The ``torch`` backend: banded local + global attention in pure PyTorch, memory O(seq * window).

How it avoids the ``seq x seq`` matrix:

* The sequence is cut into chunks of ``c`` positions (``c >= window``). Chunk ``t`` only needs
  keys from chunks ``t - L .. t + R``; those are gathered into a ``(L+1+R)*c`` key window per
  chunk, and every chunk becomes one batch entry of a fused ``scaled_dot_product_attention``
  call (PyTorch's flash-attention CPU kernel, forward and backward) with an additive mask that
  encodes the band, padding and global keys. Cost per query: ``(L+1+R)*c + G`` keys.
* Dilation ``d`` is folded away: positions ``r, r+d, r+2d, ...`` form an undilated sequence, so
  the ``d`` residue classes become extra batch entries of a plain sliding window. Heads with
  different dilations are processed in one group per distinct dilation.
* Global keys (``global_mask[b, j]``) are gathered once (``G`` = most global tokens in any batch
  entry) and appended to every chunk's key window, so each query takes *one* softmax over
  band keys + global keys. Global keys are removed from the band so a key that is both in the
  window and global is counted once.
* Global queries see every non-padding key: their ``G`` rows are computed against the whole
  sequence (``O(G * seq)``) and written over the local result.

Everything is a handful of batched tensor ops (a loop only over the few distinct dilations), so
autograd gives the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .dense import compute_dtype
from .patterns import BlockLocal, Pattern, SlidingWindow

LocalFn = Callable[..., torch.Tensor]

#: smallest chunk used for narrow windows: tiny chunks mean many tiny matmuls.
MIN_CHUNK = 16


def supports(pattern: Pattern) -> bool:
    return isinstance(pattern, (SlidingWindow, BlockLocal))


def _global_index(
    global_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Positions of the global tokens, ``(batch, G)``, global ones first, and their validity."""
    if global_mask is None:
        return None
    count = int(global_mask.sum(dim=1).max().item()) if global_mask.numel() else 0
    if count == 0:
        return None
    order = torch.argsort((~global_mask).to(torch.int8), dim=1, stable=True)[:, :count]
    valid = global_mask.gather(1, order)
    return order, valid


class _Windows(torch.autograd.Function):
    """``x``: ``(B, nc + span - 1, c, ...)`` -> ``(B, nc, span * c, ...)``; window ``t`` is chunks
    ``t .. t + span - 1``. Autograd through ``cat`` of shifted slices would allocate and zero a
    full-size gradient per slice; this backward accumulates the ``span`` shifted slices into one.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, span: int) -> torch.Tensor:
        nc = x.shape[1] - span + 1
        ctx.span = span
        return torch.cat([x[:, s : s + nc] for s in range(span)], dim=2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        span = ctx.span
        b, nc, width = grad.shape[:3]
        c = width // span
        out = grad.new_zeros(b, nc + span - 1, c, *grad.shape[3:])
        for s in range(span):
            out[:, s : s + nc] += grad[:, :, s * c : (s + 1) * c]
        return out, None


def _neg(dtype: torch.dtype) -> float:
    """Bias for disallowed pairs: finite (``-inf`` would turn a fully masked row into NaN and
    poison the backward pass); such rows are zeroed explicitly."""
    return torch.finfo(dtype).min


def _banded(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_ok: torch.Tensor,
    chunk: int,
    left: int,
    right: int,
    band: torch.Tensor,
    gk: torch.Tensor | None,
    gv: torch.Tensor | None,
    g_ok: torch.Tensor | None,
) -> torch.Tensor:
    """Chunked local attention (+ appended global keys) on ``(B, m, H, D)`` tensors.

    ``key_ok``: ``(B, m)`` keys usable in the band; ``band``: ``(chunk, (left+1+right)*chunk)``
    allowed (query-in-chunk, key-in-window) pairs; ``gk, gv``: ``(B, G, H, D)``; ``g_ok``:
    ``(B, G)``. Each chunk is one "batch" entry of a fused ``scaled_dot_product_attention`` call
    with an additive mask, so forward and backward run in PyTorch's flash-attention CPU kernel.
    """
    b, m, h, d = q.shape
    nc = -(-m // chunk)
    mp = nc * chunk
    span = left + 1 + right
    width = span * chunk
    pads = (0, 0, 0, 0, left * chunk, mp - m + right * chunk)
    kp, vp = (F.pad(x, pads).view(b, nc + span - 1, chunk, h, d) for x in (k, v))
    kw = _Windows.apply(kp, span)  # (B, nc, W, H, D)
    vw = _Windows.apply(vp, span)
    okp = F.pad(key_ok, (left * chunk, mp - m + right * chunk), value=False)
    okp = okp.view(b, nc + span - 1, chunk)
    kok = torch.cat([okp[:, s : s + nc] for s in range(span)], dim=2)  # (B, nc, W)
    mask = band.view(1, 1, chunk, width) & kok.view(b, nc, 1, width)
    if gk is not None:
        g = gk.shape[1]
        kw = torch.cat([kw, gk.unsqueeze(1).expand(b, nc, g, h, d)], dim=2)
        vw = torch.cat([vw, gv.unsqueeze(1).expand(b, nc, g, h, d)], dim=2)
        gmask = g_ok.view(b, 1, 1, g).expand(b, nc, chunk, g)
        mask = torch.cat([mask.expand(b, nc, chunk, width), gmask], dim=-1)
    keys = kw.shape[2]
    qc = F.pad(q, (0, 0, 0, 0, 0, mp - m)).view(b * nc, chunk, h, d).transpose(1, 2)
    kw = kw.view(b * nc, keys, h, d).transpose(1, 2)
    vw = vw.view(b * nc, keys, h, d).transpose(1, 2)
    mask = mask.expand(b, nc, chunk, keys).reshape(b * nc, 1, chunk, keys)
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(
        ~mask, _neg(q.dtype)
    )
    out = F.scaled_dot_product_attention(qc, kw, vw, attn_mask=bias)  # (B*nc, H, c, D)
    out = out * mask.any(dim=-1, keepdim=True).to(out.dtype)
    return out.transpose(1, 2).reshape(b, mp, h, d)[:, :m]


def _window_band(window: int, chunk: int, left: int, right: int, causal: bool, device):
    a = torch.arange(chunk, device=device).view(-1, 1)
    t = torch.arange((left + 1 + right) * chunk, device=device).view(1, -1)
    rel = a + left * chunk - t  # query index - key index
    band = rel.abs() <= window
    if causal:
        band = band & (rel >= 0)
    return band


def _fold(x: torch.Tensor, d: int) -> torch.Tensor:
    """``(B, n, ...)`` -> ``(B*d, ceil(n/d), ...)``: residue class r becomes batch b*d+r."""
    if d == 1:
        return x
    b, n = x.shape[:2]
    m = -(-n // d)
    rest = x.shape[2:]
    if m * d != n:
        x = F.pad(x, [0, 0] * len(rest) + [0, m * d - n])
    return x.reshape(b, m, d, *rest).movedim(2, 1).reshape(b * d, m, *rest)


def _unfold(x: torch.Tensor, d: int, n: int) -> torch.Tensor:
    if d == 1:
        return x
    bd, m = x.shape[:2]
    rest = x.shape[2:]
    x = x.reshape(bd // d, d, m, *rest).movedim(1, 2)
    return x.reshape(bd // d, m * d, *rest)[:, :n]


def torch_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    global_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    *,
    chunk: int | None = None,
    local: LocalFn | None = None,
) -> torch.Tensor:
    """Banded attention on ``(batch, seq, heads, dim)`` tensors (see the module docstring).

    ``local`` replaces the chunked band computation for ``SlidingWindow`` (the TVM backend
    plugs its kernel in here and reuses the dilation folding and global-token handling):
    it gets the folded, undilated ``(B', m, h, D)`` q, k, v, the ``(B', m)`` usable band keys,
    the global keys/values ``(B', G, h, D)`` and their validity ``(B', G)`` (or ``None``), and
    returns the ``(B', m, h, D)`` output.
    """
    if not supports(pattern):
        raise ValueError(f"backend 'torch' does not support pattern {pattern}")
    bsz, n, heads, dim = q.shape
    device = q.device
    cdt = compute_dtype(q.dtype)
    qt, kt, vt = (x.to(cdt) for x in (q, k, v))

    pad = key_padding_mask
    if pad is None:
        pad = torch.zeros(bsz, n, dtype=torch.bool, device=device)
    gidx = _global_index(global_mask)
    key_ok = ~pad if gidx is None else ~pad & ~global_mask

    gk = gv = g_ok = None
    if gidx is not None:
        order, valid = gidx
        g = order.shape[1]
        ix = order.view(bsz, g, 1, 1).expand(bsz, g, heads, dim)
        gk, gv = kt.gather(1, ix), vt.gather(1, ix)
        g_ok = valid & ~pad.gather(1, order)

    if isinstance(pattern, SlidingWindow):
        groups: dict[int, list[int]] = {}
        for head, dil in enumerate(pattern.dilations(heads)):
            groups.setdefault(dil, []).append(head)
        window, causal = pattern.window, pattern.causal
    else:
        groups = {1: list(range(heads))}

    outs = []
    for dil, head_ids in groups.items():
        sel = slice(None) if len(head_ids) == heads else torch.tensor(head_ids, device=device)
        qh, kh, vh = qt[:, :, sel], kt[:, :, sel], vt[:, :, sel]
        m = -(-n // dil)
        if isinstance(pattern, SlidingWindow):
            c = max(1, min(chunk or max(window, MIN_CHUNK), m))
            nc = -(-m // c)
            reach = min(-(-window // c), nc - 1)
            left, right = reach, 0 if causal else reach
            band = _window_band(window, c, left, right, causal, device)
        else:
            c = pattern.block
            nc = -(-m // c)
            left = right = min(pattern.neighbors, nc - 1)
            band = torch.ones(c, (left + 1 + right) * c, dtype=torch.bool, device=device)
        gkh = gvh = gok = None
        if gk is not None:
            gkh, gvh, gok = gk[:, :, sel], gv[:, :, sel], g_ok
            if dil > 1:
                gkh, gvh, gok = (x.repeat_interleave(dil, dim=0) for x in (gkh, gvh, gok))
        if local is not None:
            o = local(
                _fold(qh, dil), _fold(kh, dil), _fold(vh, dil), _fold(key_ok, dil), gkh, gvh, gok
            )
            outs.append((head_ids, _unfold(o, dil, n)))
            continue
        o = _banded(
            _fold(qh, dil),
            _fold(kh, dil),
            _fold(vh, dil),
            _fold(key_ok, dil),
            c,
            left,
            right,
            band,
            gkh,
            gvh,
            gok,
        )
        outs.append((head_ids, _unfold(o, dil, n)))

    if len(outs) == 1:
        out = outs[0][1]
    else:
        out = torch.cat([o for _, o in outs], dim=2)
        order_heads = [h for ids, _ in outs for h in ids]
        inverse = torch.empty(heads, dtype=torch.long)
        inverse[torch.tensor(order_heads)] = torch.arange(heads)
        out = out[:, :, inverse.to(device)]

    if gidx is not None:
        out = _global_rows(qt, kt, vt, out, order, valid, pad, global_mask)
    return out.to(q.dtype)


def _global_rows(qt, kt, vt, out, order, valid, pad, global_mask):
    """Global queries attend to every non-padding key; overwrite their rows of ``out``.

    All tensors ``(B, n, H, D)``; costs ``O(G * n)`` for ``G`` global tokens.
    """
    bsz, n, heads, dim = qt.shape
    g = order.shape[1]
    ix = order.view(bsz, g, 1, 1).expand(bsz, g, heads, dim)
    qg = qt.gather(1, ix)
    allowed = ~pad.view(bsz, 1, 1, n)
    bias = torch.zeros(allowed.shape, dtype=qt.dtype, device=qt.device)
    bias = bias.masked_fill_(~allowed, _neg(qt.dtype))
    og = F.scaled_dot_product_attention(
        qg.transpose(1, 2), kt.transpose(1, 2), vt.transpose(1, 2), attn_mask=bias
    ).transpose(1, 2)  # (B, G, H, D)
    og = og * allowed.any(dim=-1).view(bsz, 1, 1, 1).to(og.dtype)
    # nonzero() lists (b, position) in the same order as the valid slots of ``order``
    bi, pi = global_mask.nonzero(as_tuple=True)
    return out.index_put((bi, pi), og[valid])
