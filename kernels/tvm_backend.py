"""The ``tvm`` backend: TVM-compiled sliding-window attention on CPU, plus its build cache.

What it supports:

* Pattern: ``SlidingWindow`` (any window, int or per-head dilation, causal or not). Dilation is
  folded into the batch dimension and global tokens are merged outside the kernel (see
  ``kernels.torch_backend``), so one compiled kernel serves every variant.
* dtypes: float32 kernels. bfloat16 inputs are computed by the float32 kernel (upcast on the
  way in, rounded on the way out), exactly like the ``torch`` backend computes them.
* Devices: CPU through LLVM. The installed TVM wheel has no CUDA runtime, so CUDA tensors are
  refused with a clear error.
* Forward: the compiled kernel (``kernels.tvm_source``) computes the band part and its
  log-sum-exp; global keys are merged exactly by log-sum-exp, global queries use the torch path.
* **Backward: not compiled.** ``attention(..., backend="tvm")`` is wrapped in a
  ``torch.autograd.Function`` whose backward *recomputes the forward through the ``torch``
  backend* and differentiates that. Gradients are exact, but a training step with ``tvm`` costs
  one more forward than with ``torch``; with the forward also slower than ``torch`` today,
  ``auto`` does not pick ``tvm`` (see ``AUTO_ELIGIBLE``).

Build cache layout: ``<cache_dir>/<target-key>/<variant>.so`` plus ``manifest.json`` (TVM
version, target, sha256 of the kernel source, compile seconds and file sha256 per variant). A
library is loaded only if all of these match; anything else is recompiled and rewritten
atomically (temp file in the same directory + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import torch_backend
from .config import cache_dir
from .patterns import Pattern, SlidingWindow

log = logging.getLogger(__name__)

KERNEL_DTYPES = ("float32",)
TARGETS = ("llvm",)
_SOURCE = Path(__file__).with_name("tvm_source.py")
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
    return hashlib.sha256(_SOURCE.read_bytes()).hexdigest()


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
    """``"llvm"`` -> (``"llvm-<cpu>"``, ``{"kind": "llvm", "mcpu": <cpu>}``) for this host."""
    if name not in TARGETS:
        raise ValueError(
            f"unsupported TVM target {name!r}: this build supports {TARGETS} (the installed TVM "
            "wheel has no CUDA runtime)"
        )
    cpu = _host_cpu()
    target: dict[str, Any] = {"kind": "llvm"}
    if cpu:
        target["mcpu"] = cpu
    return (f"llvm-{cpu}" if cpu else "llvm"), target


def variant_name(dtype: str, head_dim: int) -> str:
    return f"sliding_window_fwd_{dtype}_d{head_dim}"


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
    from . import tvm_source

    start = time.perf_counter()
    lib = tvm.compile(tvm_source.sliding_window_fwd(head_dim), target=target)
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


def _kernel(head_dim: int, target_name: str = "llvm"):
    """The loaded ``sliding_window_fwd`` function, from the in-process table, the on-disk cache
    (``tvm.runtime.load_module``) or a fresh compile, in that order."""
    root = str(Path(cache_dir()).resolve())
    memo = (root, target_name, "float32", head_dim)
    fn = _loaded.get(memo)
    if fn is not None:
        return fn
    res = ensure_variant(root, target_name, "float32", head_dim)
    tvm = _import_tvm()
    fn = tvm.runtime.load_module(res["path"])["sliding_window_fwd"]
    _loaded[memo] = fn
    return fn


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
    return isinstance(pattern, SlidingWindow)


#: ``auto`` may pick ``tvm`` only once it has a compiled backward *and* beats ``torch``. Today
#: neither holds: the backward is a torch recompute, and at the model's shape (batch 2, seq 4096,
#: 4 heads, head_dim 32, window 32, fp32, one core each, CPU time) the forward measured
#: 45 ms for ``tvm`` against 28 ms for ``torch`` (whose chunks run in PyTorch's fused
#: flash-attention CPU kernel).
AUTO_ELIGIBLE = False


def usable_cached(q: torch.Tensor, pattern: Pattern, needs_grad: bool) -> bool:
    """Whether ``auto`` should use this backend: only if ``AUTO_ELIGIBLE`` (see above), on CPU,
    float32/bfloat16, a supported pattern, and an already compiled kernel for the head_dim in
    the cache (``auto`` never triggers a compile)."""
    if not AUTO_ELIGIBLE or q.device.type != "cpu" or not supports(pattern):
        return False
    if q.dtype not in (torch.float32, torch.bfloat16) or tvm_version() is None:
        return False
    return cached_variant_exists(q.shape[-1])


def _local_fn(fn, window: int, causal: bool):
    from .tvm_source import KEY_TILE

    def local(q, k, v, key_ok, gk, gv, g_ok):
        b, m, h, d = q.shape
        right = window + KEY_TILE
        kt = F.pad(k, (0, 0, 0, 0, window, right)).permute(0, 2, 3, 1).contiguous()
        vp = F.pad(v, (0, 0, 0, 0, window, right)).permute(0, 2, 1, 3).contiguous()
        okp = F.pad(key_ok.to(torch.float32), (window, right))
        out = torch.empty(b, m, h, d, dtype=torch.float32)
        lse = torch.empty(b, m, h, dtype=torch.float32)
        fn(q.contiguous(), kt, vp, okp, out, lse, int(window), int(causal))
        if gk is None:
            return out
        return _merge_global(q, out, lse, gk, gv, g_ok)

    return local


def _merge_global(q, out, lse, gk, gv, g_ok):
    """Add the global keys to the band softmax exactly: combine by log-sum-exp."""
    d = q.shape[-1]
    scores = torch.einsum("bmhd,bghd->bmhg", q, gk) / d**0.5
    scores = scores.masked_fill(~g_ok.view(g_ok.shape[0], 1, 1, -1), -torch.inf)
    lse_g = torch.logsumexp(scores, dim=-1)  # -inf where no usable global key
    total = torch.logaddexp(lse, lse_g)
    safe = torch.where(torch.isfinite(total), total, torch.zeros_like(total))
    w_band = torch.where(torch.isfinite(lse), torch.exp(lse - safe), torch.zeros_like(lse))
    probs = torch.exp(scores - safe.unsqueeze(-1))  # exp(-inf) = 0 for unusable globals
    out_g = torch.einsum("bmhg,bghd->bmhd", probs, gv)
    return out * w_band.unsqueeze(-1) + out_g


class _TVMAttention(torch.autograd.Function):
    """Forward: compiled kernel. Backward: recompute through the torch backend (exact)."""

    @staticmethod
    def forward(ctx, q, k, v, pattern, global_mask, key_padding_mask, fn):
        ctx.save_for_backward(q, k, v)
        ctx.args = (pattern, global_mask, key_padding_mask)
        local = _local_fn(fn, pattern.window, pattern.causal)
        return torch_backend.torch_attention(
            q, k, v, pattern, global_mask, key_padding_mask, local=local
        )

    @staticmethod
    def backward(ctx, grad):
        q, k, v = ctx.saved_tensors
        pattern, global_mask, key_padding_mask = ctx.args
        with torch.enable_grad():
            qr, kr, vr = (x.detach().requires_grad_() for x in (q, k, v))
            out = torch_backend.torch_attention(qr, kr, vr, pattern, global_mask, key_padding_mask)
            gq, gk, gv = torch.autograd.grad(out, (qr, kr, vr), grad)
        return gq, gk, gv, None, None, None, None


def tvm_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    global_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    if not supports(pattern):
        raise ValueError(
            f"backend 'tvm' does not support pattern {pattern}; it compiles SlidingWindow only "
            "(use backend='torch' or 'dense', or 'auto')"
        )
    if q.device.type != "cpu":
        raise ValueError(
            f"backend 'tvm' runs on CPU only (the installed TVM has no CUDA runtime); "
            f"got a tensor on {q.device}"
        )
    if tvm_version() is None:
        raise ValueError("backend 'tvm' needs the apache-tvm package, which is not installed")
    fn = _kernel(q.shape[-1])
    dtype = q.dtype
    q32, k32, v32 = (x.to(torch.float32) for x in (q, k, v))
    out = _TVMAttention.apply(q32, k32, v32, pattern, global_mask, key_padding_mask, fn)
    return out.to(dtype)
