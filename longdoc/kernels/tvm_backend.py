"""The ``tvm`` backend: TVM-compiled sliding-window attention (CPU; CUDA where TVM can), plus its
build cache.

What it supports:

* Patterns: ``SlidingWindow`` (any window, int or per-head dilation, causal or not),
  ``BlockLocal`` (any block and neighbors; a block need not divide the length), ``Strided``
  (its band ``|i-j| <= stride`` in the kernels, the every-``stride``-th keys in torch) and
  ``Fixed`` (the query's own block, causal or not, in the kernels, the summary columns in
  torch); the parts are merged by log-sum-exp. The kernels take each query's keys as a
  contiguous range given by runtime arguments (``_BandSpec``: a window around the query, or
  whole blocks), so one compiled library serves every pattern; a block pattern costs its own
  keys (a ``BlockLocal(b)`` query reads ``b`` keys where a window of the same reach reads
  ``2b+1``). CUDA kernels: sliding windows only. Dilation is folded into the batch dimension
  and global query rows are computed outside the kernels (see ``kernels.torch_backend``); the
  forward kernel takes the global *keys* before each band, so it computes one softmax over
  band + global keys.
* dtypes: float32 kernels. bfloat16 inputs are computed by the float32 kernel (upcast on the
  way in, rounded on the way out), exactly like the ``torch`` backend computes them.
* Devices: CPU through LLVM (``kernels.tvm_source``: forward reading q, k, v in place with the
  rows in the vector lanes; backward on packed query-side operands; vectorised register tiles,
  parallel over batch x heads x row tiles). CUDA: ``kernels.tvm_gpu_source``
  (one thread per row) compiles for ``cuda:sm_XX`` targets with TVM's CUDA code generator and
  ``nvcc``; running it needs a TVM built with the CUDA runtime, which the installed wheel is not
  (``cuda_runtime_error`` says so, and CUDA tensors get that error).
* Forward: the compiled kernel returns the output and its log-sum-exp.
* Backward: compiled too (FlashAttention-2 style, restricted to the band): ``_Band`` is a
  ``torch.autograd.Function`` whose backward runs ``sliding_window_bwd_dkdv`` (one pass over the
  band from the keys' side: dk, dv, and dq through per-segment private rows that
  ``dq_overlap_add`` sums) from q, k, v, out, lse and the output gradient; it also takes the
  gradient of ``lse``, so everything around it (dilation folding, Strided's long-range part,
  global rows) differentiates exactly. The global keys' part (their own gradients and theirs
  to dq, ``O(G * seq)``) is torch ops. No seq x seq tensor and no torch recompute of the band.

Build cache layout: ``<cache_dir>/<target-key>/<variant>.so`` plus ``manifest.json`` (TVM
version, target, sha256 of the kernel sources, compile seconds and file sha256 per variant). A
library is loaded only if all of these match; anything else is recompiled and rewritten
atomically (temp file in the same directory + ``os.replace``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from . import torch_backend
from .patterns import BlockLocal, Fixed, Pattern, SlidingWindow, Strided
from .settings import cache_dir

log = logging.getLogger(__name__)

KERNEL_DTYPES = ("float32",)
TARGETS = ("llvm", "cuda")
_SOURCES = (
    Path(__file__).with_name("tvm_source.py"),
    Path(__file__).with_name("tvm_gpu_source.py"),
)
_lock = threading.Lock()
_loaded: dict[tuple[str, str, str, int], Any] = {}  # (dir, target key, dtype, head_dim) -> fn


# ---- environment -----------------------------------------------------------------------------


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _import_tvm():
    """Import TVM, first defaulting ``TVM_NUM_THREADS`` to the usable core count (TVM's own
    default is half the cores)."""
    os.environ.setdefault("TVM_NUM_THREADS", str(_usable_cores()))
    import tvm

    return tvm


def tvm_version() -> str | None:
    """Installed TVM version without importing it (None if not installed)."""
    for dist in ("apache-tvm", "tvm"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def source_hash() -> str:
    h = hashlib.sha256()
    for path in _SOURCES:
        h.update(path.read_bytes())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _host_cpu() -> str | None:
    """The host CPU name as LLVM detects it (e.g. ``znver4``), None if only ``generic``.

    Imports TVM (only called when building or loading a kernel)."""
    _import_tvm()
    from tvm.target import codegen

    cpu = codegen.llvm_get_system_cpu()
    return cpu if cpu and cpu != "generic" else None


def resolve_target(name: str) -> tuple[str, dict[str, Any]]:
    """A target name -> (cache key, TVM target dict).

    * ``"llvm"``: this host's CPU, ``("llvm-<cpu>", {"kind": "llvm", "mcpu": <cpu>})``.
    * ``"cuda"`` or ``"cuda:sm_XX"``: an NVIDIA GPU (``-arch`` given, or detected by TVM from a
      local GPU), host code for this CPU: ``("cuda-sm_XX", {"kind": "cuda", "arch": ...})``.
      Compiling needs TVM's CUDA code generator and ``nvcc``; *running* needs a TVM built with
      the CUDA runtime (see ``cuda_runtime_error``).
    """
    kind, _, arch = name.partition(":")
    if kind not in TARGETS or (arch and kind != "cuda"):
        raise ValueError(f"unsupported TVM target {name!r}: use 'llvm', 'cuda' or 'cuda:sm_XX'")
    cpu = _host_cpu()
    host: dict[str, Any] = {"kind": "llvm"}
    if cpu:
        host["mcpu"] = cpu
    if kind == "llvm":
        return (f"llvm-{cpu}" if cpu else "llvm"), host
    tvm = _import_tvm()
    if tvm.get_global_func("target.build.cuda", allow_missing=True) is None:
        raise ValueError("TVM target 'cuda': the installed TVM has no CUDA code generator")
    if not arch:
        arch = str(tvm.target.Target("cuda").attrs.get("arch", "") or "")
        if not arch or not tvm.runtime.enabled("cuda") or not tvm.cuda(0).exist:
            raise ValueError(
                "TVM target 'cuda': no GPU here to detect the architecture from; name it, e.g. "
                "'cuda:sm_90'"
            )
    return f"cuda-{arch}", {"kind": "cuda", "arch": arch, "host": host}


def cuda_runtime_error() -> str | None:
    """Why compiled CUDA kernels can't run here (None if they can): they need a TVM built with
    the CUDA runtime and a visible GPU. The ``apache-tvm`` wheel installed here (0.27) compiles
    CUDA code but has no CUDA runtime."""
    tvm = _import_tvm()
    if not tvm.runtime.enabled("cuda"):
        return (
            f"the installed TVM ({tvm_version()}) was built without the CUDA runtime, so it can "
            "compile CUDA kernels (build_kernels(targets=('cuda:sm_XX',))) but not run them; "
            "use backend='torch' on GPUs, or a TVM built with USE_CUDA=ON"
        )
    if not tvm.cuda(0).exist:
        return "TVM has the CUDA runtime but sees no GPU"
    return None


def variant_name(dtype: str, head_dim: int) -> str:
    return f"sliding_window_{dtype}_d{head_dim}"


# ---- build cache -----------------------------------------------------------------------------


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _entry_valid(
    manifest: dict[str, Any] | None, directory: Path, target: dict, name: str
) -> str | None:
    """Why the cached entry can't be used, or None if it can."""
    if manifest is None:
        return "no readable manifest"
    if manifest.get("tvm_version") != tvm_version():
        return f"TVM version {manifest.get('tvm_version')} != {tvm_version()}"
    if manifest.get("target") != target:
        return f"target {manifest.get('target')} != {target}"
    if manifest.get("source_hash") != source_hash():
        return "kernel source changed"
    entry = manifest.get("variants", {}).get(name)
    if not isinstance(entry, dict):
        return "variant not in manifest"
    path = directory / str(entry.get("file", ""))
    if not path.is_file():
        return f"{path.name} missing"
    if _sha256(path) != entry.get("sha256"):
        return f"{path.name} does not match its sha256 (corrupt or modified)"
    return None


def _compile(target: dict, dtype: str, head_dim: int, path: Path) -> float:
    if dtype not in KERNEL_DTYPES:
        raise ValueError(f"no TVM kernel for dtype {dtype!r}; kernels exist for {KERNEL_DTYPES}")
    tvm = _import_tvm()

    start = time.perf_counter()
    if target["kind"] == "cuda":
        from . import tvm_gpu_source

        mod = tvm_gpu_source.sliding_window_gpu(head_dim, gpu=True)
    else:
        from . import tvm_source

        mod = tvm_source.sliding_window(head_dim)
    lib = tvm.compile(mod, target=tvm.target.Target(target))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".so")
    os.close(fd)
    try:
        lib.export_library(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return time.perf_counter() - start


def ensure_variant(
    out_dir: str | os.PathLike[str], target_name: str, dtype: str, head_dim: int
) -> dict[str, Any]:
    """Make sure a valid compiled library for the variant is in ``out_dir/<target-key>/``.

    Returns ``{"path", "status": "cached" | "compiled", "seconds", "target_key", "target"}``.
    """
    if dtype not in KERNEL_DTYPES:
        raise ValueError(f"no TVM kernel for dtype {dtype!r}; kernels exist for {KERNEL_DTYPES}")
    key, target = resolve_target(target_name)
    directory = Path(out_dir) / key
    name = variant_name(dtype, head_dim)
    with _lock:
        directory.mkdir(parents=True, exist_ok=True)
        manifest = _read_manifest(directory)
        why = _entry_valid(manifest, directory, target, name)
        path = directory / f"{name}.so"
        if why is None:
            entry = manifest["variants"][name]
            return {
                "path": str(directory / entry["file"]),
                "status": "cached",
                "seconds": entry.get("compile_seconds"),
                "target_key": key,
                "target": target,
            }
        log.info("compiling TVM kernel %s for %s into %s (%s)", name, key, directory, why)
        seconds = _compile(target, dtype, head_dim, path)
        fresh = {
            "tvm_version": tvm_version(),
            "target": target,
            "target_key": key,
            "source_hash": source_hash(),
            "variants": {},
        }
        old = manifest or {}
        if all(old.get(f) == fresh[f] for f in ("tvm_version", "target", "source_hash")):
            fresh["variants"] = {
                k: v for k, v in old.get("variants", {}).items() if isinstance(v, dict)
            }
        fresh["variants"][name] = {
            "file": path.name,
            "sha256": _sha256(path),
            "compile_seconds": round(seconds, 3),
            "dtype": dtype,
            "head_dim": head_dim,
        }
        _atomic_write_bytes(
            directory / "manifest.json", (json.dumps(fresh, indent=2) + "\n").encode()
        )
        log.info("compiled %s in %.2f s", name, seconds)
        return {
            "path": str(path),
            "status": "compiled",
            "seconds": round(seconds, 3),
            "target_key": key,
            "target": target,
        }


def build_kernels(
    out_dir: str | os.PathLike[str],
    dtypes: tuple[str, ...] = ("float32",),
    head_dims: tuple[int, ...] = (32,),
    targets: tuple[str, ...] = ("llvm",),
) -> dict[str, Any]:
    """Compile (or confirm cached) every dtype x head_dim x target variant into ``out_dir``.

    ``bfloat16`` is accepted and served by the float32 kernel (the backend upcasts bf16 inputs),
    so it maps to the float32 variant. Returns a summary for the pipeline's own manifest:
    ``{"tvm_version", "source_hash", "out_dir", "variants": {"<target-key>/<variant>": {"path",
    "status", "seconds", "dtype", "head_dim", "target"}}}``.
    """
    summary: dict[str, Any] = {
        "tvm_version": tvm_version(),
        "source_hash": source_hash(),
        "out_dir": str(out_dir),
        "variants": {},
    }
    for target_name in targets:
        for dtype in dtypes:
            kernel_dtype = "float32" if dtype == "bfloat16" else dtype
            for head_dim in head_dims:
                res = ensure_variant(out_dir, target_name, kernel_dtype, int(head_dim))
                label = f"{res['target_key']}/{variant_name(kernel_dtype, int(head_dim))}"
                summary["variants"][label] = {
                    "path": res["path"],
                    "status": res["status"],
                    "seconds": res["seconds"],
                    "dtype": kernel_dtype,
                    "requested_dtype": dtype,
                    "head_dim": int(head_dim),
                    "target": res["target"],
                }
    return summary


def _kernel(head_dim: int, target_name: str = "llvm") -> dict[str, Any]:
    """The loaded kernel functions (``fwd``, ``dq``, ``dkdv``), from the in-process table, the
    on-disk cache (``tvm.runtime.load_module``) or a fresh compile, in that order."""
    root = str(Path(cache_dir()).resolve())
    memo = (root, target_name, "float32", head_dim)
    fns = _loaded.get(memo)
    if fns is not None:
        return fns
    tvm = _import_tvm()
    if target_name.startswith("cuda"):
        why = cuda_runtime_error()
        if why is not None:
            raise ValueError(f"backend 'tvm' can't run CUDA kernels: {why}")
    res = ensure_variant(root, target_name, "float32", head_dim)
    lib = tvm.runtime.load_module(res["path"])
    if target_name.startswith("cuda"):
        fns = {"fwd": lib["gpu_fwd"], "dq": lib["gpu_bwd_dq"], "dkdv": lib["gpu_bwd_dkdv"]}
    else:
        fns = {
            "fwd": lib["sliding_window_fwd"],
            "dkdv": lib["sliding_window_bwd_dkdv"],
            "pack_t": lib["pack_t"],
            "pack_p": lib["pack_p"],
            "dq_add": lib["dq_overlap_add"],
        }
    _loaded[memo] = fns
    return fns


@functools.lru_cache(maxsize=8)
def gpu_kernels_on_cpu(head_dim: int) -> dict[str, Any]:
    """The GPU kernels' loops compiled for this CPU (``tvm_gpu_source`` with ``gpu=False``), not
    cached: lets tests check the CUDA path's arithmetic on a machine without a GPU."""
    tvm = _import_tvm()
    from . import tvm_gpu_source

    _, target = resolve_target("llvm")
    lib = tvm.compile(tvm_gpu_source.sliding_window_gpu(head_dim, gpu=False), target=target)
    return {"fwd": lib["gpu_fwd"], "dq": lib["gpu_bwd_dq"], "dkdv": lib["gpu_bwd_dkdv"]}


def cached_variant_exists(head_dim: int, target_name: str = "llvm") -> bool:
    """Cheap check (no TVM import) that the cache has a manifest entry for this head_dim whose
    TVM version and source hash match; the full check (target, file sha256) happens on load."""
    root = Path(cache_dir())
    name = variant_name("float32", head_dim)
    if not root.is_dir():
        return False
    for directory in root.glob(f"{target_name}*"):
        manifest = _read_manifest(directory)
        if (
            manifest
            and manifest.get("tvm_version") == tvm_version()
            and manifest.get("source_hash") == source_hash()
            and name in manifest.get("variants", {})
        ):
            return True
    return False


# ---- attention -------------------------------------------------------------------------------


def supports(pattern: Pattern) -> bool:
    return isinstance(pattern, (SlidingWindow, Strided, BlockLocal, Fixed))


#: Where ``auto`` may pick ``tvm`` (CPU only), set from ``benchmarks/attention.py`` (the figures
#: are in benchmarks/RESULTS.md, "Attention kernels" and "OpenMP wait policy"):
#:
#: * ``inference`` (no gradient needed): ``tvm``'s forward is several times faster than
#:   ``torch``'s with a fraction of its extra memory, so yes.
#: * ``training``: forward+backward is about on par with ``torch``'s under libgomp's default
#:   spin policy and only somewhat faster with ``OMP_WAIT_POLICY=PASSIVE`` (the backward
#:   dominates; its kernels are the older, slower part), at about half its extra memory;
#:   ``torch``'s chunks run in PyTorch's fused flash-attention CPU kernel on MKL GEMMs and are
#:   the longer-tested path, so no.
AUTO_ELIGIBLE = {"inference": True, "training": False}


def usable_cached(q: torch.Tensor, pattern: Pattern, needs_grad: bool) -> bool:
    """Whether ``auto`` should use this backend: only where ``AUTO_ELIGIBLE`` (see above) says
    so for this kind of call, on CPU, float32/bfloat16, a supported pattern, and an already
    compiled kernel for the head_dim in the cache (``auto`` never triggers a compile)."""
    if not AUTO_ELIGIBLE["training" if needs_grad else "inference"]:
        return False
    if q.device.type != "cpu" or not supports(pattern):
        return False
    if q.dtype not in (torch.float32, torch.bfloat16) or tvm_version() is None:
        return False
    return cached_variant_exists(q.shape[-1])


def _pad_seq(x: torch.Tensor, left: int, right: int, value: float = 0.0) -> torch.Tensor:
    """Pad dim 1 (the sequence) of a ``(B, n, ...)`` tensor."""
    pads = [0, 0] * (x.dim() - 2) + [left, right]
    return F.pad(x, pads, value=value)


#: The backward kernels read padded (and partly transposed) copies of their query-side operands
#: (the forward kernel reads everything in place). For long inputs the heads are processed in
#: groups so that each such copy stays under this many bytes: it bounds the extra memory of the
#: backward at a few of these copies, whatever the length. Key-side operands and outputs are
#: never copied: the kernels index them at ``h0``.
CHUNK_BYTES = 8 << 20


def _head_groups(x: torch.Tensor) -> list[slice]:
    b, m, h, d = x.shape
    per_head = max(1, b * m * d * 4)
    hc = max(1, min(h, CHUNK_BYTES // per_head))
    return [slice(h0, min(h, h0 + hc)) for h0 in range(0, h, hc)]


class _BandSpec(NamedTuple):
    """Which keys the compiled kernels give each query (see ``tvm_source._row_lo``): a sliding
    window (``block == 0``: keys ``i - window .. i + window``, or ``.. i`` when causal) or
    blocks (``block > 0``: the query's block and ``neighbors`` blocks each side, capped at the
    query when causal)."""

    window: int = 0
    causal: bool = False
    block: int = 0
    neighbors: int = 0

    @property
    def reach(self) -> int:
        """How far from a query its keys (and from a key its queries) can be on either side:
        the zero padding the kernels' packed buffers put before the sequence (their ``w``)."""
        return self.window if self.block == 0 else (self.neighbors + 1) * self.block - 1

    def row_hi(self, i: int) -> int:
        """One past the last key of query ``i`` (``tvm_source._row_hi``)."""
        if self.block == 0:
            return i + self.window + 1 - (self.window if self.causal else 0)
        end = (i // self.block + self.neighbors + 1) * self.block
        return min(end, i + 1) if self.causal else end

    def query_hi(self, j: int) -> int:
        """One past the last query that sees key ``j`` (``tvm_source._query_hi``)."""
        if self.block == 0:
            return j + self.window + 1
        return (j // self.block + self.neighbors + 1) * self.block


def _fwd_band_len(m: int, spec: _BandSpec) -> int:
    """Number of packed band positions (after the global slots) that the forward kernel's ``ok``
    vector covers: ``spec.reach`` before the sequence, the ``m`` positions, then enough that the
    last row tile's keys (``FWD_ROWS`` rows, whole blocks of ``FWD_KEYS`` keys) stay inside."""
    from .tvm_source import FWD_KEYS, FWD_ROWS

    mt = -(-m // FWD_ROWS) * FWD_ROWS
    return spec.reach + spec.row_hi(mt - 1) + FWD_KEYS


def _band_len(m: int, rows: int, spec: _BandSpec) -> int:
    """Length ``NP`` of a band-side packed buffer: ``spec.reach`` zero rows on the left, then the
    ``m`` positions, then zeros far enough that the last tile (``rows`` keys, reading whole
    query tiles of ``KEY_TILE``) stays inside; a multiple of ``KEY_TILE`` (the pack kernels'
    block)."""
    from .tvm_source import KEY_TILE

    mt = -(-m // rows) * rows
    need = spec.reach + spec.query_hi(mt - 1) + KEY_TILE
    return -(-need // KEY_TILE) * KEY_TILE


def _pack(fns, x: torch.Tensor, hs: slice, length: int, w: int, transposed: bool) -> torch.Tensor:
    """Heads ``hs`` of ``x (B, m, H, D)`` as a padded buffer of ``length`` positions,
    ``(B, h, D, length)`` if ``transposed`` else ``(B, h, length, D)``, by the compiled (parallel)
    pack kernels: one pass, zeros written only where they belong. Layout: ``w`` zeros, ``x``,
    zeros."""
    b, _, _, d = x.shape
    hg = hs.stop - hs.start
    shape = (b, hg, d, length) if transposed else (b, hg, length, d)
    out = torch.empty(shape, dtype=torch.float32)
    fns["pack_t" if transposed else "pack_p"](x, out, hs.start, w, 0, length)
    return out


class _Band(torch.autograd.Function):
    """Banded attention plus the global keys on folded ``(B, m, H, D)`` float32 tensors, by the
    compiled kernels.

    The global keys ``gk, gv (B, G, H, D)`` (usable where ``g_ok (B, G)``) come before the band
    in the forward kernel, so it takes one softmax over band + global keys. Returns ``(out, lse)``;
    the backward handles gradients of both, so autograd through the torch code around it
    (dilation folding, global rows) is exact. The global keys' own gradients (a sum over every
    query: ``O(G * m)``) are computed here in torch."""

    @staticmethod
    def forward(ctx, q, k, v, key_ok, gk, gv, g_ok, fns, spec: _BandSpec):
        from .tvm_source import FWD_KEYS

        q, k, v = (x.contiguous() for x in (q, k, v))
        b, m, h, d = q.shape
        w = spec.reach
        # the kernel reads q, k, v and the global keys in place (no packed copies); it numbers
        # the keys gp global slots first, then the band positions (see kernels.tvm_source)
        if gk is None:
            gp, gk_, gv_ = 0, q.new_zeros(b, 1, h, d), q.new_zeros(b, 1, h, d)
        else:
            gk, gv = gk.contiguous(), gv.contiguous()
            gp, gk_, gv_ = -(-gk.shape[1] // FWD_KEYS) * FWD_KEYS, gk, gv
        okp = _band_ok(key_ok, g_ok, gp, w, gp + _fwd_band_len(m, spec))
        out = torch.empty(b, m, h, d, dtype=torch.float32)
        lse = torch.empty(b, m, h, dtype=torch.float32)
        causal, blk, nbr = int(spec.causal), spec.block, spec.neighbors
        fns["fwd"](q, k, v, gk_, gv_, okp, out, lse, w, causal, gp, blk, nbr)
        ctx.save_for_backward(q, k, v, key_ok, out, lse, gk, gv, g_ok)
        ctx.fns, ctx.spec = fns, spec
        return out, lse

    @staticmethod
    def backward(ctx, g_out, g_lse):
        from .tvm_source import BIG, KEY_ROWS, KEY_TILE, SEG_KEYS

        q, k, v, key_ok, out, lse, gk, gv, g_ok = ctx.saved_tensors
        fns, spec = ctx.fns, ctx.spec
        w, causal, blk, nbr = spec.reach, int(spec.causal), spec.block, spec.neighbors
        b, m, h, d = q.shape
        if g_out is None:
            g_out = torch.zeros_like(out)
        g_out = g_out.to(torch.float32).contiguous()
        delta = torch.einsum("bmhd,bmhd->bmh", g_out, out)  # rowsum(dO * O), no full temp
        if g_lse is not None:
            delta = delta - g_lse
        live = torch.isfinite(lse)
        delta = torch.where(live, delta, torch.zeros_like(delta)).contiguous()
        lse_s = torch.where(live, lse, torch.full_like(lse, BIG)).contiguous()
        okf = key_ok.to(torch.float32).contiguous()
        len_k = _band_len(m, KEY_ROWS, spec)
        dq, dk, dv = (torch.empty(b, m, h, d, dtype=torch.float32) for _ in range(3))
        segs = -(-m // SEG_KEYS)
        for hs in _head_groups(q):
            # one pass over the band from the keys' side: dk, dv per key, and each key tile's
            # ds^T k into private dq rows per segment of SEG_KEYS keys (no write races), which
            # dq_overlap_add then sums. The band's p and ds are computed once, not twice.
            # private rows of a segment: its keys' queries reach ``w`` before and after it
            dqp = torch.empty(
                b, hs.stop - hs.start, segs, SEG_KEYS + 2 * w + KEY_TILE, d, dtype=torch.float32
            )
            qt = _pack(fns, q, hs, len_k, w, transposed=True)
            dot = _pack(fns, g_out, hs, len_k, w, transposed=True)
            qp = _pack(fns, q, hs, len_k, w, transposed=False)
            dop = _pack(fns, g_out, hs, len_k, w, transposed=False)
            right = len_k - w - m
            lsep = _pad_seq(lse_s[:, :, hs], w, right, BIG).permute(0, 2, 1).contiguous()
            deltap = _pad_seq(delta[:, :, hs], w, right).permute(0, 2, 1).contiguous()
            fns["dkdv"](
                k,
                v,
                okf,
                qt,
                dot,
                qp,
                dop,
                lsep,
                deltap,
                dk,
                dv,
                dqp,
                w,
                causal,
                hs.start,
                blk,
                nbr,
            )
            del qt, dot, qp, dop
            fns["dq_add"](dqp, dq, w, hs.start)
            del dqp
        dgk, dgv, dq_g = _global_key_grads(q, gk, gv, g_ok, g_out, lse_s, delta)
        if dq_g is not None:
            dq += dq_g
        return dq, dk, dv, None, dgk, dgv, None, None, None, None


def _global_key_grads(q, gk, gv, g_ok, g_out, lse_s, delta):
    """Gradients of the global keys/values ``(B, G, H, D)`` (a sum over every query, ``O(G * m)``)
    and the queries' gradient through the global keys ``(B, m, H, D)``, from the final
    log-sum-exp (``BIG`` on rows with no key); all None without global keys."""
    if gk is None:
        return None, None, None
    scale = q.shape[-1] ** -0.5
    s = torch.einsum("bmhd,bghd->bmhg", q, gk) * scale
    usable = g_ok.view(g_ok.shape[0], 1, 1, -1)
    p = torch.where(usable, torch.exp(s - lse_s.unsqueeze(-1)), torch.zeros_like(s))
    dgv = torch.einsum("bmhg,bmhd->bghd", p, g_out)
    ds = p * (torch.einsum("bmhd,bghd->bmhg", g_out, gv) - delta.unsqueeze(-1))
    dgk = torch.einsum("bmhg,bmhd->bghd", ds, q) * scale
    dq_g = torch.einsum("bmhg,bghd->bmhd", ds, gk) * scale
    return dgk, dgv, dq_g


class _GpuBand(torch.autograd.Function):
    """``_Band`` for the GPU kernels (``kernels.tvm_gpu_source``): the same inputs, outputs and
    gradients; the kernels read the ``(B, m, H, D)`` tensors directly (no packed copies)."""

    @staticmethod
    def forward(ctx, q, k, v, key_ok, gk, gv, g_ok, fns, spec: _BandSpec):
        if spec.block:
            raise ValueError("the GPU kernels compute sliding windows only, not blocks")
        window, causal = spec.window, spec.causal
        q, k, v = (x.contiguous() for x in (q, k, v))
        b, m, h, d = q.shape
        if gk is None:  # the kernels take G >= 1: one unusable slot
            gk_, gv_ = q.new_zeros(b, 1, h, d), q.new_zeros(b, 1, h, d)
            gok = q.new_zeros(b, 1)
        else:
            gk_, gv_ = gk.contiguous(), gv.contiguous()
            gok = g_ok.to(torch.float32).contiguous()
        okf = key_ok.to(torch.float32).contiguous()
        out = torch.empty_like(q)
        lse = q.new_empty(b, m, h)
        w = int(window)
        fns["fwd"](q, k, v, okf, gk_, gv_, gok, out, lse, w, int(causal))
        ctx.save_for_backward(q, k, v, okf, out, lse, gk_, gv_, gok)
        ctx.fns, ctx.w, ctx.causal, ctx.has_g = fns, w, int(causal), gk is not None
        ctx.g_ok = g_ok
        return out, lse

    @staticmethod
    def backward(ctx, g_out, g_lse):
        from .tvm_source import BIG

        q, k, v, okf, out, lse, gk, gv, gok = ctx.saved_tensors
        fns, w, causal = ctx.fns, ctx.w, ctx.causal
        if g_out is None:
            g_out = torch.zeros_like(out)
        g_out = g_out.to(torch.float32).contiguous()
        delta = torch.einsum("bmhd,bmhd->bmh", g_out, out)
        if g_lse is not None:
            delta = delta - g_lse
        live = torch.isfinite(lse)
        delta = torch.where(live, delta, torch.zeros_like(delta)).contiguous()
        lse_s = torch.where(live, lse, torch.full_like(lse, BIG)).contiguous()
        dq, dk, dv = (torch.empty_like(q) for _ in range(3))
        fns["dq"](q, g_out, lse_s, delta, k, v, okf, gk, gv, gok, dq, w, causal)
        fns["dkdv"](k, v, okf, q, g_out, lse_s, delta, dk, dv, w, causal)
        dgk = dgv = None
        if ctx.has_g:
            dgk, dgv, _ = _global_key_grads(q, gk, gv, ctx.g_ok, g_out, lse_s, delta)
        return dq, dk, dv, None, dgk, dgv, None, None, None, None


def _band_ok(
    key_ok: torch.Tensor, g_ok: torch.Tensor | None, gp: int, w: int, length: int
) -> torch.Tensor:
    """Usable band-side positions ``(B, length)`` as float: the ``gp`` global slots (``g_ok``,
    zero-padded), ``w`` zeros, ``key_ok``, zeros."""
    b, m = key_ok.shape
    ok = torch.zeros(b, length, dtype=torch.float32)
    if g_ok is not None:
        ok[:, : g_ok.shape[1]] = g_ok
    ok[:, gp + w : gp + w + m] = key_ok
    return ok


def _local_fn(fns, spec: _BandSpec, band=_Band):
    def local(q, k, v, key_ok, gk, gv, g_ok):
        out, _ = band.apply(q, k, v, key_ok, gk, gv, g_ok, fns, spec)
        return out

    return local


def tvm_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    global_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    *,
    kernels: dict[str, Any] | None = None,
) -> torch.Tensor:
    """``kernels``: use these GPU-style kernel functions (``gpu_kernels_on_cpu``) instead of the
    cached library for the tensors' device (tests of the CUDA path's arithmetic)."""
    if not supports(pattern):
        raise ValueError(
            f"backend 'tvm' does not support pattern {pattern}; it compiles SlidingWindow, "
            "BlockLocal and the local parts of Strided and Fixed (use backend='sdpa' or 'dense', "
            "or 'auto')"
        )
    if tvm_version() is None:
        raise ValueError("backend 'tvm' needs the apache-tvm package, which is not installed")
    if kernels is not None:
        fns, band = kernels, _GpuBand
    elif q.device.type == "cuda":
        why = cuda_runtime_error()
        if why is not None:
            raise ValueError(f"backend 'tvm' can't run on {q.device}: {why}")
        fns, band = _kernel(q.shape[-1], resolve_target("cuda")[0].replace("-", ":", 1)), _GpuBand
    elif q.device.type == "cpu":
        fns, band = _kernel(q.shape[-1]), _Band
    else:
        raise ValueError(f"backend 'tvm' runs on CPU and CUDA devices, not {q.device}")
    if band is _GpuBand and isinstance(pattern, (BlockLocal, Fixed)):
        raise ValueError(
            f"backend 'tvm': the GPU kernels compute sliding windows only, not {pattern} "
            "(use backend='torch')"
        )
    dtype = q.dtype
    q32, k32, v32 = (x.to(torch.float32) for x in (q, k, v))
    if isinstance(pattern, (Strided, Fixed)):
        # the band |i - j| <= stride (Strided) or the query's own block (Fixed) by the kernels,
        # the long-range part in torch (see kernels.torch_backend._strided / _fixed), merged by
        # log-sum-exp
        def band_part(q, k, v, key_ok, window, causal, block=0):
            spec = _BandSpec(window, causal, block)
            return band.apply(q, k, v, key_ok, None, None, None, fns, spec)

        out = torch_backend.torch_attention(
            q32, k32, v32, pattern, global_mask, key_padding_mask, band_part=band_part
        )
        return out.to(dtype)
    if isinstance(pattern, BlockLocal):
        spec = _BandSpec(block=pattern.block, neighbors=pattern.neighbors)
    else:
        spec = _BandSpec(pattern.window, pattern.causal)
    local = _local_fn(fns, spec, band)
    out = torch_backend.torch_attention(
        q32, k32, v32, pattern, global_mask, key_padding_mask, local=local
    )
    return out.to(dtype)
