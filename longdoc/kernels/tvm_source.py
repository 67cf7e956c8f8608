"""TVM kernel source: sliding-window attention forward and backward, as low-level TVMScript (tirx).

This module imports TVM at import time; only ``kernels.tvm_backend`` imports it, and only when a
kernel is built. Its text is hashed into the build manifest: editing it invalidates every cached
library.

One build per head_dim ``D`` holds five functions (batch, sequence length and heads symbolic;
window ``w``, ``causal``, the first head ``h0`` of a head group and the number ``gp`` of
global-key slots runtime arguments). Row-side tensors (the queries of the forward kernel, the
keys of the backward kernel, and every output) are the caller's full ``(B, n, HF, D)`` tensors,
read and written in place: no copies. The forward kernel reads its keys and values in place
too. The backward kernel reads its query-side operands packed per head group by ``pack_t`` /
``pack_p`` (transposed tile by tile / natural layout): ``w`` zeros, then the sequence, then
zeros far enough (a multiple of ``KT``) that tile reads never leave the buffers. The last row
tile may overhang ``n``: its reads are clamped to row ``n-1``, its writes skipped.

* ``pack_t(x (B,n,HF,D), xt (B,HG,NP/KT,D,KT), h0, left, start, stop)``, ``pack_p(x, xp
  (B,HG,NP,D), ...)``: packed positions ``[start, stop)`` (multiples of ``KT``), ``x[p -
  left]`` where that is a row, else 0; ``pack_t`` stores each tile of ``KT`` positions as one
  contiguous ``D x KT`` block.
* ``sliding_window_fwd(q, k, v, gk, gv (B,G,HF,D), ok (B,NP), o, lse (B,n,HF), gq (B,GQ,HF,D),
  rok (B,n), gpart (B,HF,NG,GQ,D), gstat (B,HF,NG,GQ,2), w, causal, gp, blk, nbr, ngq)``: every
  head; softmax over the ``G`` global keys ``gk, gv`` and the band, online
  (flash-style) across chunks of up to ``CH`` keys with an exact max and sum inside each chunk;
  ``o`` and its log-sum-exp ``lse`` (``-inf`` where the row has no usable key, whose ``o`` is 0),
  so the caller can differentiate through ``lse``. Keys are numbered in a *packed* order: ``gp``
  global slots (``gp >= G``, a multiple of ``KF``), then ``w`` positions before the sequence,
  the sequence, and positions after it; the band of query ``i`` is packed positions
  ``gp + i + u`` for ``u`` in ``[0, nkeys)`` (``nkeys = 2w+1``, or ``w+1`` when causal), and
  ``ok`` says which packed positions are usable keys (0 outside the sequence and past ``G``).
  With ``ngq > 0`` each parallel task ``t`` also scores the first ``ngq`` global queries ``gq``
  against its own rows as keys (those ``rok`` allows) and leaves their partial softmax in
  ``gstat[.., t, g]`` (max, sum) and ``gpart[.., t, g]`` (weighted values), for the caller to
  combine: the global rows, read while those keys and values are in cache.
* ``sliding_window_bwd_dkdv(k, v, okk (B,n), qt, dot, qp, dop, lsep, deltap, dk, dv, dqp, w,
  causal, h0)``: FlashAttention-2 style from the keys' side, band keys only: recompute
  ``p = exp(s - lse)`` and ``ds = p * (do.v - delta)`` once per (query, key) pair; key ``j``
  gets ``dv = p^T do`` and ``dk = scale * ds^T q`` over the queries whose band holds it
  (``i - j`` in ``[-w, w]``, or ``[0, w]`` when causal; query-side tensors packed, padded on the
  left by ``w``, ``lse`` finite: ``+BIG`` on rows with no key, so their ``p`` is 0). The same
  ``ds`` gives ``dq``: each parallel task owns ``SEG`` keys and adds ``ds^T k`` into its own
  private rows ``dqp (B,HG,NS,SP,D)`` (no write races between tasks; packed position ``P`` is
  row ``P - g * SEG + KT`` of segment ``g``, ``SP = SEG + 2w + 2KT``).
* ``dq_overlap_add(dqp, dq, w, h0)``: ``dq = scale * sum`` of the private rows that hold each
  query (at most ``2 + 2w/SEG`` segments). The global keys' part of ``dq`` is the caller's.

Forward schedule (flash attention with the rows in the vector lanes). One parallel loop over
``(batch, head, group of RG row tiles)``; a tile is ``QL`` consecutive queries, copied once,
transposed, into a ``D x QL`` local block (L1-resident). Its keys (the global slots, then the
``nkeys + QL - 1`` band positions that any of its rows sees) are taken ``KF`` at a time: a
``KF x QL`` score block stays in registers while ``D`` steps each load one ``QL``-vector of the
block and broadcast one element of each key row (rows contiguous in memory; the previous
layout, keys transposed ``D x NP``, touched ``D`` rows ``NP`` floats apart, one TLB page each,
per key tile). With rows in lanes, the softmax max and sum are plain lane-wise vector ops (no
horizontal reductions), and only the first and last ``QL - 1`` band positions need the
per-(row, key) band mask: interior key blocks take a branch without it. ``P @ V`` keeps the
output transposed as well (``D x QL``): ``DB x QL`` accumulators in registers, each value row
read once per chunk and broadcast, ``p`` a lane vector; band keys outside the sequence are
skipped. Chunks of ``CH`` keys bound the score buffer for any window (one rescale of the
running output per chunk). Reading keys and values in place (no packed copies) makes the kernel
a little slower but saves the packing pass and its memory (benchmarks/RESULTS.md, "Attention
kernels", tuning figures).

Backward schedule: one parallel loop over ``(batch, head, segment)``. A tile of ``KR`` keys
streams the queries in tiles of ``KT`` positions, so each loaded query vector serves all keys of
the tile: scores are ``KR x KT`` register blocks built by ``D`` broadcast-FMAs over contiguous
transposed operands (a serial loop over ``D``, which LLVM strength-reduces to pointer increments).
The query tiles are aligned to ``KT`` in packed positions (up to ``KT - 1`` masked queries
more per key tile), so each is one contiguous ``D x KT`` block of ``pack_t``'s output: with the
transposed buffers ``(D, NP)``, each of the ``D`` steps touched a cache line ``NP`` floats from
the last, and the backward took 1.08-1.20x as long (benchmarks/RESULTS.md, "Kernels round
three"),
and the ``dk``/``dv`` accumulators are vectorised over ``D`` and filled ``DK_COLS`` columns at a
time, so that they stay in registers through the tile's queries.

The schedule follows the target's vector width (``vector_lanes``; ``kernels.tvm_backend.
_vector_lanes`` decides at build time, from the target's features): the forward's row tile is
two vectors of rows, and each register block keeps its accumulators to half the vector registers
(32 with AVX-512, 16 with AVX2), so AVX2 takes half-size blocks (see ``sliding_window``).
"""

from __future__ import annotations

import math

import tvm
from tvm.script import tirx as T

KEY_TILE = 16  # KT: band positions per inner tile of the backward and the pack kernels
# Backward: keys per tile; each loaded query vector serves this many keys. Chosen by timing the
# kernel alone at seq 4096, heads 12, head_dim 64, window 256 on the 2-core AVX-512 host
# (4 rows beat 2; 8 rows spill registers and lose again; figures: benchmarks/RESULTS.md,
# "Attention kernels", tuning figures).
KEY_ROWS = 4  # dk/dv kernel (rows = keys)
# dk/dv kernel: head_dim columns per pass of the dk, dv accumulation. All D columns of KR keys'
# dk and dv (2 x 4 x 64 floats: every zmm register at head_dim 64) spilled; 32 columns keep
# 16 zmm live through a tile (AVX2 takes 16 columns: see `sliding_window`).
DK_COLS = 32
# dk/dv kernel: keys per parallel task; the task also accumulates the dq of every query its keys
# see into private rows (SEG + 2w of them), summed afterwards by dq_overlap_add
SEG_KEYS = 512
# Forward tiling, chosen by timing the kernel alone (seq 4096, heads 12, head_dim 64, window 256,
# one thread on the 2-core AVX-512 host; A/B in one process): QL rows per tile = vector lanes
# (16 and 64 with 4 keys per block slower; 48: not a power of two, scalarised), KF keys per
# register block (KF x QL/16 accumulators, 8 -> 16 zmm; 4 and 16 slower), CH keys per softmax
# chunk (64-256 on par, 512 and 1024 slower), DB output columns per P @ V register block
# (DB x QL/16 accumulators; 4 and 16 slower), RG row tiles per parallel task (amortises the
# task's buffer set-up; 2-16 on par). The timings: benchmarks/RESULTS.md, "Attention kernels",
# tuning figures.
FWD_ROWS = 32  # QL on a 16-lane (AVX-512) target; `sliding_window(vector_lanes=)` halves it
FWD_KEYS = 8  # KF
FWD_CHUNK = 128  # CH
PV_COLS = 8  # DB
ROW_GROUP = 4  # RG
NEG = -3.0e38
BIG = 3.0e38


def _exp(x):
    """``exp(x)`` for float32 ``x <= 88`` as inline vectorisable arithmetic (Cephes ``expf``:
    ``x = n ln2 + r``, a degree-6 polynomial for ``exp(r)``, ``2^n`` built in the exponent
    bits; about 1 ulp). LLVM would otherwise scalarise ``T.exp`` into one ``expf`` call per
    lane, which costs more than the ``4*D`` flops each (query, key) pair does. Inputs below
    -87 return ~0 (``x`` is clamped; callers mask the truly excluded pairs themselves)."""
    f32 = T.float32
    x = T.max(T.min(x, f32(88.0)), f32(-87.0))
    n = T.floor(x * f32(1.4426950408889634) + f32(0.5))
    r = x - n * f32(0.693359375) + n * f32(2.12194440e-4)
    p = f32(1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + f32(c)
    p = p * r * r + r + f32(1.0)
    two_n = T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))
    return p * two_n


def _row_lo(i, w, blk, nbr):
    """First key (sequence row) of query ``i``: ``i - w`` for a sliding window (``blk == 0``),
    the first row of block ``i // blk - nbr`` for block-local patterns (``blk > 0``)."""
    return T.Select(blk > 0, (T.floordiv(i, T.max(blk, 1)) - nbr) * blk, i - w)


def _row_hi(i, w, causal, blk, nbr):
    """One past the last key of query ``i``: ``i + w + 1`` (``i + 1`` when causal) for a sliding
    window, the end of block ``i // blk + nbr`` for block-local ones (capped at ``i + 1`` when
    causal)."""
    block_end = (T.floordiv(i, T.max(blk, 1)) + nbr + 1) * blk
    return T.Select(
        blk > 0,
        T.Select(causal > 0, T.min(block_end, i + 1), block_end),
        i + w + 1 - causal * w,
    )


def _query_lo(j, w, causal, blk, nbr):
    """First query that sees key ``j`` (the transpose of ``_row_lo``/``_row_hi``)."""
    return T.Select(
        blk > 0,
        T.Select(causal > 0, j, (T.floordiv(j, T.max(blk, 1)) - nbr) * blk),
        j - w + causal * w,
    )


def _query_hi(j, w, blk, nbr):
    """One past the last query that sees key ``j``."""
    return T.Select(blk > 0, (T.floordiv(j, T.max(blk, 1)) + nbr + 1) * blk, j + w + 1)


def sliding_window(
    head_dim: int,
    key_tile: int = KEY_TILE,
    key_rows: int = KEY_ROWS,
    seg_keys: int = SEG_KEYS,
    fwd_rows: int = FWD_ROWS,
    fwd_keys: int = FWD_KEYS,
    fwd_chunk: int = FWD_CHUNK,
    row_group: int = ROW_GROUP,
    pv_cols: int = PV_COLS,
    vector_lanes: int = 16,
) -> tvm.IRModule:
    """The module for ``head_dim``, scheduled for a target with ``vector_lanes`` float32 lanes
    (16: AVX-512, 8: AVX2 and others): the forward's row tile is two vectors (``fwd_rows`` on a
    16-lane target), so its ``KF x QL`` score block keeps to half the vector registers on either
    (32 rows on AVX2 spilled: 6% slower than 16; 16 rows on AVX-512 were 18% slower than 32)."""
    QL = fwd_rows * vector_lanes // 16
    # Register blocks: the defaults fill half of AVX-512's 32 vector registers with
    # accumulators. AVX2 has 16, and its lanes are half as wide, so there the same blocks
    # spilled (forward 1.3-1.5x and backward 1.4-1.5x slower on an AVX2-only CPU;
    # benchmarks/RESULTS.md, "Kernels on an AVX2-only CPU"): narrower targets take half as many
    # keys and value columns per forward block and half the dk/dv columns, and the backward
    # accumulates s and dp (and dv and dk) in separate loops rather than one (FUSE).
    wide = vector_lanes >= 16
    FUSE = wide
    KF, CH, RG = fwd_keys if wide else fwd_keys // 2, fwd_chunk, row_group
    D = head_dim
    DB = next(x for x in (pv_cols if wide else pv_cols // 2, 4, 2, 1) if head_dim % x == 0)
    KT = key_tile
    KR = key_rows
    scale = 1.0 / math.sqrt(D)
    SEG = seg_keys
    DC = next(x for x in (DK_COLS if wide else DK_COLS // 2, 16, 8, 4, 2, 1) if head_dim % x == 0)

    GL = 8 if D % 8 == 0 else 1  # lanes of the global rows' dot products

    def _sum_lanes(x):
        """``sum_l x[l]`` over the ``GL`` lanes as one expression."""
        total = x[0]
        for lane in range(1, GL):
            total = total + x[lane]
        return total

    def _min_rows(x):
        """``min_a x[a]`` over the tile's key rows as one expression."""
        least = x[0]
        for a in range(1, KR):
            least = T.min(least, x[a])
        return least

    def _dot_rows(ds, kr, t, dd):
        """``sum_a ds[a, t] * kr[a, dd]`` over the tile's key rows as one expression: one load
        and one store of the dq accumulator per query, not one per key row."""
        total = ds[t] * kr[dd]
        for a in range(1, KR):
            total = total + ds[a * KT + t] * kr[a * D + dd]
        return total

    @T.prim_func
    def pack_t(
        x_h: T.handle, xt_h: T.handle, h0: T.int32, left: T.int32, start: T.int32, stop: T.int32
    ):
        T.func_attr({"global_symbol": "pack_t", "tirx.noalias": True})
        B = T.int32()
        n = T.int32()
        HF = T.int32()
        HG = T.int32()
        NB = T.int32()
        x = T.match_buffer(x_h, (B, n, HF, D), "float32")
        xt = T.match_buffer(xt_h, (B, HG, NB, D, KT), "float32")
        nblk = (stop - start) // KT
        for r in T.parallel(B * HG * nblk):
            b = r // (HG * nblk)
            h = r // nblk % HG
            p0 = start + r % nblk * KT
            for d in T.serial(D):
                for t in T.vectorized(KT):
                    xt[b, h, p0 // KT, d, t] = T.if_then_else(
                        p0 + t >= left and p0 + t < left + n,
                        x[b, T.max(T.min(p0 + t - left, n - 1), 0), h0 + h, d],
                        T.float32(0),
                    )

    @T.prim_func
    def pack_p(
        x_h: T.handle, xp_h: T.handle, h0: T.int32, left: T.int32, start: T.int32, stop: T.int32
    ):
        T.func_attr({"global_symbol": "pack_p", "tirx.noalias": True})
        B = T.int32()
        n = T.int32()
        HF = T.int32()
        HG = T.int32()
        NP = T.int32()
        x = T.match_buffer(x_h, (B, n, HF, D), "float32")
        xp = T.match_buffer(xp_h, (B, HG, NP, D), "float32")
        nblk = (stop - start) // KT
        for r in T.parallel(B * HG * nblk):
            b = r // (HG * nblk)
            h = r // nblk % HG
            p0 = start + r % nblk * KT
            for t in T.serial(KT):
                if p0 + t >= left and p0 + t < left + n:
                    for dd in T.vectorized(D):
                        xp[b, h, p0 + t, dd] = x[b, p0 + t - left, h0 + h, dd]
                else:
                    for dd in T.vectorized(D):
                        xp[b, h, p0 + t, dd] = T.float32(0)

    @T.prim_func
    def fwd(
        q_h: T.handle,
        k_h: T.handle,
        v_h: T.handle,
        gk_h: T.handle,
        gv_h: T.handle,
        ok_h: T.handle,
        o_h: T.handle,
        lse_h: T.handle,
        gq_h: T.handle,
        rok_h: T.handle,
        gpart_h: T.handle,
        gstat_h: T.handle,
        w: T.int32,
        causal: T.int32,
        gp: T.int32,
        blk: T.int32,
        nbr: T.int32,
        ngq: T.int32,
    ):
        T.func_attr({"global_symbol": "sliding_window_fwd", "tirx.noalias": True})
        B = T.int32()
        n = T.int32()
        HF = T.int32()
        G = T.int32()
        NP = T.int32()
        q = T.match_buffer(q_h, (B, n, HF, D), "float32")
        k = T.match_buffer(k_h, (B, n, HF, D), "float32")
        v = T.match_buffer(v_h, (B, n, HF, D), "float32")
        gk = T.match_buffer(gk_h, (B, G, HF, D), "float32")
        gv = T.match_buffer(gv_h, (B, G, HF, D), "float32")
        ok = T.match_buffer(ok_h, (B, NP), "float32")
        o = T.match_buffer(o_h, (B, n, HF, D), "float32")
        lse = T.match_buffer(lse_h, (B, n, HF), "float32")
        GQ = T.int32()
        NR = T.int32()
        NG = T.int32()
        gq = T.match_buffer(gq_h, (B, GQ, HF, D), "float32")
        rok = T.match_buffer(rok_h, (B, NR), "float32")
        gpart = T.match_buffer(gpart_h, (B, HF, NG, GQ, D), "float32")
        gstat = T.match_buffer(gstat_h, (B, HF, NG, GQ, 2), "float32")
        nchg = (gp + CH - 1) // CH
        nt = (n + QL - 1) // QL
        ngrp = (nt + RG - 1) // RG
        for r in T.parallel(B * HF * ngrp):
            qr = T.alloc_buffer((D * QL,), "float32", scope="local")
            sb = T.alloc_buffer((CH * QL,), "float32", scope="local")
            oacc = T.alloc_buffer((QL * D,), "float32", scope="local")
            s = T.alloc_buffer((KF * QL,), "float32", scope="local")
            accr = T.alloc_buffer((DB * QL,), "float32", scope="local")
            m = T.alloc_buffer((QL,), "float32", scope="local")
            mv = T.alloc_buffer((QL,), "float32", scope="local")
            al = T.alloc_buffer((QL,), "float32", scope="local")
            lsum = T.alloc_buffer((QL,), "float32", scope="local")
            rlo = T.alloc_buffer((QL,), "int32", scope="local")
            rhi = T.alloc_buffer((QL,), "int32", scope="local")
            gs = T.alloc_buffer((RG * QL,), "float32", scope="local")
            gdot = T.alloc_buffer((GL,), "float32", scope="local")
            gacc = T.alloc_buffer((D,), "float32", scope="local")
            gm = T.alloc_buffer((2,), "float32", scope="local")
            b = r // (HF * ngrp)
            h = r // ngrp % HF
            for g in T.serial(T.min(RG, nt - r % ngrp * RG)):
                i0 = (r % ngrp * RG + g) * QL
                # each row's keys: sequence rows [rlo, rhi) (monotone in the row), and the
                # tile's: [lo0, lo0 + nb), whole key blocks
                for a in T.serial(QL):
                    rlo[a] = _row_lo(i0 + a, w, blk, nbr)
                    rhi[a] = _row_hi(i0 + a, w, causal, blk, nbr)
                lo0 = rlo[0]
                nb = (rhi[QL - 1] - lo0 + KF - 1) // KF * KF
                nchunks = nchg + (nb + CH - 1) // CH
                # the tile's queries, transposed: lanes = rows
                for a in T.serial(QL):
                    for d in T.vectorized(D):
                        qr[d * QL + a] = q[b, T.min(i0 + a, n - 1), h, d]
                # prefetch the next tile's query rows (strided rows: the hardware prefetcher
                # does not follow them, and the copy above would wait on each miss)
                for a in T.serial(QL):
                    for c in T.unroll((D + 15) // 16):
                        T.evaluate(
                            T.call_llvm_intrin(
                                "void",
                                "llvm.prefetch.p0",
                                T.address_of(q[b, T.min(i0 + QL + a, n - 1), h, c * 16]),
                                T.int32(0),
                                T.int32(3),
                                T.int32(1),
                            )
                        )
                for x in T.vectorized(QL * D):
                    oacc[x] = T.float32(0)
                for a in T.vectorized(QL):
                    m[a] = T.float32(NEG)
                    lsum[a] = T.float32(0)
                for ch in T.serial(nchunks):
                    glob = ch < nchg
                    # global chunk: slots pbase.. of gk/gv; band chunk: packed positions pbase..
                    # = sequence rows pbase - gp - w.. (clamped; out-of-range keys have ok = 0)
                    pbase = T.Select(glob, ch * CH, gp + w + lo0 + (ch - nchg) * CH)
                    ubase = (ch - nchg) * CH
                    cnt = T.Select(glob, T.min(CH, gp - ch * CH), T.min(CH, nb - ubase))
                    for a in T.vectorized(QL):
                        mv[a] = T.float32(NEG)
                    # scores of the chunk, lanes = rows: KF keys x QL rows per register block
                    for kb in T.serial(cnt // KF):
                        for x in T.vectorized(KF * QL):
                            s[x] = T.float32(0)
                        if glob:
                            for d in T.serial(D):
                                for j in T.unroll(KF):
                                    for a in T.vectorized(QL):
                                        s[j * QL + a] = (
                                            s[j * QL + a]
                                            + qr[d * QL + a]
                                            * gk[b, T.min(pbase + kb * KF + j, G - 1), h, d]
                                        )
                        else:
                            for d2 in T.serial(D // 2):
                                for d1 in T.unroll(2):
                                    for j in T.unroll(KF):
                                        for a in T.vectorized(QL):
                                            s[j * QL + a] = (
                                                s[j * QL + a]
                                                + qr[(2 * d2 + d1) * QL + a]
                                                * k[
                                                    b,
                                                    T.max(
                                                        T.min(pbase - gp - w + kb * KF + j, n - 1),
                                                        0,
                                                    ),
                                                    h,
                                                    2 * d2 + d1,
                                                ]
                                            )
                            for dl in T.serial(D % 2):  # odd head_dim: the last d
                                for j in T.unroll(KF):
                                    for a in T.vectorized(QL):
                                        s[j * QL + a] = (
                                            s[j * QL + a]
                                            + qr[(D - 1 + dl) * QL + a]
                                            * k[
                                                b,
                                                T.max(
                                                    T.min(pbase - gp - w + kb * KF + j, n - 1), 0
                                                ),
                                                h,
                                                D - 1 + dl,
                                            ]
                                        )
                        j0 = lo0 + ubase + kb * KF  # sequence row of the block's first key
                        if glob or (j0 >= rlo[QL - 1] and j0 + KF <= rhi[0]):
                            for j in T.unroll(KF):
                                for a in T.vectorized(QL):
                                    sb[(kb * KF + j) * QL + a] = T.Select(
                                        ok[b, pbase + kb * KF + j] > T.float32(0),
                                        s[j * QL + a] * T.float32(scale),
                                        T.float32(NEG),
                                    )
                                    mv[a] = T.max(mv[a], sb[(kb * KF + j) * QL + a])
                        else:  # a band edge: row a sees sequence rows [rlo[a], rhi[a])
                            for j in T.unroll(KF):
                                for a in T.vectorized(QL):
                                    sb[(kb * KF + j) * QL + a] = T.Select(
                                        ok[b, pbase + kb * KF + j] > T.float32(0)
                                        and j0 + j >= rlo[a]
                                        and j0 + j < rhi[a],
                                        s[j * QL + a] * T.float32(scale),
                                        T.float32(NEG),
                                    )
                                    mv[a] = T.max(mv[a], sb[(kb * KF + j) * QL + a])
                    # one rescale of the running output per chunk
                    for a in T.vectorized(QL):
                        mv[a] = T.max(m[a], mv[a])
                        al[a] = _exp(m[a] - mv[a])
                        lsum[a] = lsum[a] * al[a]
                        m[a] = mv[a]
                    for dd in T.serial(D):
                        for a in T.vectorized(QL):
                            oacc[dd * QL + a] = oacc[dd * QL + a] * al[a]
                    # probabilities, in place
                    for y in T.serial(cnt):
                        for a in T.vectorized(QL):
                            sb[y * QL + a] = T.Select(
                                sb[y * QL + a] > T.float32(NEG),
                                _exp(sb[y * QL + a] - m[a]),
                                T.float32(0),
                            )
                            lsum[a] = lsum[a] + sb[y * QL + a]
                    # p @ v with the output transposed too (lanes = rows): DB output columns
                    # x QL rows of accumulators in registers; each value row is read once per
                    # chunk and broadcast, p is a lane vector. Band keys outside the sequence
                    # (p = 0) are skipped: no clamped reads.
                    if glob:
                        for db in T.serial(D // DB):
                            for x in T.unroll(DB):
                                for a in T.vectorized(QL):
                                    accr[x * QL + a] = oacc[(db * DB + x) * QL + a]
                            for y in T.serial(cnt):
                                for x in T.unroll(DB):
                                    for a in T.vectorized(QL):
                                        accr[x * QL + a] = (
                                            accr[x * QL + a]
                                            + sb[y * QL + a]
                                            * gv[b, T.min(pbase + y, G - 1), h, db * DB + x]
                                        )
                            for x in T.unroll(DB):
                                for a in T.vectorized(QL):
                                    oacc[(db * DB + x) * QL + a] = accr[x * QL + a]
                    else:
                        rb = pbase - gp - w  # sequence row of the chunk's key 0
                        y0 = T.max(0, -rb)
                        # y1 >= y0: a chunk that starts past the sequence end (the last row
                        # tile, windows over a chunk) has n - rb < 0, and a negative odd count
                        # made the odd-key tail below run once (floormod) and read sb at a
                        # negative index: garbage, even NaN, rows near the end of odd lengths
                        y1 = T.max(y0, T.min(cnt, n - rb))
                        for db in T.serial(D // DB):
                            for x in T.unroll(DB):
                                for a in T.vectorized(QL):
                                    accr[x * QL + a] = oacc[(db * DB + x) * QL + a]
                            for y in T.serial((y1 - y0) // 2):
                                for yu in T.unroll(2):
                                    for x in T.unroll(DB):
                                        for a in T.vectorized(QL):
                                            accr[x * QL + a] = (
                                                accr[x * QL + a]
                                                + sb[(y0 + 2 * y + yu) * QL + a]
                                                * v[b, rb + y0 + 2 * y + yu, h, db * DB + x]
                                            )
                            for yl in T.serial((y1 - y0) % 2):  # odd count: the last key
                                for x in T.unroll(DB):
                                    for a in T.vectorized(QL):
                                        accr[x * QL + a] = (
                                            accr[x * QL + a]
                                            + sb[(y1 - 1 - yl) * QL + a]
                                            * v[b, rb + y1 - 1 - yl, h, db * DB + x]
                                        )
                            for x in T.unroll(DB):
                                for a in T.vectorized(QL):
                                    oacc[(db * DB + x) * QL + a] = accr[x * QL + a]
                # normalise lane-wise (0 where a row has no usable key), then write the rows
                for a in T.vectorized(QL):
                    al[a] = T.Select(lsum[a] > T.float32(0), T.float32(1) / lsum[a], T.float32(0))
                for dd in T.serial(D):
                    for a in T.vectorized(QL):
                        oacc[dd * QL + a] = T.Select(
                            al[a] > T.float32(0), oacc[dd * QL + a] * al[a], T.float32(0)
                        )
                for a in T.serial(T.min(QL, n - i0)):
                    for dd in T.vectorized(D):
                        o[b, i0 + a, h, dd] = oacc[dd * QL + a]
                    if lsum[a] > T.float32(0):
                        lse[b, i0 + a, h] = m[a] + T.log(lsum[a])
                    else:
                        lse[b, i0 + a, h] = T.float32(-math.inf)
            # the global queries' rows over this task's own rows as keys (each sequence row is
            # one task's), read while they are in cache: a partial softmax (max, sum, weighted
            # values) per task, combined by the caller (flash-decoding style)
            rs = r % ngrp * RG * QL
            nr = T.max(0, T.min(RG * QL, n - rs))
            for gi in T.serial(ngq):
                gm[0] = T.float32(NEG)
                for j in T.serial(nr):
                    for x in T.vectorized(GL):
                        gdot[x] = T.float32(0)
                    for dc in T.serial(D // GL):
                        for x in T.vectorized(GL):
                            gdot[x] = (
                                gdot[x] + gq[b, gi, h, dc * GL + x] * k[b, rs + j, h, dc * GL + x]
                            )
                    gs[j] = T.Select(
                        rok[b, rs + j] > T.float32(0),
                        _sum_lanes(gdot) * T.float32(scale),
                        T.float32(NEG),
                    )
                    gm[0] = T.max(gm[0], gs[j])
                gm[1] = T.float32(0)
                for x in T.vectorized(D):
                    gacc[x] = T.float32(0)
                for j in T.serial(nr):
                    gs[j] = T.Select(gs[j] > T.float32(NEG), _exp(gs[j] - gm[0]), T.float32(0))
                    gm[1] = gm[1] + gs[j]
                    for x in T.vectorized(D):
                        gacc[x] = gacc[x] + gs[j] * v[b, rs + j, h, x]
                for x in T.vectorized(D):
                    gpart[b, h, r % ngrp, gi, x] = gacc[x]
                gstat[b, h, r % ngrp, gi, 0] = gm[0]
                gstat[b, h, r % ngrp, gi, 1] = gm[1]

    @T.prim_func
    def bwd_dkdv(
        k_h: T.handle,
        v_h: T.handle,
        okk_h: T.handle,
        qt_h: T.handle,
        dot_h: T.handle,
        qp_h: T.handle,
        dop_h: T.handle,
        lsep_h: T.handle,
        deltap_h: T.handle,
        dk_h: T.handle,
        dv_h: T.handle,
        dqp_h: T.handle,
        w: T.int32,
        causal: T.int32,
        h0: T.int32,
        blk: T.int32,
        nbr: T.int32,
    ):
        T.func_attr({"global_symbol": "sliding_window_bwd_dkdv", "tirx.noalias": True})
        B = T.int32()
        n = T.int32()
        HF = T.int32()
        HG = T.int32()
        NQ = T.int32()
        NB = T.int32()
        NS = T.int32()
        SP = T.int32()
        k = T.match_buffer(k_h, (B, n, HF, D), "float32")
        v = T.match_buffer(v_h, (B, n, HF, D), "float32")
        okk = T.match_buffer(okk_h, (B, n), "float32")
        qt = T.match_buffer(qt_h, (B, HG, NB, D, KT), "float32")
        dot = T.match_buffer(dot_h, (B, HG, NB, D, KT), "float32")
        qp = T.match_buffer(qp_h, (B, HG, NQ, D), "float32")
        dop = T.match_buffer(dop_h, (B, HG, NQ, D), "float32")
        lsep = T.match_buffer(lsep_h, (B, HG, NQ), "float32")
        deltap = T.match_buffer(deltap_h, (B, HG, NQ), "float32")
        dk = T.match_buffer(dk_h, (B, n, HF, D), "float32")
        dv = T.match_buffer(dv_h, (B, n, HF, D), "float32")
        dqp = T.match_buffer(dqp_h, (B, HG, NS, SP, D), "float32")
        for r in T.parallel(B * HG * NS):
            s = T.alloc_buffer((KR * KT,), "float32", scope="local")
            dp = T.alloc_buffer((KR * KT,), "float32", scope="local")
            kr = T.alloc_buffer((KR * D,), "float32", scope="local")
            vr = T.alloc_buffer((KR * D,), "float32", scope="local")
            ak = T.alloc_buffer((KR * D,), "float32", scope="local")
            av = T.alloc_buffer((KR * D,), "float32", scope="local")
            kok = T.alloc_buffer((KR,), "float32", scope="local")
            kql = T.alloc_buffer((KR,), "int32", scope="local")
            kqh = T.alloc_buffer((KR,), "int32", scope="local")
            b = r // (HG * NS)
            h = r // NS % HG
            g = r % NS
            # this segment's private dq rows: padded query position P -> row P - g * SEG
            for x in T.serial(SP):
                for dd in T.vectorized(D):
                    dqp[b, h, g, x, dd] = T.float32(0)
            for jt in T.serial(SEG // KR):
                j0 = g * SEG + jt * KR
                # key a of the tile is seen by queries [kql[a], kqh[a]); the tile streams the
                # queries [qs, qs + ntiles * KT) from packed position base = qs + w, rounded
                # down to a whole pack_t block
                for a in T.serial(KR):
                    kql[a] = _query_lo(j0 + a, w, causal, blk, nbr)
                    kqh[a] = _query_hi(j0 + a, w, blk, nbr)
                base = (kql[0] + w) // KT * KT
                qs = base - w
                ntiles = (kqh[KR - 1] - qs + KT - 1) // KT
                if j0 < n:
                    for a in T.unroll(KR):
                        for dd in T.vectorized(D):
                            kr[a * D + dd] = k[b, T.min(j0 + a, n - 1), h0 + h, dd]
                            vr[a * D + dd] = v[b, T.min(j0 + a, n - 1), h0 + h, dd]
                            ak[a * D + dd] = T.float32(0)
                            av[a * D + dd] = T.float32(0)
                        kok[a] = T.if_then_else(
                            j0 + a < n, okk[b, T.min(j0 + a, n - 1)], T.float32(0)
                        )
                    kmin = _min_rows(kok)
                    for c in T.serial(ntiles):
                        for x in T.vectorized(KR * KT):
                            s[x] = T.float32(0)
                            dp[x] = T.float32(0)
                        # s and dp: in one loop over D, or one loop each (see FUSE)
                        for pas in T.unroll(1 if FUSE else 2):
                            for d in T.serial(D):
                                for a in T.unroll(KR):
                                    for t in T.vectorized(KT):
                                        if FUSE or pas == 0:
                                            s[a * KT + t] = (
                                                s[a * KT + t]
                                                + kr[a * D + d] * qt[b, h, base // KT + c, d, t]
                                            )
                                        if FUSE or pas == 1:
                                            dp[a * KT + t] = (
                                                dp[a * KT + t]
                                                + vr[a * D + d] * dot[b, h, base // KT + c, d, t]
                                            )
                        # p and ds; only the tiles at a band edge or a padding key need the
                        # per-(key, query) mask
                        if (
                            qs + c * KT >= kql[KR - 1]
                            and qs + c * KT + KT <= kqh[0]
                            and kmin > T.float32(0)
                        ):
                            for a in T.unroll(KR):
                                for t in T.vectorized(KT):
                                    s[a * KT + t] = _exp(
                                        s[a * KT + t] * T.float32(scale)
                                        - lsep[b, h, base + c * KT + t]
                                    )
                                    dp[a * KT + t] = s[a * KT + t] * (
                                        dp[a * KT + t] - deltap[b, h, base + c * KT + t]
                                    )
                        else:
                            for a in T.unroll(KR):
                                for t in T.vectorized(KT):
                                    s[a * KT + t] = T.Select(
                                        qs + c * KT + t >= kql[a]
                                        and qs + c * KT + t < kqh[a]
                                        and kok[a] > T.float32(0),
                                        _exp(
                                            s[a * KT + t] * T.float32(scale)
                                            - lsep[b, h, base + c * KT + t]
                                        ),
                                        T.float32(0),
                                    )
                                    dp[a * KT + t] = s[a * KT + t] * (
                                        dp[a * KT + t] - deltap[b, h, base + c * KT + t]
                                    )
                        # dv += p^T do, dk += ds^T q, DC columns at a time (DK_COLS)
                        for part in T.unroll(D // DC):
                            for pas in T.unroll(1 if FUSE else 2):
                                for t in T.serial(KT):
                                    for a in T.unroll(KR):
                                        for dd in T.vectorized(DC):
                                            if FUSE or pas == 0:
                                                av[a * D + part * DC + dd] = (
                                                    av[a * D + part * DC + dd]
                                                    + s[a * KT + t]
                                                    * dop[b, h, base + c * KT + t, part * DC + dd]
                                                )
                                            if FUSE or pas == 1:
                                                ak[a * D + part * DC + dd] = (
                                                    ak[a * D + part * DC + dd]
                                                    + dp[a * KT + t]
                                                    * qp[b, h, base + c * KT + t, part * DC + dd]
                                                )
                        for t in T.serial(KT):
                            # dq of query (base + c*KT + t): ds^T k over this tile's keys
                            for dd in T.vectorized(D):
                                dqp[b, h, g, base - g * SEG + KT + c * KT + t, dd] = dqp[
                                    b, h, g, base - g * SEG + KT + c * KT + t, dd
                                ] + _dot_rows(dp, kr, t, dd)
                    for a in T.unroll(KR):
                        if j0 + a < n:
                            for dd in T.vectorized(D):
                                dk[b, j0 + a, h0 + h, dd] = ak[a * D + dd] * T.float32(scale)
                                dv[b, j0 + a, h0 + h, dd] = av[a * D + dd]

    @T.prim_func
    def dq_overlap_add(dqp_h: T.handle, dq_h: T.handle, w: T.int32, h0: T.int32):
        T.func_attr({"global_symbol": "dq_overlap_add", "tirx.noalias": True})
        B = T.int32()
        n = T.int32()
        HF = T.int32()
        HG = T.int32()
        NS = T.int32()
        SP = T.int32()
        dqp = T.match_buffer(dqp_h, (B, HG, NS, SP, D), "float32")
        dq = T.match_buffer(dq_h, (B, n, HF, D), "float32")
        for r in T.parallel(B * n):
            acc = T.alloc_buffer((D,), "float32", scope="local")
            b = r // n
            i = r % n
            # segments whose private rows hold query i: row i + w - g * SEG in [0, SP)
            g_lo = T.max(0, (i + w + KT - SP) // SEG + 1)
            g_hi = T.min(NS - 1, (i + w + KT) // SEG)
            for h in T.serial(HG):
                for dd in T.vectorized(D):
                    acc[dd] = T.float32(0)
                for u in T.serial(g_hi - g_lo + 1):
                    for dd in T.vectorized(D):
                        acc[dd] = acc[dd] + dqp[b, h, g_lo + u, i + w + KT - (g_lo + u) * SEG, dd]
                for dd in T.vectorized(D):
                    dq[b, i, h0 + h, dd] = acc[dd] * T.float32(scale)

    return tvm.IRModule(
        {
            "pack_t": pack_t,
            "pack_p": pack_p,
            "sliding_window_fwd": fwd,
            "sliding_window_bwd_dkdv": bwd_dkdv,
            "dq_overlap_add": dq_overlap_add,
        }
    )
