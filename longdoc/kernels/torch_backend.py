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
* ``Strided`` and ``Fixed`` (Sparse Transformer) are a band or block (chunked as above) plus a
  long-range part (same residue mod ``stride``, folded like dilation; the ``summary`` columns,
  gathered once). Each part returns its output and log-sum-exp and the parts are merged exactly
  (one softmax over the union, no key counted twice): memory ``O(seq * (s + seq/s))``.

Everything is a handful of batched tensor ops (a loop only over the few distinct dilations), so
autograd gives the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .dense import compute_dtype
from .patterns import BlockLocal, Fixed, Pattern, SlidingWindow, Strided

LocalFn = Callable[..., torch.Tensor]

#: smallest chunk used for narrow windows: tiny chunks mean many tiny matmuls.
MIN_CHUNK = 16


def supports(pattern: Pattern) -> bool:
    return isinstance(pattern, (SlidingWindow, BlockLocal, Strided, Fixed))


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
    band_part: LocalFn | None = None,
    global_rows: bool = True,
) -> torch.Tensor:
    """Banded attention on ``(batch, seq, heads, dim)`` tensors (see the module docstring).

    ``local`` replaces the chunked band computation for ``SlidingWindow`` (the TVM backend
    plugs its kernel in here and reuses the dilation folding and global-token handling):
    it gets the folded, undilated ``(B', m, h, D)`` q, k, v, the ``(B', m)`` usable band keys,
    the global keys/values ``(B', G, h, D)`` and their validity ``(B', G)`` (or ``None``), and
    returns the ``(B', m, h, D)`` output.

    ``band_part`` replaces the band of ``Strided`` and the own block of ``Fixed`` (the TVM
    backend's kernel again): it gets ``(q, k, v, key_ok, window, causal)`` (``Strided``) or
    ``(q, k, v, key_ok, 0, causal, block)`` (``Fixed``) on ``(B, n, H, D)`` tensors and returns
    that part's ``(out, lse)`` with ``lse = -inf`` on rows that have no usable key.

    ``global_rows=False``: the global queries' rows are zero (see ``kernels.attention``).
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

    if isinstance(pattern, (Strided, Fixed)):
        if isinstance(pattern, Strided):
            parts = _strided(qt, kt, vt, key_ok, pattern, band_part)
        else:
            parts = _fixed(qt, kt, vt, key_ok, pattern, band_part)
        if gk is not None:
            parts.append(_global_part(qt, gk, gv, g_ok))
        out = _merge(parts)
        if gidx is not None:
            out = _with_global_rows(qt, kt, vt, out, order, valid, pad, global_mask, global_rows)
        return out.to(q.dtype)

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
        out = _with_global_rows(qt, kt, vt, out, order, valid, pad, global_mask, global_rows)
    return out.to(q.dtype)


def _with_global_rows(qt, kt, vt, out, order, valid, pad, global_mask, global_rows: bool):
    if global_rows:
        return _global_rows(qt, kt, vt, out, order, valid, pad, global_mask)
    return zero_global_rows(out, global_mask)


def zero_global_rows(out: torch.Tensor, global_mask: torch.Tensor) -> torch.Tensor:
    """``out (B, n, H, D)`` with the rows of the global queries set to zero (a caller that
    computes those rows itself replaces them): in place where no gradient is recorded, else a
    copy (autograd may have saved ``out``)."""
    bi, pi = global_mask.nonzero(as_tuple=True)
    zero = out.new_zeros(())
    if out.requires_grad and torch.is_grad_enabled():
        return out.index_put((bi, pi), zero)
    return out.index_put_((bi, pi), zero)


def _global_rows(qt, kt, vt, out, order, valid, pad, global_mask):
    """Global queries attend to every non-padding key; overwrite their rows of ``out``.

    All tensors ``(B, n, H, D)``; costs ``O(G * n)`` for ``G`` global tokens.
    """
    bsz, n, heads, dim = qt.shape
    g = order.shape[1]
    ix = order.view(bsz, g, 1, 1).expand(bsz, g, heads, dim)
    qg = qt.gather(1, ix)
    allowed = ~pad.view(bsz, 1, 1, n)
    # a few query rows: a plain matmul + softmax (SDPA with a float mask over every key costs
    # more here than the work itself)
    scores = (qg.transpose(1, 2) @ kt.permute(0, 2, 3, 1)) * dim**-0.5  # (B, H, G, n)
    # (under autocast the matmuls may run in bf16: the bias must fit the scores' dtype)
    probs = scores.masked_fill(~allowed, _neg(scores.dtype)).softmax(dim=-1)
    og = (probs @ vt.transpose(1, 2)).transpose(1, 2)  # (B, G, H, D)
    og = (og * allowed.any(dim=-1).view(bsz, 1, 1, 1).to(og.dtype)).to(out.dtype)
    # nonzero() lists (b, position) in the same order as the valid slots of ``order``
    bi, pi = global_mask.nonzero(as_tuple=True)
    if out.requires_grad and torch.is_grad_enabled():
        return out.index_put((bi, pi), og[valid])  # autograd may have saved ``out``
    return out.index_put_((bi, pi), og[valid])  # inference: no copy of the whole output


# ---- Sparse Transformer patterns (Strided, Fixed) ----------------------------------------------
#
# Both patterns are the union of a *local* part (a band or a block) and a *long-range* part that
# has far fewer keys per query than the sequence (every ``stride``-th key; the ``summary`` columns
# of every block). Each part is computed on its own as ``(out, lse)`` with explicit scores over
# only its own keys, and the parts (plus the global keys) are merged exactly by log-sum-exp: the
# result is one softmax over the union, with every key counted once because each part excludes
# the keys another part already covers. Nothing is ``seq x seq``: see ``_strided`` and ``_fixed``
# for the sizes.

#: log-sum-exp of a part with no usable key: finite (no ``inf - inf`` in any gradient) and so far
#: below any real score that its weight in the merge is exactly 0.
_EMPTY_LSE = -1.0e30


def _part(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked attention over one part's keys with its log-sum-exp.

    ``q``: ``(..., H, c, D)``; ``k, v``: ``(..., H, K, D)``; ``allowed`` broadcastable to the
    ``(..., H, c, K)`` scores. Returns ``out (..., H, c, D)`` (0 on rows with no allowed key) and
    ``lse (..., H, c)`` (``_EMPTY_LSE`` on those rows).
    """
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, _neg(scores.dtype))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1))
    has_any = allowed.any(dim=-1).expand(lse.shape)
    out = torch.matmul(probs, v) * has_any.unsqueeze(-1).to(q.dtype)
    return out, torch.where(has_any, lse, torch.full_like(lse, _EMPTY_LSE))


def _merge(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """One softmax over the union of the parts' key sets: ``parts`` are ``(out (B, n, H, D),
    lse (B, n, H))`` over disjoint key sets."""
    total = torch.logsumexp(torch.stack([lse for _, lse in parts]), dim=0)
    out = sum(o * torch.exp(lse - total).unsqueeze(-1) for o, lse in parts)
    return out


def _local_part(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_ok: torch.Tensor,
    chunk: int,
    left: int,
    right: int,
    band: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked band of ``_banded`` as ``(out, lse)`` (explicit scores instead of SDPA, which
    does not return the log-sum-exp). Scores are ``(B, nc, H, chunk, (left+1+right)*chunk)``."""
    b, m, h, d = q.shape
    nc = -(-m // chunk)
    mp = nc * chunk
    span = left + 1 + right
    width = span * chunk
    pads = (0, 0, 0, 0, left * chunk, mp - m + right * chunk)
    kp, vp = (F.pad(x, pads).view(b, nc + span - 1, chunk, h, d) for x in (k, v))
    kw = _Windows.apply(kp, span).permute(0, 1, 3, 2, 4)  # (B, nc, H, W, D)
    vw = _Windows.apply(vp, span).permute(0, 1, 3, 2, 4)
    okp = F.pad(key_ok, (left * chunk, mp - m + right * chunk), value=False)
    okp = okp.view(b, nc + span - 1, chunk)
    kok = torch.cat([okp[:, s : s + nc] for s in range(span)], dim=2)  # (B, nc, W)
    allowed = band.view(1, 1, 1, chunk, width) & kok.view(b, nc, 1, 1, width)
    qc = F.pad(q, (0, 0, 0, 0, 0, mp - m)).view(b, nc, chunk, h, d).permute(0, 1, 3, 2, 4)
    out, lse = _part(qc, kw, vw, allowed)  # (B, nc, H, c, D), (B, nc, H, c)
    out = out.permute(0, 1, 3, 2, 4).reshape(b, mp, h, d)[:, :m]
    lse = lse.permute(0, 1, 3, 2).reshape(b, mp, h)[:, :m]
    return out, lse


def _global_part(q, gk, gv, g_ok) -> tuple[torch.Tensor, torch.Tensor]:
    """Every query against the ``G`` global keys: ``(B, n, H, D)``, ``(B, n, H)``."""
    out, lse = _part(
        q.transpose(1, 2),
        gk.transpose(1, 2),
        gv.transpose(1, 2),
        g_ok.view(-1, 1, 1, g_ok.shape[1]),
    )
    return out.transpose(1, 2), lse.transpose(1, 2)


def _strided(
    q, k, v, key_ok, pattern: Strided, band_part: LocalFn | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``Strided(s)``: band ``|i-j| <= s`` + every key with ``(i-j) % s == 0`` outside the band.

    The long-range part lives within one residue class mod ``s``: folding by ``s`` (as dilation
    is folded) makes it attention among the ``m = ceil(n/s)`` members of each class, excluding
    folded distance <= 1 (original distance <= s: the band's). Scores: ``n * 3c`` for the band
    (chunk ``c >= s``) plus ``n * m`` for the classes: ``O(n * (s + n/s))``, ``O(n^1.5)`` at the
    usual ``s ~ sqrt(n)``.
    """
    b, n, h, d = q.shape
    s, causal = pattern.stride, pattern.causal
    c = max(1, min(max(s, MIN_CHUNK), n))
    nc = -(-n // c)
    reach = min(-(-s // c), nc - 1)
    left, right = reach, 0 if causal else reach
    if band_part is None:
        band = _window_band(s, c, left, right, causal, q.device)
        local = _local_part(q, k, v, key_ok, c, left, right, band)
    else:
        out, lse = band_part(q, k, v, key_ok, s, causal)
        local = (out, torch.where(torch.isfinite(lse), lse, torch.full_like(lse, _EMPTY_LSE)))

    m = -(-n // s)
    qf, kf, vf = (_fold(x, s).transpose(1, 2) for x in (q, k, v))  # (B*s, H, m, D)
    okf = _fold(key_ok, s)  # (B*s, m); the fold's padding is False: never a key
    u = torch.arange(m, device=q.device)
    far = (u.view(-1, 1) - u.view(1, -1)).abs() >= 2
    if causal:
        far = far & (u.view(-1, 1) >= u.view(1, -1))
    out, lse = _part(qf, kf, vf, far.view(1, 1, m, m) & okf.view(-1, 1, 1, m))
    strided = (_unfold(out.transpose(1, 2), s, n), _unfold(lse.transpose(1, 2), s, n))
    return [local, strided]


def _fixed(
    q, k, v, key_ok, pattern: Fixed, band_part: LocalFn | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``Fixed(block, summary)``: the query's own block + the last ``summary`` positions of every
    *other* block (earlier blocks only when causal).

    The summary columns are the same ``M = ceil(n/block) * summary`` keys for every query, so they
    are gathered once: scores ``n * block`` for the blocks plus ``n * M`` for the summaries,
    ``O(n^1.5)`` at the usual ``block ~ sqrt(n)`` and small ``summary``.
    """
    b, n, h, d = q.shape
    blk, summ, causal = pattern.block, pattern.summary, pattern.causal
    if band_part is None:
        a = torch.arange(blk, device=q.device)
        own = (a.view(-1, 1) >= a.view(1, -1)) if causal else torch.ones(blk, blk, dtype=torch.bool)
        local = _local_part(q, k, v, key_ok, blk, 0, 0, own.to(q.device))
    else:
        out, lse = band_part(q, k, v, key_ok, 0, causal, blk)
        local = (out, torch.where(torch.isfinite(lse), lse, torch.full_like(lse, _EMPTY_LSE)))

    pos = torch.arange(n, device=q.device)
    cols = pos[pos % blk >= blk - summ]  # (M,) summary key positions
    qb = (pos // blk).view(-1, 1)
    kb = (cols // blk).view(1, -1)
    allowed = (kb < qb) if causal else (kb != qb)  # other blocks (own block: the local part)
    allowed = allowed.view(1, 1, n, -1) & key_ok[:, cols].view(b, 1, 1, -1)
    out, lse = _part(
        q.transpose(1, 2), k[:, cols].transpose(1, 2), v[:, cols].transpose(1, 2), allowed
    )
    return [local, (out.transpose(1, 2), lse.transpose(1, 2))]
