"""TVM kernel source: bf16 local attention forward with bf16 dot products (inference).

bf16 queries, keys and values are multiplied as bf16 with fp32 accumulation by one of two
engines, whichever the target has (``ENGINES``, chosen by ``kernels.tvm_bf16``):

* ``"amx"`` (Intel AMX-BF16, flags ``amx_bf16 amx_tile``): the tile instructions (``tdpbf16ps``:
  a 16 x 16 fp32 tile += a 16 x 32 bf16 tile times a 32 x 16 bf16 tile, pair-interleaved),
  called from TIR through LLVM's register-numbered AMX intrinsics, whose operands are only
  integers and pointers;
* ``"avx512bf16"`` (flag ``avx512_bf16``: AMD Zen 4 and later, Intel Cooper Lake and later): the
  vector dot product ``vdpbf16ps`` (16 fp32 lanes += the pairwise products of 32 bf16 lanes).
  Its LLVM intrinsic takes ``bfloat`` vectors, a type TVM 0.27 never emits (it stores bf16 as
  ``uint16``), so the kernel imports a three-line LLVM function (``_DPBF16_LL``) that bitcasts
  ``i32`` pairs to ``bfloat`` and calls it, and calls that through ``call_extern``; LLVM inlines
  it (``alwaysinline``) into one ``vdpbf16ps``.

Both engines read the same packed keys and values; they differ only in the two products.

``bf16_fwd(q (B,n,HF,D) bf16 bits as uint16, kp, vp, ok (B,NP) f32, o (B,n,HF,D) bf16 bits,
gq (B,GQ,HF,D/2) bf16 pairs as uint32, rok (B,n) f32, gpart (B,HF,NG,GQ,D) f32, gstat
(B,HF,NG,GQ,2) f32, cfg (64,) u8, w, causal, gp, padl, blk, nbr, ngq)``: every head, the pattern of
``tvm_source.sliding_window``'s forward (band ``[_row_lo(i), _row_hi(i))`` of a sliding window or
of block-local attention, plus ``gp`` global-key slots), without the log-sum-exp (no backward).
Keys and values come packed by the caller in the *packed order* (``gp`` global slots, ``padl``
positions before the sequence, the sequence, positions after it; ``gp`` and ``padl`` multiples
of 32), in the layouts the tiles load with one stride of 64 bytes:

* ``kp (B, HF, NP/16, D/2, 16, 2)``: per block of 16 keys, row ``r`` holds dims ``2r, 2r+1`` of
  each key: a tile of 16 rows is the right operand of ``Q @ K^T`` for 32 dims;
* ``vp (B, HF, NP/32, D/16, 16, 16, 2)``: per block of 32 keys and 16 output dims, row ``r``
  holds keys ``2r, 2r+1`` of each dim: the right operand of ``P @ V``.

``ok`` says which packed positions are usable keys. With ``ngq > 0`` each parallel task ``t``
also scores the first ``ngq`` global queries ``gq`` against its own rows as keys (those ``rok``
allows), in fp32 from the packed keys and values, and leaves their partial softmax in
``gstat[.., t, g]`` (max, sum) and ``gpart[.., t, g]`` (weighted values), as
``tvm_source.sliding_window``'s forward does. ``cfg`` is the 64-byte AMX tile configuration
(palette 1, eight tiles of 16 rows x 64 bytes; the AVX512-BF16 engine ignores it). The caller
asks Linux for the AMX state first (``arch_prctl(ARCH_REQ_XCOMP_PERM)``, see
``tvm_bf16.amx_usable``).

Schedule: one parallel loop over ``(batch, head, group of RG tiles of 16 queries)``; per tile,
the keys in chunks of up to ``CH`` (global chunks first, then the band rounded out to 32-key
blocks). Per chunk: the scores ``S = Q K^T`` per 16 keys, stored; masking, scaling and an
online softmax (exact max per chunk, flash-style rescale across chunks) in fp32 vector code,
``P`` rounded to bf16 (nearest even); then ``P @ V`` added to the running fp32 output.

* AMX: the query tiles are reloaded per chunk (``P`` needs their tile register); the score tile
  per 16 keys is tiles 5-6 x tile 7 into tile 4; ``P @ V`` goes into fresh output tiles 0-3,
  stored and added to the running output. Tile registers: 0-3 output (16 dims each, so
  ``D <= 64``), 4 scores, 5-6 queries or ``P``, 7 keys or values.
* AVX512-BF16: the tile's 16 query rows are copied once (as dim pairs); per 16 keys, 16
  accumulators (one a query, the 16 keys in the lanes) take one ``vdpbf16ps`` per dim pair,
  each broadcasting that query's pair against the 16 keys' pairs (one load of ``kp``). ``P @
  V`` per 16 output dims: 16 accumulators (one a query, the dims in the lanes), started from the
  running output times the rescale factor, one ``vdpbf16ps`` per key pair.
"""

from __future__ import annotations

import math

import tvm
from tvm.script import tirx as T

from .tvm_source import NEG, _exp, _row_hi, _row_lo

ENGINES = ("amx", "avx512bf16")
ROWS = 16  # queries per tile (AMX tiles have 16 rows; 16 accumulators for AVX512-BF16)
CHUNK = 256  # keys per softmax chunk (a multiple of 32): S is 16 x CHUNK fp32 (16 KB)
ROW_GROUP = 4  # 16-query tiles per parallel task (amortises the tile configuration)
TILE_CONFIG = bytes([1] + [0] * 15 + [64, 0] * 8 + [0] * 16 + [ROWS] * 8 + [0] * 8)
HEAD_DIMS = (32, 64)  # output tiles 0-3 hold 16 dims each


def _exp_bf16(x):
    """``exp(x)`` for ``x <= 0`` to about 4e-5 relative error, enough for weights rounded to
    bf16 (8 bits) next: ``tvm_source._exp``'s range reduction with a degree-4 polynomial."""
    f32 = T.float32
    x = T.max(x, f32(-87.0))
    n = T.floor(x * f32(1.4426950408889634) + f32(0.5))
    r = x - n * f32(0.6931471805599453)
    p = f32(1.0) + r * (f32(1.0) + r * (f32(0.5) + r * (f32(1.0 / 6) + r * f32(1.0 / 24))))
    return p * T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))


def _bf16_bits(x):
    """Finite float32 ``x`` rounded to bf16 (nearest even): its bits in the low half of a uint32."""
    bits = T.reinterpret("uint32", x)
    return (bits + T.uint32(0x7FFF) + ((bits >> T.uint32(16)) & T.uint32(1))) >> T.uint32(16)


def _lo(pair):
    """The bf16 in the low half of a uint32 pair, as float32."""
    return T.reinterpret("float32", pair << T.uint32(16))


def _hi(pair):
    """The bf16 in the high half of a uint32 pair, as float32."""
    return T.reinterpret("float32", pair & T.uint32(0xFFFF0000))


def _amx(name: str, *args):
    return T.evaluate(T.call_llvm_intrin("void", f"llvm.x86.{name}", *args))


def _tile(t: int):
    return T.uint8(t)


# acc (16 x fp32) += the pairwise products of a and b (32 x bf16 each, as 16 x i32 pairs)
_DPBF16_LL = r"""
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)
define linkonce_odr <16 x float> @longdoc_dpbf16(<16 x float> %acc, <16 x i32> %a, <16 x i32> %b)
    alwaysinline {
  %x = bitcast <16 x i32> %a to <32 x bfloat>
  %y = bitcast <16 x i32> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %x,
                                                          <32 x bfloat> %y)
  ret <16 x float> %r
}
"""


def _dpbf16(acc, a, b):
    return T.call_extern("float32x16", "longdoc_dpbf16", acc, a, b)


def _v16(base):
    """16 consecutive lanes from ``base`` (a vector index)."""
    return T.Ramp(base, 1, 16)


def attention_fwd(
    head_dim: int, engine: str, chunk: int = CHUNK, row_group: int = ROW_GROUP
) -> tvm.IRModule:
    D, CH, RG, R = head_dim, chunk, row_group, ROWS
    if D not in HEAD_DIMS:
        raise ValueError(f"the bf16 kernel takes head_dim in {HEAD_DIMS}, not {D}")
    if engine not in ENGINES:
        raise ValueError(f"no bf16 engine {engine!r}: one of {ENGINES}")
    amx = engine == "amx"
    QT = D // 32  # query tiles (32 dims each)
    OT = D // 16  # output tiles (16 dims each)
    scale = 1.0 / math.sqrt(D)

    # Expressions used inside vectorised loops are built here, in Python: a name assigned in a
    # TVMScript loop body becomes a scalar local variable, which defeats the vectoriser.
    def _usable(key_ok, j, glob, bands, a):
        """Whether packed position ``j`` (its ``ok`` value ``key_ok``) is one of row ``a``'s
        keys: not a global slot out of use, not padding, inside the row's band ``[bands[2a],
        bands[2a + 1])`` (in packed positions, computed once per tile)."""
        in_band = T.And(j >= bands[2 * a], j < bands[2 * a + 1])
        return T.And(key_ok > T.float32(0), T.Or(glob, in_band))

    def _masked(score, key_ok, j, glob, bands, a):
        """A score scaled, or ``NEG`` where its key is not one of the row's."""
        return T.Select(
            _usable(key_ok, j, glob, bands, a), score * T.float32(scale), T.float32(NEG)
        )

    def _p_bits(s, row_max):
        """``exp(s - row_max)`` (0 for masked scores) as bf16 bits in a uint32."""
        return _bf16_bits(T.Select(s > T.float32(NEG / 2), _exp_bf16(s - row_max), T.float32(0)))

    @T.prim_func
    def fwd(
        q_h: T.handle,
        kp_h: T.handle,
        vp_h: T.handle,
        ok_h: T.handle,
        o_h: T.handle,
        gq_h: T.handle,
        rok_h: T.handle,
        gpart_h: T.handle,
        gstat_h: T.handle,
        cfg_h: T.handle,
        w: T.int32,
        causal: T.int32,
        gp: T.int32,
        padl: T.int32,
        blk: T.int32,
        nbr: T.int32,
        ngq: T.int32,
    ):
        T.func_attr({"global_symbol": "bf16_fwd", "tirx.noalias": True})
        B = T.int32()
        n = T.int32()
        HF = T.int32()
        NK = T.int32()
        NV = T.int32()
        NP = T.int32()
        GQ = T.int32()
        NR = T.int32()
        NG = T.int32()
        q = T.match_buffer(q_h, (B, n, HF, D), "uint16")
        kp = T.match_buffer(kp_h, (B, HF, NK, D // 2, 16), "uint32")
        vp = T.match_buffer(vp_h, (B, HF, NV, OT, 16, 16), "uint32")
        ok = T.match_buffer(ok_h, (B, NP), "float32")
        o = T.match_buffer(o_h, (B, n, HF, D), "uint16")
        gq = T.match_buffer(gq_h, (B, GQ, HF, D // 2), "uint32")
        rok = T.match_buffer(rok_h, (B, NR), "float32")
        gpart = T.match_buffer(gpart_h, (B, HF, NG, GQ, D), "float32")
        gstat = T.match_buffer(gstat_h, (B, HF, NG, GQ, 2), "float32")
        cfg = T.match_buffer(cfg_h, (64,), "uint8")  # the AMX tile configuration (AMX only)
        nt = (n + R - 1) // R
        ngrp = (nt + RG - 1) // RG
        nglob = (gp + CH - 1) // CH
        for r in T.parallel(B * HF * ngrp):
            qb = T.alloc_buffer((R * D,), "uint16", scope="local")
            sb = T.alloc_buffer((R * CH,), "float32", scope="local")
            pb = T.alloc_buffer((R * CH,), "uint16", scope="local")
            ob = T.alloc_buffer((R * D,), "float32", scope="local")
            acc = T.alloc_buffer((R * D,), "float32", scope="local")
            m = T.alloc_buffer((R,), "float32", scope="local")
            lsum = T.alloc_buffer((R,), "float32", scope="local")
            al = T.alloc_buffer((R,), "float32", scope="local")
            lane = T.alloc_buffer((16,), "float32", scope="local")
            mx = T.alloc_buffer((1,), "float32", scope="local")
            # the same bytes as pairs (uint32): a query's or P's two consecutive bf16 values
            qw = T.decl_buffer((R * D // 2,), "uint32", data=qb.data, scope="local")
            pw = T.decl_buffer((R * CH // 2,), "uint32", data=pb.data, scope="local")
            vacc = T.alloc_buffer((R * 16,), "float32", scope="local")  # AVX512-BF16 accumulators
            rmax = T.alloc_buffer((R * 16,), "float32", scope="local")  # per row and lane
            okv = T.alloc_buffer((16,), "float32", scope="local")
            bands = T.alloc_buffer((2 * R,), "int32", scope="local")  # each row's band
            gs = T.alloc_buffer((RG * R,), "float32", scope="local")  # a global query's scores
            gacc = T.alloc_buffer((D,), "float32", scope="local")
            b = r // (HF * ngrp)
            h = r // ngrp % HF
            if amx:
                _amx("ldtilecfg", T.address_of(cfg[0]))
            for g in T.serial(T.min(RG, nt - r % ngrp * RG)):
                i0 = (r % ngrp * RG + g) * R
                full = i0 + R <= n
                if not amx or not full:  # the tile's rows (zero-filled past the sequence)
                    for a in T.serial(R):
                        for d in T.vectorized(D):
                            qb[a * D + d] = T.Select(
                                i0 + a < n, q[b, T.min(i0 + a, n - 1), h, d], T.uint16(0)
                            )
                lo = T.floordiv(_row_lo(i0, w, blk, nbr), 32) * 32
                hi = T.floordiv(_row_hi(i0 + R - 1, w, causal, blk, nbr) + 31, 32) * 32
                for x in T.vectorized(R * D):
                    acc[x] = T.float32(0)
                for a in T.serial(R):
                    m[a] = T.float32(NEG)
                    lsum[a] = T.float32(0)
                    bands[2 * a] = gp + padl + _row_lo(i0 + a, w, blk, nbr)  # packed positions
                    bands[2 * a + 1] = gp + padl + _row_hi(i0 + a, w, causal, blk, nbr)
                for ch in T.serial(nglob + (hi - lo + CH - 1) // CH):
                    glob = ch < nglob
                    pbase = T.Select(glob, ch * CH, gp + padl + lo + (ch - nglob) * CH)
                    cnt = T.Select(
                        glob, T.min(CH, gp - ch * CH), T.min(CH, hi - lo - (ch - nglob) * CH)
                    )
                    # scores S = Q K^T, 16 keys at a time
                    if amx:
                        for t in T.unroll(QT):
                            if full:
                                _amx(
                                    "tileloadd64",
                                    _tile(5 + t),
                                    T.address_of(q[b, i0, h, t * 32]),
                                    T.int64(HF * D * 2),
                                )
                            else:
                                _amx(
                                    "tileloadd64",
                                    _tile(5 + t),
                                    T.address_of(qb[t * 32]),
                                    T.int64(D * 2),
                                )
                        for kb in T.serial(cnt // 16):
                            _amx("tilezero", _tile(4))
                            for t in T.unroll(QT):
                                _amx(
                                    "tileloadd64",
                                    _tile(7),
                                    T.address_of(kp[b, h, pbase // 16 + kb, t * 16, 0]),
                                    T.int64(64),
                                )
                                _amx("tdpbf16ps", _tile(4), _tile(5 + t), _tile(7))
                            _amx(
                                "tilestored64", _tile(4), T.address_of(sb[kb * 16]), T.int64(CH * 4)
                            )
                    else:
                        for x in T.vectorized(R * 16):
                            rmax[x] = T.float32(NEG)
                        with T.attr(0, "pragma_import_llvm", _DPBF16_LL):
                            for kb in T.serial(cnt // 16):
                                for a in T.unroll(R):
                                    vacc[_v16(a * 16)] = T.Broadcast(T.float32(0), 16)
                                for dp in T.serial(D // 2):
                                    for a in T.unroll(R):
                                        vacc[_v16(a * 16)] = _dpbf16(
                                            vacc[_v16(a * 16)],
                                            T.Broadcast(qw[a * (D // 2) + dp], 16),
                                            kp[b, h, pbase // 16 + kb, dp, _v16(0)],
                                        )
                                # masked and scaled from the registers, each row's
                                # running maximum per lane (the keys' ok read once)
                                for x in T.vectorized(16):
                                    okv[x] = ok[b, pbase + kb * 16 + x]
                                for a in T.unroll(R):
                                    for x in T.vectorized(16):
                                        sb[a * CH + kb * 16 + x] = _masked(
                                            vacc[a * 16 + x],
                                            okv[x],
                                            pbase + kb * 16 + x,
                                            glob,
                                            bands,
                                            a,
                                        )
                                        rmax[a * 16 + x] = T.max(
                                            rmax[a * 16 + x], sb[a * CH + kb * 16 + x]
                                        )
                    # (AMX: mask and scale now) online softmax per row; P rounded to bf16
                    for a in T.serial(R):
                        mx[0] = m[a]
                        if amx:
                            for x in T.vectorized(16):
                                lane[x] = T.float32(NEG)
                            for kb in T.serial(cnt // 16):
                                for x in T.vectorized(16):
                                    lane[x] = T.max(
                                        lane[x],
                                        _masked(
                                            sb[a * CH + kb * 16 + x],
                                            ok[b, pbase + kb * 16 + x],
                                            pbase + kb * 16 + x,
                                            glob,
                                            bands,
                                            a,
                                        ),
                                    )
                                    sb[a * CH + kb * 16 + x] = _masked(
                                        sb[a * CH + kb * 16 + x],
                                        ok[b, pbase + kb * 16 + x],
                                        pbase + kb * 16 + x,
                                        glob,
                                        bands,
                                        a,
                                    )
                            for x in T.serial(16):
                                mx[0] = T.max(mx[0], lane[x])
                        else:
                            for x in T.serial(16):
                                mx[0] = T.max(mx[0], rmax[a * 16 + x])
                        al[a] = _exp(m[a] - mx[0])
                        m[a] = mx[0]
                        for x in T.vectorized(16):
                            lane[x] = T.float32(0)
                        for kb in T.serial(cnt // 16):
                            for x in T.vectorized(16):
                                pb[a * CH + kb * 16 + x] = T.Cast(
                                    "uint16", _p_bits(sb[a * CH + kb * 16 + x], mx[0])
                                )
                                lane[x] = lane[x] + T.reinterpret(
                                    "float32",
                                    _p_bits(sb[a * CH + kb * 16 + x], mx[0]) << T.uint32(16),
                                )
                        mx[0] = lsum[a] * al[a]
                        for x in T.serial(16):
                            mx[0] = mx[0] + lane[x]
                        lsum[a] = mx[0]
                    # P @ V added to the running output, rescaled by al
                    if amx:
                        for t in T.unroll(OT):
                            _amx("tilezero", _tile(t))
                        for kb in T.serial(cnt // 32):
                            _amx(
                                "tileloadd64", _tile(5), T.address_of(pb[kb * 32]), T.int64(CH * 2)
                            )
                            for t in T.unroll(OT):
                                _amx(
                                    "tileloadd64",
                                    _tile(7),
                                    T.address_of(vp[b, h, pbase // 32 + kb, t, 0, 0]),
                                    T.int64(64),
                                )
                                _amx("tdpbf16ps", _tile(t), _tile(5), _tile(7))
                        for t in T.unroll(OT):
                            _amx("tilestored64", _tile(t), T.address_of(ob[t * 16]), T.int64(D * 4))
                        for a in T.serial(R):
                            for d in T.vectorized(D):
                                acc[a * D + d] = acc[a * D + d] * al[a] + ob[a * D + d]
                    else:
                        with T.attr(0, "pragma_import_llvm", _DPBF16_LL):
                            for t in T.serial(OT):
                                for a in T.unroll(R):
                                    vacc[_v16(a * 16)] = acc[_v16(a * D + t * 16)] * T.Broadcast(
                                        al[a], 16
                                    )
                                for kr in T.serial(cnt // 2):  # key pairs
                                    for a in T.unroll(R):
                                        vacc[_v16(a * 16)] = _dpbf16(
                                            vacc[_v16(a * 16)],
                                            T.Broadcast(pw[a * (CH // 2) + kr], 16),
                                            vp[b, h, pbase // 32 + kr // 16, t, kr % 16, _v16(0)],
                                        )
                                for a in T.unroll(R):
                                    acc[_v16(a * D + t * 16)] = vacc[_v16(a * 16)]
                for a in T.serial(R):
                    if i0 + a < n:
                        mx[0] = T.Select(
                            lsum[a] > T.float32(0), T.float32(1) / lsum[a], T.float32(0)
                        )
                        for d in T.vectorized(D):
                            o[b, i0 + a, h, d] = T.Cast(
                                "uint16", _bf16_bits(acc[a * D + d] * mx[0])
                            )
            # the global queries' rows over this task's own rows as keys, read from the packed
            # keys and values while they are in cache, in fp32 (either engine): a partial
            # softmax (max, sum, weighted values) per task, combined by the caller
            rs = r % ngrp * RG * R
            nr = T.max(0, T.min(RG * R, n - rs))
            kb0 = (gp + padl + rs) // 16  # the rows' first 16-key block (all offsets are x16)
            for gi in T.serial(ngq):
                for x in T.vectorized(16):
                    lane[x] = T.float32(NEG)
                for jb in T.serial((nr + 15) // 16):
                    for x in T.vectorized(16):
                        gs[jb * 16 + x] = T.float32(0)
                    for dp in T.serial(D // 2):
                        for x in T.vectorized(16):
                            gs[jb * 16 + x] = (
                                gs[jb * 16 + x]
                                + _lo(kp[b, h, kb0 + jb, dp, x]) * _lo(gq[b, gi, h, dp])
                                + _hi(kp[b, h, kb0 + jb, dp, x]) * _hi(gq[b, gi, h, dp])
                            )
                    for x in T.vectorized(16):
                        gs[jb * 16 + x] = T.Select(
                            T.And(jb * 16 + x < nr, rok[b, T.min(rs + jb * 16 + x, n - 1)] > 0),
                            gs[jb * 16 + x] * T.float32(scale),
                            T.float32(NEG),
                        )
                        lane[x] = T.max(lane[x], gs[jb * 16 + x])
                mx[0] = T.float32(NEG)
                for x in T.serial(16):
                    mx[0] = T.max(mx[0], lane[x])
                for x in T.vectorized(16):
                    lane[x] = T.float32(0)
                for jb in T.serial((nr + 15) // 16):
                    for x in T.vectorized(16):
                        gs[jb * 16 + x] = T.Select(
                            gs[jb * 16 + x] > T.float32(NEG / 2),
                            _exp(gs[jb * 16 + x] - mx[0]),
                            T.float32(0),
                        )
                        lane[x] = lane[x] + gs[jb * 16 + x]
                for x in T.vectorized(D):
                    gacc[x] = T.float32(0)
                for kr in T.serial((nr + 15) // 16 * 8):  # key pairs (the pads' weights are 0)
                    for c in T.serial(OT):
                        for x in T.vectorized(16):
                            gacc[c * 16 + x] = (
                                gacc[c * 16 + x]
                                + gs[2 * kr] * _lo(vp[b, h, kb0 // 2 + kr // 16, c, kr % 16, x])
                                + gs[2 * kr + 1] * _hi(vp[b, h, kb0 // 2 + kr // 16, c, kr % 16, x])
                            )
                for x in T.vectorized(D):
                    gpart[b, h, r % ngrp, gi, x] = gacc[x]
                gstat[b, h, r % ngrp, gi, 0] = mx[0]
                mx[0] = T.float32(0)
                for x in T.serial(16):
                    mx[0] = mx[0] + lane[x]
                gstat[b, h, r % ngrp, gi, 1] = mx[0]
            if amx:
                _amx("tilerelease")

    def _packed_row(x, gx, b, p, h, d, n, gp, padl, G):
        """Packed position ``p`` of one head of ``x``'s rows: a global slot (``gx``), a
        sequence row, or 0 (padding slots, before and after the sequence)."""
        j = p - gp - padl
        row = x[b, T.max(T.min(j, n - 1), 0), h, d]
        glob = gx[b, T.max(T.min(p, G - 1), 0), h, d]  # in bounds also when G = 0
        zero = T.Cast(x.dtype, 0)
        return T.Select(T.And(j >= 0, j < n), row, T.Select(p < G, glob, zero))

    @T.prim_func
    def pack_k(
        k_h: T.handle, gk_h: T.handle, kp_h: T.handle, G: T.int32, gp: T.int32, padl: T.int32
    ):
        """``kp[b, h, blk, r, t]`` (uint32: dims 2r, 2r+1) = packed position ``16 blk + t``."""
        T.func_attr({"global_symbol": "bf16_pack_k", "tirx.noalias": True})
        B = T.int32()
        n = T.int32()
        HF = T.int32()
        GS = T.int32()
        NK = T.int32()
        k = T.match_buffer(k_h, (B, n, HF, D // 2), "uint32")
        gk = T.match_buffer(gk_h, (B, GS, HF, D // 2), "uint32")
        kp = T.match_buffer(kp_h, (B, HF, NK, D // 2, 16), "uint32")
        for r in T.parallel(B * HF * NK):
            for t in T.serial(16):
                for d in T.vectorized(D // 2):
                    kp[r // (HF * NK), r // NK % HF, r % NK, d, t] = _packed_row(
                        k, gk, r // (HF * NK), r % NK * 16 + t, r // NK % HF, d, n, gp, padl, G
                    )

    def _pair(x, gx, b, p, h, d, n, gp, padl, G):
        """Packed positions ``p`` and ``p + 1`` of one head's dim ``d`` as one uint32, ``p`` in
        the low half (``vp``'s pair)."""
        lo = T.Cast("uint32", _packed_row(x, gx, b, p, h, d, n, gp, padl, G))
        hi = T.Cast("uint32", _packed_row(x, gx, b, p + 1, h, d, n, gp, padl, G))
        return lo | (hi << T.uint32(16))

    @T.prim_func
    def pack_v(
        v_h: T.handle, gv_h: T.handle, vp_h: T.handle, G: T.int32, gp: T.int32, padl: T.int32
    ):
        """``vp[b, h, blk, c, r, t]`` (uint32: packed positions ``32 blk + 2r`` and ``+1`` of
        dim ``16 c + t``, low half first)."""
        T.func_attr({"global_symbol": "bf16_pack_v", "tirx.noalias": True})
        B = T.int32()
        n = T.int32()
        HF = T.int32()
        GS = T.int32()
        NV = T.int32()
        v = T.match_buffer(v_h, (B, n, HF, D), "uint16")
        gv = T.match_buffer(gv_h, (B, GS, HF, D), "uint16")
        vp = T.match_buffer(vp_h, (B, HF, NV, OT, 16, 16), "uint32")
        for r in T.parallel(B * HF * NV):
            b = r // (HF * NV)
            h = r // NV % HF
            for kr in T.serial(16):
                # the pair's first key, as a packed position and as a sequence row: both keys
                # in the sequence (nearly every pair) take two plain loads per 16 dims; the
                # rest, the per-slot selects
                p = r % NV * 32 + 2 * kr
                j = p - gp - padl
                if T.And(j >= 0, j + 1 < n):
                    for c in T.serial(OT):
                        for t in T.vectorized(16):
                            vp[b, h, r % NV, c, kr, t] = T.Cast(
                                "uint32", v[b, j, h, c * 16 + t]
                            ) | (T.Cast("uint32", v[b, j + 1, h, c * 16 + t]) << T.uint32(16))
                else:
                    for c in T.serial(OT):
                        for t in T.vectorized(16):
                            vp[b, h, r % NV, c, kr, t] = _pair(
                                v, gv, b, p, h, c * 16 + t, n, gp, padl, G
                            )

    return tvm.IRModule({"bf16_fwd": fwd, "bf16_pack_k": pack_k, "bf16_pack_v": pack_v})
