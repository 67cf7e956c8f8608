"""TVM kernel source: sliding-window attention forward, written as low-level TVMScript (tirx).

This module imports TVM at import time; only ``kernels.tvm_backend`` imports it, and only when a
kernel is built. Its text is hashed into the build manifest: editing it invalidates every cached
library.

Kernel ``sliding_window_fwd`` (one build per head_dim ``D``; batch, sequence length and heads
symbolic, window and causality runtime arguments):

* inputs ``q (B, n, H, D)``, ``kt (B, H, D, NP)`` (keys transposed, left-padded by ``w``),
  ``v (B, H, NP, D)`` (same padding), ``ok (B, NP)`` float 1/0 (key usable in the band);
  ``NP >= n + 2w + KEY_TILE`` so tile reads never leave the buffers;
* outputs ``o (B, n, H, D)`` softmax-normalised over the band keys and ``lse (B, n, H)``, their
  log-sum-exp (``-inf`` where the row has no usable key, whose ``o`` is 0), which lets the caller
  merge the band with extra keys (the global tokens) exactly.

Schedule: one parallel loop over all ``B*n*H`` rows; each row streams its ``2w+1`` keys in tiles
of ``KEY_TILE`` with an online (flash-style) softmax; scores of a tile are a ``KEY_TILE``-lane
vector accumulated by ``D`` broadcast-FMAs over contiguous transposed keys, and the value update
is vectorised over ``D``.
"""

from __future__ import annotations

import math

import tvm
from tvm.script import tirx as T

KEY_TILE = 16
NEG = -3.0e38


def sliding_window_fwd(head_dim: int) -> tvm.IRModule:
    D = head_dim
    KT = KEY_TILE
    scale = 1.0 / math.sqrt(D)

    @T.prim_func
    def fwd(
        q_h: T.handle,
        kt_h: T.handle,
        v_h: T.handle,
        ok_h: T.handle,
        o_h: T.handle,
        lse_h: T.handle,
        w: T.int32,
        causal: T.int32,
    ):
        T.func_attr({"global_symbol": "sliding_window_fwd", "tirx.noalias": True})
        B = T.int32()
        n = T.int32()
        H = T.int32()
        NP = T.int32()
        q = T.match_buffer(q_h, (B, n, H, D), "float32")
        kt = T.match_buffer(kt_h, (B, H, D, NP), "float32")
        v = T.match_buffer(v_h, (B, H, NP, D), "float32")
        ok = T.match_buffer(ok_h, (B, NP), "float32")
        o = T.match_buffer(o_h, (B, n, H, D), "float32")
        lse = T.match_buffer(lse_h, (B, n, H), "float32")
        nkeys = 2 * w + 1 - causal * w
        ntiles = (nkeys + KT - 1) // KT
        for r in T.parallel(B * n * H):
            s = T.alloc_buffer((KT,), "float32", scope="local")
            p = T.alloc_buffer((KT,), "float32", scope="local")
            acc = T.alloc_buffer((D,), "float32", scope="local")
            st = T.alloc_buffer((4,), "float32", scope="local")  # max, sum, tile max, alpha
            b = r // (n * H)
            i = r // H % n
            h = r % H
            for d in T.vectorized(D):
                acc[d] = T.float32(0)
            st[0] = T.float32(NEG)
            st[1] = T.float32(0)
            for c in T.serial(ntiles):
                for t in T.vectorized(KT):
                    s[t] = T.float32(0)
                for d in T.unroll(D):
                    for t in T.vectorized(KT):
                        s[t] = s[t] + q[b, i, h, d] * kt[b, h, d, i + c * KT + t]
                for t in T.vectorized(KT):
                    s[t] = T.if_then_else(
                        c * KT + t < nkeys and ok[b, i + c * KT + t] > T.float32(0),
                        s[t] * T.float32(scale),
                        T.float32(NEG),
                    )
                st[2] = st[0]
                for t in T.serial(KT):
                    st[2] = T.max(st[2], s[t])
                st[3] = T.exp(st[0] - st[2])
                for t in T.vectorized(KT):
                    p[t] = T.if_then_else(s[t] > T.float32(NEG), T.exp(s[t] - st[2]), T.float32(0))
                st[1] = st[1] * st[3]
                for t in T.serial(KT):
                    st[1] = st[1] + p[t]
                for d in T.vectorized(D):
                    acc[d] = acc[d] * st[3]
                for t in T.serial(KT):
                    for d in T.vectorized(D):
                        acc[d] = acc[d] + p[t] * v[b, h, i + c * KT + t, d]
                st[0] = st[2]
            if st[1] > T.float32(0):
                for d in T.vectorized(D):
                    o[b, i, h, d] = acc[d] / st[1]
                lse[b, i, h] = st[0] + T.log(st[1])
            else:
                for d in T.vectorized(D):
                    o[b, i, h, d] = T.float32(0)
                lse[b, i, h] = T.float32(-math.inf)

    return tvm.IRModule({"sliding_window_fwd": fwd})
