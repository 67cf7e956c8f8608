"""TVM kernel source for GPU targets (CUDA): sliding-window attention forward and backward.

The same mathematics as ``kernels.tvm_source`` (band + global keys in one softmax, log-sum-exp
out, FlashAttention-2 style backward from ``lse`` and ``delta``), written for a GPU: one thread
per row (a query in the forward and dq kernels, a key in the dk/dv kernel) walks its band with
an online softmax, reading the caller's ``(B, n, H, D)`` tensors directly (bounds checks instead
of padded copies: a GPU pays little for a predicated load, and copies cost memory traffic).

``gpu=False`` builds the very same loops with CPU loop kinds (``T.parallel`` / ``T.serial``
instead of ``blockIdx.x`` / ``threadIdx.x``), so the tests check these kernels' results against
the float64 reference on a machine without a GPU; ``gpu=True`` is what ``build_kernels`` compiles
for a ``cuda`` target.

* ``gpu_fwd(q, k, v, ok (B,n), gk (B,G,H,D), gv, gok (B,G), o, lse (B,n,H), w, causal)``
* ``gpu_bwd_dq(q, do, lse, delta, k, v, ok, gk, gv, gok, dq, w, causal)``: ``lse`` finite
  (``+BIG`` on rows with no key).
* ``gpu_bwd_dkdv(k, v, ok, q, do, lse, delta, dk, dv, w, causal)``: band keys only; the global
  keys' gradients are a sum over every query, computed by the caller in torch.

``G >= 1``: a call without global keys passes one unusable slot (``gok`` all 0).
"""

from __future__ import annotations

import math

import tvm
from tvm.script import tirx as T

THREADS = 128  # threads per block: one row each
NEG = -3.0e38


def sliding_window_gpu(head_dim: int, gpu: bool = True) -> tvm.IRModule:
    D = head_dim
    TB = THREADS
    scale = 1.0 / math.sqrt(D)

    def blocks(count):
        return T.thread_binding(count, thread="blockIdx.x") if gpu else T.parallel(count)

    def threads():
        return T.thread_binding(TB, thread="threadIdx.x") if gpu else T.serial(TB)

    @T.prim_func
    def gpu_fwd(
        q_h: T.handle,
        k_h: T.handle,
        v_h: T.handle,
        ok_h: T.handle,
        gk_h: T.handle,
        gv_h: T.handle,
        gok_h: T.handle,
        o_h: T.handle,
        lse_h: T.handle,
        w: T.int32,
        causal: T.int32,
    ):
        T.func_attr({"global_symbol": "gpu_fwd", "tirx.noalias": True})
        B = T.int32()
        n = T.int32()
        H = T.int32()
        G = T.int32()
        q = T.match_buffer(q_h, (B, n, H, D), "float32")
        k = T.match_buffer(k_h, (B, n, H, D), "float32")
        v = T.match_buffer(v_h, (B, n, H, D), "float32")
        ok = T.match_buffer(ok_h, (B, n), "float32")
        gk = T.match_buffer(gk_h, (B, G, H, D), "float32")
        gv = T.match_buffer(gv_h, (B, G, H, D), "float32")
        gok = T.match_buffer(gok_h, (B, G), "float32")
        o = T.match_buffer(o_h, (B, n, H, D), "float32")
        lse = T.match_buffer(lse_h, (B, n, H), "float32")
        nkeys = 2 * w + 1 - causal * w
        for bx in blocks((B * n * H + TB - 1) // TB):
            for tx in threads():
                acc = T.alloc_buffer((D,), "float32", scope="local")
                st = T.alloc_buffer((4,), "float32", scope="local")  # m, l, s, alpha
                r = bx * TB + tx
                if r < B * n * H:
                    b = r // (n * H)
                    i = r // H % n
                    h = r % H
                    for dd in T.serial(D):
                        acc[dd] = T.float32(0)
                    st[0] = T.float32(NEG)
                    st[1] = T.float32(0)
                    for t in T.serial(G + nkeys):
                        j = i - w + t - G
                        if (t < G and gok[b, T.min(t, G - 1)] > T.float32(0)) or (
                            t >= G
                            and j >= 0
                            and j < n
                            and ok[b, T.max(T.min(j, n - 1), 0)] > T.float32(0)
                        ):
                            st[2] = T.float32(0)
                            if t < G:
                                for dd in T.serial(D):
                                    st[2] = st[2] + q[b, i, h, dd] * gk[b, t, h, dd]
                            else:
                                for dd in T.serial(D):
                                    st[2] = st[2] + q[b, i, h, dd] * k[b, j, h, dd]
                            st[2] = st[2] * T.float32(scale)
                            st[3] = T.exp(T.min(st[0], st[2]) - T.max(st[0], st[2]))
                            if st[2] > st[0]:  # new max: rescale what came before
                                st[1] = st[1] * st[3] + T.float32(1)
                                for dd in T.serial(D):
                                    acc[dd] = acc[dd] * st[3]
                                st[0] = st[2]
                                st[3] = T.float32(1)
                            else:
                                st[1] = st[1] + st[3]
                            if t < G:
                                for dd in T.serial(D):
                                    acc[dd] = acc[dd] + st[3] * gv[b, t, h, dd]
                            else:
                                for dd in T.serial(D):
                                    acc[dd] = acc[dd] + st[3] * v[b, j, h, dd]
                    if st[1] > T.float32(0):
                        for dd in T.serial(D):
                            o[b, i, h, dd] = acc[dd] / st[1]
                        lse[b, i, h] = st[0] + T.log(st[1])
                    else:
                        for dd in T.serial(D):
                            o[b, i, h, dd] = T.float32(0)
                        lse[b, i, h] = T.float32(-math.inf)

    @T.prim_func
    def gpu_bwd_dq(
        q_h: T.handle,
        do_h: T.handle,
        lse_h: T.handle,
        delta_h: T.handle,
        k_h: T.handle,
        v_h: T.handle,
        ok_h: T.handle,
        gk_h: T.handle,
        gv_h: T.handle,
        gok_h: T.handle,
        dq_h: T.handle,
        w: T.int32,
        causal: T.int32,
    ):
        T.func_attr({"global_symbol": "gpu_bwd_dq", "tirx.noalias": True})
        B = T.int32()
        n = T.int32()
        H = T.int32()
        G = T.int32()
        q = T.match_buffer(q_h, (B, n, H, D), "float32")
        do = T.match_buffer(do_h, (B, n, H, D), "float32")
        lse = T.match_buffer(lse_h, (B, n, H), "float32")
        delta = T.match_buffer(delta_h, (B, n, H), "float32")
        k = T.match_buffer(k_h, (B, n, H, D), "float32")
        v = T.match_buffer(v_h, (B, n, H, D), "float32")
        ok = T.match_buffer(ok_h, (B, n), "float32")
        gk = T.match_buffer(gk_h, (B, G, H, D), "float32")
        gv = T.match_buffer(gv_h, (B, G, H, D), "float32")
        gok = T.match_buffer(gok_h, (B, G), "float32")
        dq = T.match_buffer(dq_h, (B, n, H, D), "float32")
        nkeys = 2 * w + 1 - causal * w
        for bx in blocks((B * n * H + TB - 1) // TB):
            for tx in threads():
                acc = T.alloc_buffer((D,), "float32", scope="local")
                st = T.alloc_buffer((2,), "float32", scope="local")  # s, dp
                r = bx * TB + tx
                if r < B * n * H:
                    b = r // (n * H)
                    i = r // H % n
                    h = r % H
                    for dd in T.serial(D):
                        acc[dd] = T.float32(0)
                    for t in T.serial(G + nkeys):
                        j = i - w + t - G
                        if (t < G and gok[b, T.min(t, G - 1)] > T.float32(0)) or (
                            t >= G
                            and j >= 0
                            and j < n
                            and ok[b, T.max(T.min(j, n - 1), 0)] > T.float32(0)
                        ):
                            st[0] = T.float32(0)
                            st[1] = T.float32(0)
                            if t < G:
                                for dd in T.serial(D):
                                    st[0] = st[0] + q[b, i, h, dd] * gk[b, t, h, dd]
                                    st[1] = st[1] + do[b, i, h, dd] * gv[b, t, h, dd]
                            else:
                                for dd in T.serial(D):
                                    st[0] = st[0] + q[b, i, h, dd] * k[b, j, h, dd]
                                    st[1] = st[1] + do[b, i, h, dd] * v[b, j, h, dd]
                            st[0] = T.exp(
                                T.max(st[0] * T.float32(scale) - lse[b, i, h], T.float32(-100))
                            )
                            st[1] = st[0] * (st[1] - delta[b, i, h])
                            if t < G:
                                for dd in T.serial(D):
                                    acc[dd] = acc[dd] + st[1] * gk[b, t, h, dd]
                            else:
                                for dd in T.serial(D):
                                    acc[dd] = acc[dd] + st[1] * k[b, j, h, dd]
                    for dd in T.serial(D):
                        dq[b, i, h, dd] = acc[dd] * T.float32(scale)

    @T.prim_func
    def gpu_bwd_dkdv(
        k_h: T.handle,
        v_h: T.handle,
        ok_h: T.handle,
        q_h: T.handle,
        do_h: T.handle,
        lse_h: T.handle,
        delta_h: T.handle,
        dk_h: T.handle,
        dv_h: T.handle,
        w: T.int32,
        causal: T.int32,
    ):
        T.func_attr({"global_symbol": "gpu_bwd_dkdv", "tirx.noalias": True})
        B = T.int32()
        n = T.int32()
        H = T.int32()
        k = T.match_buffer(k_h, (B, n, H, D), "float32")
        v = T.match_buffer(v_h, (B, n, H, D), "float32")
        ok = T.match_buffer(ok_h, (B, n), "float32")
        q = T.match_buffer(q_h, (B, n, H, D), "float32")
        do = T.match_buffer(do_h, (B, n, H, D), "float32")
        lse = T.match_buffer(lse_h, (B, n, H), "float32")
        delta = T.match_buffer(delta_h, (B, n, H), "float32")
        dk = T.match_buffer(dk_h, (B, n, H, D), "float32")
        dv = T.match_buffer(dv_h, (B, n, H, D), "float32")
        nq = 2 * w + 1 - causal * w
        for bx in blocks((B * n * H + TB - 1) // TB):
            for tx in threads():
                ak = T.alloc_buffer((D,), "float32", scope="local")
                av = T.alloc_buffer((D,), "float32", scope="local")
                st = T.alloc_buffer((2,), "float32", scope="local")  # p, ds
                r = bx * TB + tx
                if r < B * n * H:
                    b = r // (n * H)
                    j = r // H % n
                    h = r % H
                    for dd in T.serial(D):
                        ak[dd] = T.float32(0)
                        av[dd] = T.float32(0)
                    if ok[b, j] > T.float32(0):
                        for t in T.serial(nq):
                            i = j - w + causal * w + t  # queries whose band holds key j
                            if i >= 0 and i < n:
                                st[0] = T.float32(0)
                                st[1] = T.float32(0)
                                for dd in T.serial(D):
                                    st[0] = st[0] + q[b, i, h, dd] * k[b, j, h, dd]
                                    st[1] = st[1] + do[b, i, h, dd] * v[b, j, h, dd]
                                st[0] = T.exp(
                                    T.max(st[0] * T.float32(scale) - lse[b, i, h], T.float32(-100))
                                )
                                st[1] = st[0] * (st[1] - delta[b, i, h])
                                for dd in T.serial(D):
                                    av[dd] = av[dd] + st[0] * do[b, i, h, dd]
                                    ak[dd] = ak[dd] + st[1] * q[b, i, h, dd]
                    for dd in T.serial(D):
                        dk[b, j, h, dd] = ak[dd] * T.float32(scale)
                        dv[b, j, h, dd] = av[dd]

    return tvm.IRModule(
        {"gpu_fwd": gpu_fwd, "gpu_bwd_dq": gpu_bwd_dq, "gpu_bwd_dkdv": gpu_bwd_dkdv}
    )
