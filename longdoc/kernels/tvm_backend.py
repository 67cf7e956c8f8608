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
  way in, rounded on the way out), exactly like the ``torch`` backend computes them, except
  inference on a CPU with AMX-BF16 or AVX512-BF16: there the same library holds a bf16 kernel
  on AMX tiles or ``vdpbf16ps`` vectors (``kernels.tvm_bf16_source``, host side
  ``kernels.tvm_bf16``).
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
* Undilated patterns (``SlidingWindow`` with dilation 1, ``BlockLocal``) on CPU skip the torch
  glue: ``_Fused`` is one autograd node for the band, the global keys and the global rows,
  whose backward writes every contribution into the one ``dq, dk, dv`` the band's backward
  allocates (no gather-backward zero tensors, no full-size gradients for autograd to sum).

Build cache layout: ``<cache_dir>/<target-key>/<variant>.so`` plus ``manifest.json`` (TVM
version, target, sha256 of the kernel sources, compile seconds and file sha256 per variant). A
library is loaded only if all of these match; anything else is recompiled and rewritten
atomically (temp file in the same directory + ``os.replace``).
"""

from __future__ import annotations

import ctypes
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

from . import torch_backend, tvm_bf16
from .patterns import BlockLocal, Fixed, Pattern, SlidingWindow, Strided
from .settings import cache_dir

log = logging.getLogger(__name__)

KERNEL_DTYPES = ("float32",)
TARGETS = ("llvm", "cuda")
_SOURCES = (
    Path(__file__).with_name("tvm_source.py"),
    Path(__file__).with_name("tvm_gpu_source.py"),
    Path(__file__).with_name("tvm_bf16_source.py"),
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


@functools.lru_cache(maxsize=1)
def tvm_version() -> str | None:
    """Installed TVM version without importing it (None if not installed). Looked up once per
    process: reading the package metadata costs about as much as a short attention call."""
    for dist in ("apache-tvm", "tvm"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def source_hash() -> str:
    """sha256 of the kernel sources, recomputed only when a source file's mtime or size
    changed (``auto`` checks it on every attention call)."""
    stamps = []
    for path in _SOURCES:
        st = path.stat()
        stamps.append((st.st_mtime_ns, st.st_size))
    return _hash_sources(tuple(stamps))


@functools.lru_cache(maxsize=4)
def _hash_sources(stamps: tuple) -> str:
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

    * ``"llvm"``: this host's CPU, ``("llvm-<cpu>", {"kind": "llvm", "mcpu": <cpu>})``, with
      ``"mattr"`` the AMX-BF16 and AVX512-BF16 features the CPU has (``tvm_bf16.target_features``).
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
    if tvm_bf16.target_features():
        host["mattr"] = tvm_bf16.target_features()
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
    """Why compiled CUDA kernels can't run here (None if they can). The ``apache-tvm`` wheel
    (0.27) ships its CUDA runtime as a sidecar library, ``libtvm_runtime_cuda.so``, which
    ``import tvm`` loads when it can and skips silently when it cannot: it needs the NVIDIA
    driver (``libcuda.so.1``) and the CUDA 13 runtime (``libcudart.so.13``). The message names
    what is missing; without the sidecar, TVM was built without CUDA."""
    tvm = _import_tvm()
    if not tvm.runtime.enabled("cuda"):
        sidecar = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
        if not sidecar.exists():
            return (
                f"the installed TVM ({tvm_version()}) was built without the CUDA runtime, so "
                "it can compile CUDA kernels (build_kernels(targets=('cuda:sm_XX',))) but not "
                "run them; use backend='torch' on GPUs, or a TVM built with USE_CUDA=ON"
            )
        try:
            ctypes.CDLL(str(sidecar))
            why = "it loads now: import longdoc before anything else imports tvm"
        except OSError as exc:
            why = str(exc)
        return (
            f"TVM's CUDA runtime ({sidecar.name}) did not load: {why} (it needs the NVIDIA "
            "driver, libcuda.so.1, and the CUDA 13 runtime, libcudart.so.13); use "
            "backend='torch' here"
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

        mod = tvm_source.sliding_window(head_dim, vector_lanes=_vector_lanes(target))
        engine = _bf16_engine(target)
        if engine and head_dim in tvm_bf16.HEAD_DIMS:
            from . import tvm_bf16_source

            mod.update(tvm_bf16_source.attention_fwd(head_dim, engine))  # bf16 inference
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


def _bf16_engine(target: dict) -> str | None:
    """The bf16 dot-product engine the target has: AMX tiles, else AVX512-BF16 vectors."""
    tvm = _import_tvm()
    from tvm.target import codegen

    has = functools.partial(codegen.target_has_features, target=tvm.target.Target(target))
    if has("amx-bf16") and has("amx-tile"):
        return "amx"
    return "avx512bf16" if has("avx512bf16") else None


def _vector_lanes(target: dict) -> int:
    """float32 lanes of the target's widest vectors: 16 with AVX-512, else 8 (AVX2; other
    targets get the same schedule)."""
    tvm = _import_tvm()  # first: it sets TVM's environment before TVM loads
    from tvm.target import codegen

    return 16 if codegen.target_has_features("avx512f", tvm.target.Target(target)) else 8


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

    ``bfloat16`` is accepted and maps to the float32 variant: the backend upcasts bf16 inputs,
    except for inference on CPUs with AMX-BF16 or AVX512-BF16, whose library also holds the
    bf16 kernel (``kernels.tvm_bf16_source``). Returns a summary for the pipeline's own
    manifest: ``{"tvm_version", "source_hash", "out_dir", "variants": {"<target-key>/<variant>":
    {"path", "status", "seconds", "dtype", "head_dim", "target"}}}``.
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
        _share_torch_threads(res["path"])
        fns = cpu_kernel_fns(lib)
        if lib.implements_function("bf16_fwd"):
            fns.update(
                bf16_engine=_bf16_engine(res["target"]),
                bf16_fwd=lib["bf16_fwd"],
                bf16_pack_k=lib["bf16_pack_k"],
                bf16_pack_v=lib["bf16_pack_v"],
            )
    _loaded[memo] = fns
    return fns


def cpu_kernel_fns(lib) -> dict[str, Any]:
    """The fp32 CPU kernels of a compiled library, by the names the band functions use."""
    return {
        "fwd": lib["sliding_window_fwd"],
        "dkdv": lib["sliding_window_bwd_dkdv"],
        "pack_t": lib["pack_t"],
        "pack_p": lib["pack_p"],
        "dq_add": lib["dq_overlap_add"],
    }


OMP_LAUNCH_SOURCE = Path(__file__).with_name("omp_launch.c")
_omp_launchers: dict[str, Any] = {}  # launcher key -> its ctypes library, or None if unbuildable
_tvm_pool_launch: dict[str, int] = {}  # kernel library path -> TVM's own launcher (address)


def _openmp_runtime() -> str | None:
    """Path of the OpenMP runtime loaded in this process (torch's libgomp; LLVM's libomp and
    Intel's libiomp5 export the same ``GOMP_*`` entry points), from ``/proc/self/maps``; None
    where there is none or no such file (not Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        name = os.path.basename(fields[5]) if len(fields) == 6 else ""
        if name.startswith(("libgomp", "libomp", "libiomp5")) and ".so" in name:
            return fields[5]
    return None


def _omp_launcher(directory: Path):
    """``omp_launch.c`` compiled against this process's OpenMP runtime (ctypes library), cached
    as ``omp_launch-<hash>.so`` in ``directory``; None, with a warning, where it cannot be built
    (no compiler, no OpenMP runtime). The library records the runtime by file name
    (``libgomp.so.1``), which the loader resolves to the copy torch already loaded, so the hash
    covers the source and that name, not the path: a kernel cache copied to another
    environment keeps its launcher."""
    runtime = _openmp_runtime()
    if runtime is None:
        return None
    name = os.path.basename(runtime).encode()
    key = hashlib.sha256(OMP_LAUNCH_SOURCE.read_bytes() + name).hexdigest()[:16]
    if key in _omp_launchers:
        return _omp_launchers[key]
    path = directory / f"omp_launch-{key}.so"
    launcher = None
    try:
        if not path.exists():
            _import_tvm()
            from tvm.support import cc

            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".omp_launch.", suffix=".so")
            os.close(fd)
            try:  # linked against the runtime torch loaded: the same library, the same threads
                cc.create_shared(tmp, [str(OMP_LAUNCH_SOURCE), runtime], options=["-O2"])
                os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
        launcher = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, ValueError) as exc:
        log.warning(
            "tvm kernels keep TVM's own thread pool: the OpenMP launcher did not build (%s)", exc
        )
    _omp_launchers[key] = launcher
    return launcher


def _launch_slot(kernel_path: str) -> ctypes.c_void_p:
    """The kernel library's ``__TVMBackendParallelLaunch``: the function its parallel loops
    start through, which TVM's runtime sets to its own thread pool when it loads the library
    (``dlopen`` of the same path returns TVM's handle)."""
    return ctypes.c_void_p.in_dll(ctypes.CDLL(kernel_path), "__TVMBackendParallelLaunch")


def _share_torch_threads(kernel_path: str) -> None:
    """Run the kernel library's parallel loops on torch's OpenMP threads (``omp_launch.c``):
    TVM's pool and torch's on the same cores each spun for milliseconds while the other worked,
    which cost the MLM training step 8-11% (benchmarks/RESULTS.md, "Kernels round three").
    ``LONGDOC_TVM_POOL=tvm`` keeps TVM's pool (its threads: ``TVM_NUM_THREADS``); otherwise the
    kernels use ``torch.get_num_threads()`` threads, as torch's own operations do."""
    if os.environ.get("LONGDOC_TVM_POOL", "openmp") == "tvm":
        return
    launcher = _omp_launcher(Path(kernel_path).parent)
    if launcher is None:
        return
    slot = _launch_slot(kernel_path)
    ours = ctypes.cast(launcher.longdoc_omp_parallel_launch, ctypes.c_void_p).value
    if slot.value != ours:
        _tvm_pool_launch[kernel_path] = slot.value
        slot.value = ours


@functools.lru_cache(maxsize=8)
def gpu_kernels_on_cpu(head_dim: int) -> dict[str, Any]:
    """The GPU kernels' loops compiled for this CPU (``tvm_gpu_source`` with ``gpu=False``), not
    cached: lets tests check the CUDA path's arithmetic on a machine without a GPU."""
    tvm = _import_tvm()
    from . import tvm_gpu_source

    _, target = resolve_target("llvm")
    lib = tvm.compile(tvm_gpu_source.sliding_window_gpu(head_dim, gpu=False), target=target)
    return {"fwd": lib["gpu_fwd"], "dq": lib["gpu_bwd_dq"], "dkdv": lib["gpu_bwd_dkdv"]}


_manifest_memo: dict[Path, tuple[tuple[int, int], dict[str, Any] | None]] = {}


def _read_manifest_memo(directory: Path) -> dict[str, Any] | None:
    """``_read_manifest``, parsed again only when the file's mtime or size changed (``auto``
    asks ``cached_variant_exists`` on every attention call)."""
    path = directory / "manifest.json"
    try:
        st = path.stat()
    except OSError:
        return None
    stamp = (st.st_mtime_ns, st.st_size)
    hit = _manifest_memo.get(path)
    if hit is None or hit[0] != stamp:
        hit = _manifest_memo[path] = (stamp, _read_manifest(directory))
    return hit[1]


def cached_variant_exists(head_dim: int, target_name: str = "llvm") -> bool:
    """Cheap check (no TVM import) that the cache has a manifest entry for this head_dim whose
    TVM version and source hash match; the full check (target, file sha256) happens on load."""
    root = Path(cache_dir())
    name = variant_name("float32", head_dim)
    if not root.is_dir():
        return False
    for directory in root.glob(f"{target_name}*"):
        manifest = _read_manifest_memo(directory)
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


#: Where ``auto`` may pick ``tvm`` (CPU only), set from the benchmarks (figures in
#: benchmarks/RESULTS.md, "Attention kernels", "OpenMP wait policy" and "Training on the compiled
#: path"):
#:
#: * ``inference`` (no gradient needed): ``tvm``'s forward is several times faster than
#:   ``torch``'s with a fraction of its extra memory, so yes.
#: * ``training``: for undilated sliding windows (``_trains_on_tvm``), whose band, global keys
#:   and global rows run as one autograd node (``_Fused``), forward+backward beat ``torch``'s
#:   in every in-process A/B (``benchmarks/tvm_vs_torch.py``), so yes; the whole MLM step was
#:   not settled on the loaded machine (RESULTS.md): if an idle rerun of ``--part step`` shows
#:   ``tvm`` behind, this goes back to False. Dilated windows, ``BlockLocal`` and the Sparse
#:   Transformer patterns train on ``torch`` (their ``tvm`` backward was not shown to win).
AUTO_ELIGIBLE = {"inference": True, "training": True}


def _fused_applies(pattern: Pattern, heads: int) -> bool:
    """Whether ``tvm_attention`` runs ``pattern`` as one ``_Fused`` node on CPU."""
    if isinstance(pattern, BlockLocal):
        return True
    return isinstance(pattern, SlidingWindow) and set(pattern.dilations(heads)) == {1}


def _trains_on_tvm(pattern: Pattern, heads: int) -> bool:
    """The patterns ``auto`` trains on ``tvm`` (see ``AUTO_ELIGIBLE``)."""
    return isinstance(pattern, SlidingWindow) and _fused_applies(pattern, heads)


def usable_cached(q: torch.Tensor, pattern: Pattern, needs_grad: bool) -> bool:
    """Whether ``auto`` should use this backend: only where ``AUTO_ELIGIBLE`` (see above) says
    so for this kind of call (and pattern, for training), on CPU, float32/bfloat16, a supported
    pattern, and an already compiled kernel for the head_dim in the cache (``auto`` never
    triggers a compile)."""
    if not AUTO_ELIGIBLE["training" if needs_grad else "inference"]:
        return False
    if q.device.type != "cpu" or not supports(pattern):
        return False
    if needs_grad and not _trains_on_tvm(pattern, q.shape[2]):
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
    last row tile's keys (``FWD_ROWS`` rows at most, whole blocks of ``FWD_KEYS`` keys) stay
    inside."""
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


def _pack(fns, x: torch.Tensor, hs: slice, out: torch.Tensor, w: int, transposed: bool) -> None:
    """Heads ``hs`` of ``x (B, m, H, D)`` into the padded buffer ``out``, ``(B, h, length /
    KEY_TILE, D, KEY_TILE)`` (tiles of positions, each transposed) if ``transposed`` else ``(B,
    h, length, D)``, by the compiled (parallel) pack kernels: one pass, zeros written only where
    they belong. Layout: ``w`` zeros, ``x``, zeros."""
    length = out.shape[2] * out.shape[4] if transposed else out.shape[2]
    fns["pack_t" if transposed else "pack_p"](x, out, hs.start, w, 0, length)


_workspace = threading.local()


def _workspace_store(slot: int, count: int) -> torch.Tensor:
    """Float32 scratch of at least ``count`` elements, kept by this thread from one backward to
    the next (``slot`` names the buffer): a fresh tensor of many MiB costs its page faults on
    every call (benchmarks/RESULTS.md, "Kernels round three"). Grows, never shrinks;
    ``CHUNK_BYTES`` bounds it (tens of MiB per thread that ran a backward), except where one
    head alone is larger."""
    stores = getattr(_workspace, "stores", None)
    if stores is None:
        stores = _workspace.stores = {}
    store = stores.get(slot)
    if store is None or store.numel() < count:
        store = stores[slot] = torch.empty(count, dtype=torch.float32)
    return store


def _scratch(store: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A ``shape`` view of the front of ``store`` (float32, contiguous): the head groups of one
    backward, and the backward calls of one thread, reuse one allocation per buffer."""
    count = 1
    for s in shape:
        count *= s
    return store[:count].view(shape)


def _band_forward(q, k, v, key_ok, gk, gv, g_ok, fns, spec: _BandSpec, gq=None, rok=None):
    """The forward kernel on contiguous float32 ``(B, m, H, D)`` tensors: ``(out, lse)``.

    With ``gq (B, G, H, D)`` global queries and ``rok (B, m)`` the keys they may use, the kernel
    also computes their rows over every usable key while it has them in cache: ``(out, lse,
    rows (B, G, H, D))``, rows 0 where no key is usable."""
    from .tvm_source import FWD_KEYS, FWD_ROWS, NEG, ROW_GROUP

    b, m, h, d = q.shape
    w = spec.reach
    # the kernel reads q, k, v and the global keys in place (no packed copies); it numbers
    # the keys gp global slots first, then the band positions (see kernels.tvm_source)
    if gk is None:
        gp, gk_, gv_ = 0, q.new_zeros(b, 1, h, d), q.new_zeros(b, 1, h, d)
    else:
        gp, gk_, gv_ = -(-gk.shape[1] // FWD_KEYS) * FWD_KEYS, gk, gv
    okp = _band_ok(key_ok, g_ok, gp, w, gp + _fwd_band_len(m, spec))
    out = torch.empty(b, m, h, d, dtype=torch.float32)
    lse = torch.empty(b, m, h, dtype=torch.float32)
    causal, blk, nbr = int(spec.causal), spec.block, spec.neighbors
    if gq is None:
        gq_, rok_ = q.new_zeros(b, 1, h, d), q.new_zeros(b, 1)
        gpart, gstat = q.new_empty(b, h, 1, 1, d), q.new_empty(b, h, 1, 1, 2)
    else:
        # one partial per parallel task of the kernel: at most this many (its row tiles are
        # FWD_ROWS / 2 rows or more); the tasks that do not exist leave theirs neutral
        tasks = -(-m // (ROW_GROUP * FWD_ROWS // 2))
        gq_, rok_ = gq, rok.to(torch.float32).contiguous()
        gpart = q.new_zeros(b, h, tasks, gq.shape[1], d)
        gstat = torch.stack(
            (q.new_full((b, h, tasks, gq.shape[1]), NEG), q.new_zeros(b, h, tasks, gq.shape[1])),
            dim=-1,
        )
    ngq = 0 if gq is None else gq.shape[1]
    fns["fwd"](
        q, k, v, gk_, gv_, okp, out, lse, gq_, rok_, gpart, gstat, w, causal, gp, blk, nbr, ngq
    )
    if gq is None:
        return out, lse
    return out, lse, _combine_partials(gpart, gstat)


def _combine_partials(gpart, gstat) -> torch.Tensor:
    """The global rows ``(B, G, H, D)`` from the forward kernel's partial softmaxes, one per
    parallel task (``gpart (B, H, tasks, G, D)``, ``gstat (.., 2)`` max and sum): each rescaled
    to the overall max; 0 where no key was usable."""
    from .tvm_source import NEG

    peak = gstat[..., 0].amax(dim=2, keepdim=True)  # (B, H, 1, G)
    scale = torch.where(gstat[..., 0] > NEG, torch.exp(gstat[..., 0] - peak), 0.0)
    total = (scale * gstat[..., 1]).sum(dim=2)  # (B, H, G)
    rows = (scale.unsqueeze(-1) * gpart).sum(dim=2)  # (B, H, G, D)
    rows = rows / torch.where(total > 0, total, 1.0).unsqueeze(-1)
    return rows.transpose(1, 2)


def _private_rows(w: int) -> int:
    """Private dq rows of one backward segment: its ``SEG_KEYS`` keys' queries reach ``w``
    before and after it, and its query tiles start up to ``KEY_TILE - 1`` positions early
    (aligned to ``pack_t``'s blocks), plus a tile of slack at the end."""
    from .tvm_source import KEY_TILE, SEG_KEYS

    return SEG_KEYS + 2 * w + 2 * KEY_TILE


def _band_backward(q, k, v, key_ok, g_out, lse_s, delta, fns, spec: _BandSpec):
    """The band's ``dq, dk, dv`` (fresh ``(B, m, H, D)`` tensors) from the compiled backward:
    ``lse_s`` is the log-sum-exp with ``BIG`` on rows that take no part (no usable key, or
    computed elsewhere), ``delta`` ``rowsum(dO * O)`` (minus the lse's gradient), 0 there."""
    from .tvm_source import BIG, KEY_ROWS, KEY_TILE, SEG_KEYS

    w, causal, blk, nbr = spec.reach, int(spec.causal), spec.block, spec.neighbors
    b, m, h, d = q.shape
    okf = key_ok.to(torch.float32).contiguous()
    len_k = _band_len(m, KEY_ROWS, spec)
    right = len_k - w - m
    dq, dk, dv = (torch.empty(b, m, h, d, dtype=torch.float32) for _ in range(3))
    segs = -(-m // SEG_KEYS)
    groups = _head_groups(q)
    widest = groups[0].stop - groups[0].start
    # the query-side packed copies and the private dq rows, sized for the widest group
    per_pack, per_dqp = (
        b * widest * d * len_k,
        b * widest * segs * _private_rows(w) * d,
    )
    stores = [_workspace_store(slot, per_pack) for slot in range(4)]
    dqp_store = _workspace_store(4, per_dqp)
    lsep_all = _pad_seq(lse_s, w, right, BIG).permute(0, 2, 1).contiguous()  # (B, H, len_k)
    deltap_all = _pad_seq(delta, w, right).permute(0, 2, 1).contiguous()
    for hs in groups:
        # one pass over the band from the keys' side: dk, dv per key, and each key tile's
        # ds^T k into private dq rows per segment of SEG_KEYS keys (no write races), which
        # dq_overlap_add then sums. The band's p and ds are computed once, not twice.
        hg = hs.stop - hs.start
        tshape, pshape = (b, hg, len_k // KEY_TILE, d, KEY_TILE), (b, hg, len_k, d)
        qt, dot, qp, dop = (
            _scratch(s, shape)
            for s, shape in zip(stores, (tshape, tshape, pshape, pshape), strict=True)
        )
        _pack(fns, q, hs, qt, w, transposed=True)
        _pack(fns, g_out, hs, dot, w, transposed=True)
        _pack(fns, q, hs, qp, w, transposed=False)
        _pack(fns, g_out, hs, dop, w, transposed=False)
        dqp = _scratch(dqp_store, (b, hg, segs, _private_rows(w), d))
        lsep, deltap = lsep_all[:, hs].contiguous(), deltap_all[:, hs].contiguous()
        fns["dkdv"](
            k, v, okf, qt, dot, qp, dop, lsep, deltap, dk, dv, dqp, w, causal, hs.start, blk, nbr
        )
        fns["dq_add"](dqp, dq, w, hs.start)
    return dq, dk, dv


def _softmax_stats(g_out, out, lse, g_lse=None):
    """``delta = rowsum(dO * O) - dlse`` and the log-sum-exp with ``BIG`` on rows with no key
    (their ``p`` is then 0 in every recompute), both ``(B, m, H)`` contiguous."""
    from .tvm_source import BIG

    # einsum runs this as one batched dot per row: no full-size product tensor (a fresh one
    # costs its page faults)
    delta = torch.einsum("bmhd,bmhd->bmh", g_out, out)
    if g_lse is not None:
        delta = delta - g_lse
    live = torch.isfinite(lse)
    delta = torch.where(live, delta, torch.zeros_like(delta)).contiguous()
    lse_s = torch.where(live, lse, torch.full_like(lse, BIG)).contiguous()
    return delta, lse_s


class _Band(torch.autograd.Function):
    """Banded attention plus the global keys on folded ``(B, m, H, D)`` float32 tensors, by the
    compiled kernels (the path for dilated windows and the Sparse Transformer patterns' band;
    undilated patterns take ``_Fused``).

    The global keys ``gk, gv (B, G, H, D)`` (usable where ``g_ok (B, G)``) come before the band
    in the forward kernel, so it takes one softmax over band + global keys. Returns ``(out, lse)``;
    the backward handles gradients of both, so autograd through the torch code around it
    (dilation folding, global rows) is exact. The global keys' own gradients (a sum over every
    query: ``O(G * m)``) are computed here in torch."""

    @staticmethod
    def forward(ctx, q, k, v, key_ok, gk, gv, g_ok, fns, spec: _BandSpec):
        q, k, v = (x.contiguous() for x in (q, k, v))
        if gk is not None:
            gk, gv = gk.contiguous(), gv.contiguous()
        out, lse = _band_forward(q, k, v, key_ok, gk, gv, g_ok, fns, spec)
        ctx.save_for_backward(q, k, v, key_ok, out, lse, gk, gv, g_ok)
        ctx.fns, ctx.spec = fns, spec
        return out, lse

    @staticmethod
    def backward(ctx, g_out, g_lse):
        q, k, v, key_ok, out, lse, gk, gv, g_ok = ctx.saved_tensors
        if g_out is None:
            g_out = torch.zeros_like(out)
        g_out = g_out.to(torch.float32).contiguous()
        delta, lse_s = _softmax_stats(g_out, out, lse, g_lse)
        dq, dk, dv = _band_backward(q, k, v, key_ok, g_out, lse_s, delta, ctx.fns, ctx.spec)
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


# ---- undilated patterns: band, global keys and global rows in one autograd node ------------
#
# Per batch entry the global parts are batched matmuls over the heads on strided views of the
# (m, H, D) tensors (``_heads_first``: no copies), and every gradient is written into the one
# dq, dk, dv the band's backward allocated (rank-G updates in place, the global rows' and keys'
# own gradients by ``_add_rows``): autograd sees one node, so it neither allocates a zero
# tensor for a gather's backward nor sums several full-size gradients per input.


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    """``(m, H, D)`` -> ``(H, m, D)`` view (a strided batch of matrices for ``bmm``)."""
    return x.transpose(0, 1)


def _rank_update(dst: torch.Tensor, a: torch.Tensor, y: torch.Tensor) -> None:
    """``dst (m, H, D) += a (H, m, G) @ y (H, G, D)``, in place on the strided ``dst``: one
    ``addcmul_`` pass per global key while they are few, else one bmm and one add."""
    if a.shape[-1] <= 2:
        for g in range(a.shape[-1]):
            dst.addcmul_(a[:, :, g].transpose(0, 1).unsqueeze(-1), y[:, g].unsqueeze(0))
    else:
        dst.add_(torch.bmm(a, y).transpose(0, 1))


def _add_rows(dst: torch.Tensor, rows: torch.Tensor, src: torch.Tensor) -> None:
    """``dst[rows] += src`` for distinct ``rows`` (the global tokens' positions), in place.

    ``index_put_(accumulate=True)`` adds the few rows serially; ``index_add_`` here goes
    through a parallel ``scatter_add_``, whose thread start-up alone costs milliseconds on a
    loaded 2-core machine (profiled on one: a quarter of a ``tvm`` forward+backward)."""
    dst.index_put_((rows,), src, accumulate=True)


class _GlobalIndex(NamedTuple):
    """The global tokens of a batch: ``order (B, G)`` their positions (padded slots repeat one),
    ``valid (B, G)`` which slots are real, ``g_ok (B, G)`` which are usable keys (not padding)."""

    order: torch.Tensor
    valid: torch.Tensor
    g_ok: torch.Tensor


def _global_rows_forward(q, k, v, pad, gi: _GlobalIndex):
    """Global queries against every non-padding key, per batch entry: ``probs (B, H, G, m)``
    (saved for the backward: ``G * m`` per head) and the rows ``og (B, G, H, D)`` (0 where
    every key is padding)."""
    b, m, h, d = q.shape
    probs, og = [], []
    for e in range(b):
        qg = _heads_first(q[e, gi.order[e]])  # (H, G, D)
        s = torch.bmm(qg, k[e].permute(1, 2, 0)) * d**-0.5  # (H, G, m)
        allowed = ~pad[e]
        p = s.masked_fill(~allowed, torch.finfo(s.dtype).min).softmax(dim=-1)
        p = p * allowed.any().to(p.dtype)  # every key padding: the rows are 0
        probs.append(p)
        og.append(torch.bmm(p, _heads_first(v[e])).transpose(0, 1))
    return torch.stack(probs), torch.stack(og)


def _global_rows_backward(q, k, v, gi: _GlobalIndex, probs, og, g_out, dq, dk, dv) -> None:
    """Add the global rows' gradients into ``dq`` (their own rows), ``dk`` and ``dv`` (every
    key): ``O(G * m)`` per head."""
    scale = q.shape[-1] ** -0.5
    for e in range(q.shape[0]):
        rows = gi.order[e][gi.valid[e]]
        g_og = _heads_first(g_out[e, gi.order[e]] * gi.valid[e].view(-1, 1, 1))  # (H, G, D)
        p = probs[e]
        delta_g = (g_og * _heads_first(og[e])).sum(-1, keepdim=True)  # (H, G, 1)
        ds = p * (torch.bmm(g_og, v[e].permute(1, 2, 0)) - delta_g)  # (H, G, m)
        _rank_update(dv[e], p.transpose(1, 2), g_og)
        _rank_update(dk[e], ds.transpose(1, 2) * scale, _heads_first(q[e, gi.order[e]]))
        dqg = torch.bmm(ds, _heads_first(k[e])) * scale  # (H, G, D)
        _add_rows(dq[e], rows, dqg.transpose(0, 1)[gi.valid[e]])


def _global_keys_backward(q, gk, gv, gi: _GlobalIndex, g_out, lse_s, delta, dq, dk, dv) -> None:
    """Add the band rows' gradients through the global keys: into ``dq`` (every row: a rank-G
    update), and the global keys' own into ``dk``, ``dv`` at their positions (rows with
    ``lse_s = BIG`` get ``p = 0``: they take no part)."""
    scale = q.shape[-1] ** -0.5
    for e in range(q.shape[0]):
        qe, ge = _heads_first(q[e]), _heads_first(g_out[e])  # (H, m, D)
        s = torch.bmm(qe, gk[e].permute(1, 2, 0)) * scale  # (H, m, G)
        # a padded global key was not in the softmax: its score may exceed the lse (exp = inf),
        # so mask, don't multiply
        p = torch.exp(s - lse_s[e].t().unsqueeze(-1)).masked_fill(~gi.g_ok[e], 0.0)
        ds = p * (torch.bmm(ge, gv[e].permute(1, 2, 0)) - delta[e].t().unsqueeze(-1))
        rows, keep = gi.order[e][gi.valid[e]], gi.valid[e]
        dgv = torch.bmm(p.transpose(1, 2), ge).transpose(0, 1)  # (G, H, D)
        dgk = torch.bmm(ds.transpose(1, 2), qe).transpose(0, 1) * scale
        _add_rows(dv[e], rows, dgv[keep])
        _add_rows(dk[e], rows, dgk[keep])
        _rank_update(dq[e], ds * scale, _heads_first(gk[e]))


def _at_globals(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``x (B, m, ...)`` at each example's global positions ``order (B, G)``: ``(B, G, ...)``."""
    return x[torch.arange(x.shape[0]).unsqueeze(1), order]


def _split_globals(k, v, pad, global_mask):
    """``(gi, key_ok, gk, gv)``: the global tokens' index (None without any), the keys the band
    may use (a global key enters the softmax once, as a global key) and the global keys and
    values ``(B, G, H, D)`` (None without any)."""
    gidx = torch_backend._global_index(global_mask)
    if gidx is None:
        return None, ~pad, None, None
    order, valid = gidx
    gi = _GlobalIndex(order, valid, valid & ~pad.gather(1, order))
    gk, gv = _at_globals(k, order), _at_globals(v, order)
    return gi, ~pad & ~global_mask, gk, gv


def _bf16_attention(q, k, v, pad, global_mask, fns, spec: _BandSpec, global_rows: bool):
    """Inference on bf16 ``(B, m, H, D)`` tensors with the bf16 kernel (``tvm_bf16``): the band
    and the global keys in bf16 with fp32 accumulation, the global rows in the same call, in
    fp32 from the bf16 numbers; bf16 out."""
    q, k, v = (x.contiguous() for x in (q, k, v))
    gi, key_ok, gk, gv = _split_globals(k, v, pad, global_mask)
    if gi is None:
        return tvm_bf16.band_forward(fns, q, k, v, key_ok, None, None, None, spec)
    gq = _at_globals(q, gi.order) if global_rows else None
    res = tvm_bf16.band_forward(fns, q, k, v, key_ok, gk, gv, gi.g_ok, spec, gq, ~pad)
    bi, pi = global_mask.nonzero(as_tuple=True)
    if not global_rows:
        res[bi, pi] = 0.0
        return res
    out, gpart, gstat = res
    out[bi, pi] = _combine_partials(gpart, gstat)[gi.valid].to(out.dtype)
    return out


class _Fused(torch.autograd.Function):
    """The whole attention of an undilated pattern (``SlidingWindow`` with dilation 1,
    ``BlockLocal``) on contiguous float32 ``(B, m, H, D)`` tensors, in one autograd node: the
    band with the global keys by the compiled kernels, the global rows in torch (without
    gradients, in the forward kernel: no probabilities to keep); the backward writes every
    contribution into one ``dq, dk, dv`` (see the comment above ``_heads_first``).
    ``global_rows=False``: the global queries' rows are zero and take no part in the backward
    (the caller computes them itself: see ``kernels.attention``).
    """

    @staticmethod
    @torch.autocast("cpu", enabled=False)  # float32 throughout, as the kernels (and backward)
    def forward(ctx, q, k, v, pad, global_mask, fns, spec: _BandSpec, global_rows: bool = True):
        q, k, v = (x.contiguous() for x in (q, k, v))
        gi, key_ok, gk, gv = _split_globals(k, v, pad, global_mask)
        g_ok = None if gi is None else gi.g_ok
        probs = og = None
        if gi is not None and global_rows and not any(ctx.needs_input_grad[:3]):
            # inference: the kernel computes the global rows too, with no probabilities to keep
            gq = _at_globals(q, gi.order)
            out, lse, rows = _band_forward(q, k, v, key_ok, gk, gv, g_ok, fns, spec, gq, ~pad)
            bi, pi = global_mask.nonzero(as_tuple=True)
            out[bi, pi] = rows[gi.valid]
            return out
        out, lse = _band_forward(q, k, v, key_ok, gk, gv, g_ok, fns, spec)
        if gi is not None:
            bi, pi = global_mask.nonzero(as_tuple=True)
            if global_rows:
                probs, og = _global_rows_forward(q, k, v, pad, gi)
                out[bi, pi] = og[gi.valid]  # nonzero() lists them in the valid slots' order
            else:
                out[bi, pi] = 0.0
        ctx.save_for_backward(q, k, v, key_ok, out, lse, gk, gv, probs, og)
        ctx.gi, ctx.fns, ctx.spec = gi, fns, spec
        return out

    @staticmethod
    def backward(ctx, g_out):
        from .tvm_source import BIG

        q, k, v, key_ok, out, lse, gk, gv, probs, og = ctx.saved_tensors
        gi = ctx.gi
        g_out = g_out.to(torch.float32).contiguous()
        delta, lse_s = _softmax_stats(g_out, out, lse)
        if gi is not None:  # the global rows are computed apart: no band or global-key part
            for e in range(q.shape[0]):
                rows = gi.order[e][gi.valid[e]]
                lse_s[e, rows] = BIG
                delta[e, rows] = 0.0
        dq, dk, dv = _band_backward(q, k, v, key_ok, g_out, lse_s, delta, ctx.fns, ctx.spec)
        if gi is not None:
            _global_keys_backward(q, gk, gv, gi, g_out, lse_s, delta, dq, dk, dv)
            if probs is not None:
                _global_rows_backward(q, k, v, gi, probs, og, g_out, dq, dk, dv)
        return dq, dk, dv, None, None, None, None, None


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
        q, k, v, okf, out, lse, gk, gv, gok = ctx.saved_tensors
        fns, w, causal = ctx.fns, ctx.w, ctx.causal
        if g_out is None:
            g_out = torch.zeros_like(out)
        g_out = g_out.to(torch.float32).contiguous()
        delta, lse_s = _softmax_stats(g_out, out, lse, g_lse)
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


def _band_spec(pattern: SlidingWindow | BlockLocal) -> _BandSpec:
    if isinstance(pattern, BlockLocal):
        return _BandSpec(block=pattern.block, neighbors=pattern.neighbors)
    return _BandSpec(pattern.window, pattern.causal)


def tvm_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    global_mask: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    *,
    global_rows: bool = True,
    kernels: dict[str, Any] | None = None,
) -> torch.Tensor:
    """``global_rows``: as in ``kernels.attention``. ``kernels``: use these GPU-style kernel
    functions (``gpu_kernels_on_cpu``) instead of the cached library for the tensors' device
    (tests of the CUDA path's arithmetic)."""
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
    if band is _Band and _fused_applies(pattern, q.shape[2]):
        needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
        if not needs_grad and tvm_bf16.applies(q, fns):  # bf16 inference, before any upcast
            pad = key_padding_mask
            if pad is None:
                pad = torch.zeros(q.shape[:2], dtype=torch.bool, device=q.device)
            spec = _band_spec(pattern)
            return _bf16_attention(q, k, v, pad, global_mask, fns, spec, global_rows)
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
            q32,
            k32,
            v32,
            pattern,
            global_mask,
            key_padding_mask,
            band_part=band_part,
            global_rows=global_rows,
        )
        return out.to(dtype)
    spec = _band_spec(pattern)
    if band is _Band and _fused_applies(pattern, q.shape[2]):
        pad = key_padding_mask
        if pad is None:
            pad = torch.zeros(q.shape[:2], dtype=torch.bool, device=q.device)
        return _Fused.apply(q32, k32, v32, pad, global_mask, fns, spec, global_rows).to(dtype)
    local = _local_fn(fns, spec, band)
    out = torch_backend.torch_attention(
        q32, k32, v32, pattern, global_mask, key_padding_mask, local=local, global_rows=global_rows
    )
    return out.to(dtype)
