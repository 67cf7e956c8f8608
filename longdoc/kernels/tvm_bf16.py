"""Host side of the bf16 attention kernel (``kernels.tvm_bf16_source``): which of its engines
this CPU and OS can run (AMX tiles, else AVX512-BF16 vectors), the target features it is
compiled with, and the band forward on bf16 tensors (packing the keys and values into the
layouts both engines read, with the compiled pack kernels).

Imports TVM only through the kernel functions it is handed (loaded by ``tvm_backend``)."""

from __future__ import annotations

import ctypes
import functools
import platform
from pathlib import Path

import torch

_ARCH_REQ_XCOMP_PERM = 0x1023  # arch_prctl: ask for an extended state component
_XFEATURE_XTILEDATA = 18  # the AMX tile data
_SYS_ARCH_PRCTL = 158  # x86-64 syscall number
#: ``tvm_bf16_source.HEAD_DIMS`` (kept here so that deciding needs no TVM import)
HEAD_DIMS = (32, 64)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_amx_bf16() -> bool:
    return platform.machine() == "x86_64" and {"amx_bf16", "amx_tile"} <= cpu_flags()


def cpu_has_avx512_bf16() -> bool:
    return platform.machine() == "x86_64" and {"avx512f", "avx512_bf16"} <= cpu_flags()


def target_features() -> list[str]:
    """LLVM features to add to the host target. LLVM can name a virtualised CPU after an older
    model than the one it is (a Sapphire Rapids guest as ``rocketlake``), whose feature set
    lacks AMX and AVX512-BF16: the flags the kernel is known to have decide."""
    features = ["+amx-tile", "+amx-bf16"] if cpu_has_amx_bf16() else []
    return features + (["+avx512bf16"] if cpu_has_avx512_bf16() else [])


@functools.cache
def amx_usable() -> bool:
    """The CPU has AMX-BF16 and Linux granted this process the tile state (without the grant,
    the first tile instruction kills the process with SIGILL)."""
    if not cpu_has_amx_bf16():
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0


def applies(q: torch.Tensor, fns: dict) -> bool:
    """Whether a bf16 call that needs no gradient can take the bf16 kernel: the library has one
    (``fns["bf16_engine"]``, what its target could run) and this process can run it."""
    engine = fns.get("bf16_engine")
    return (
        q.dtype == torch.bfloat16
        and q.shape[-1] in HEAD_DIMS
        and (engine == "avx512bf16" or (engine == "amx" and amx_usable()))
    )


@functools.cache
def _tile_config() -> torch.Tensor:
    from .tvm_bf16_source import TILE_CONFIG

    return torch.frombuffer(bytearray(TILE_CONFIG), dtype=torch.uint8)


def _up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def band_forward(fns, q, k, v, key_ok, gk, gv, g_ok, spec, gq=None, rok=None):
    """The band and the global keys of contiguous bf16 ``(B, m, H, D)`` tensors by the bf16
    kernel: a bf16 ``(B, m, H, D)`` output (rounded to nearest even from the fp32
    accumulators). ``spec`` is ``tvm_backend._BandSpec``.

    With ``gq (B, G, H, D)`` global queries and ``rok (B, m)`` the keys they may use, the kernel
    also scores them against every usable key while it has them in cache: ``(out, gpart,
    gstat)``, one partial softmax per parallel task for ``tvm_backend._combine_partials``."""
    from .tvm_bf16_source import ROW_GROUP, ROWS
    from .tvm_source import NEG

    if fns["bf16_engine"] == "amx" and not amx_usable():  # else a SIGILL at the first tile op
        raise RuntimeError("the AMX kernel needs a CPU with AMX-BF16 and Linux's AMX grant")
    b, m, h, d = q.shape
    g = 0 if gk is None else gk.shape[1]
    gp, padl = _up(g, 32), _up(spec.reach, 32)
    # packed positions: gp global slots, padl before the sequence, then up to the last tile's
    # band end rounded to whole 32-key blocks (the kernel reads chunks of those)
    length = gp + padl + _up(max(spec.row_hi(_up(m, 16) - 1), m), 32) + 32
    if gk is None:  # the pack kernels take at least one global slot
        gk = gv = q.new_zeros(b, 1, h, d)
    kp = torch.empty(b, h, length // 16, d // 2, 16, dtype=torch.int32).view(torch.uint32)
    vp = torch.empty(b, h, length // 32, d // 16, 16, 16, dtype=torch.int32).view(torch.uint32)
    fns["bf16_pack_k"](k.view(torch.uint32), gk.contiguous().view(torch.uint32), kp, g, gp, padl)
    fns["bf16_pack_v"](v.view(torch.uint16), gv.contiguous().view(torch.uint16), vp, g, gp, padl)
    ok = torch.zeros(b, length, dtype=torch.float32)
    if g:
        ok[:, :g] = g_ok
    ok[:, gp + padl : gp + padl + m] = key_ok
    out = torch.empty(b, m, h, d, dtype=torch.bfloat16)
    ngq = 0 if gq is None else gq.shape[1]
    tasks = -(-_up(m, ROWS) // (ROWS * ROW_GROUP))  # the kernel's parallel tasks
    if gq is None:
        gq, rok = q.new_zeros(b, 1, h, d), torch.zeros(b, 1)
    gpart = torch.zeros(b, h, tasks, max(ngq, 1), d)
    gstat = torch.stack((torch.full(gpart.shape[:-1], NEG), torch.zeros(gpart.shape[:-1])), dim=-1)
    causal, blk, nbr = int(spec.causal), spec.block, spec.neighbors
    fns["bf16_fwd"](
        q.view(torch.uint16), kp, vp, ok, out.view(torch.uint16),
        gq.contiguous().view(torch.uint32), rok.to(torch.float32).contiguous(), gpart, gstat,
        _tile_config(), spec.window, causal, gp, padl, blk, nbr, ngq,
    )  # fmt: skip
    return (out, gpart, gstat) if ngq else out
