"""The TVM build cache: compile once, load afterwards, rebuild what is corrupt or stale."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from longdoc import kernels
from longdoc.kernels import SlidingWindow, attention
from tests.kernels.reference import reference_attention, rel_err

pytestmark = pytest.mark.skipif(
    "tvm" not in kernels.available_backends(), reason="apache-tvm not installed"
)

HEAD_DIM = 8


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One compile for the module; tests that damage the cache work on copies of it."""
    from longdoc.kernels import tvm_backend

    root = tmp_path_factory.mktemp("kcache")
    summary = kernels.build_kernels(root, head_dims=(HEAD_DIM,))
    (label, entry), *_ = summary["variants"].items()
    return tvm_backend, root, label, entry


def _copy_cache(src, dst):
    shutil.copytree(src, dst)
    return dst


def _no_compile(monkeypatch, tvm_backend):
    def fail(*args, **kwargs):
        raise AssertionError("recompiled although the cache was valid")

    monkeypatch.setattr(tvm_backend, "_compile", fail)


def test_first_build_compiles_and_writes_manifest(built):
    tvm_backend, root, label, entry = built
    assert entry["status"] == "compiled" and entry["seconds"] > 0
    key = label.split("/")[0]
    manifest = json.loads((root / key / "manifest.json").read_text())
    assert manifest["tvm_version"] == tvm_backend.tvm_version()
    assert manifest["source_hash"] == tvm_backend.source_hash()
    assert manifest["target"]["kind"] == "llvm"
    variant = manifest["variants"][tvm_backend.variant_name("float32", HEAD_DIM)]
    assert variant["sha256"] == tvm_backend._sha256(root / key / variant["file"])
    # a real compile takes measurable time, and the manifest records the time this build took
    assert variant["compile_seconds"] == entry["seconds"] > 0
    assert not [p for p in (root / key).iterdir() if p.name.startswith(".")]  # no temp files


def test_second_build_and_runtime_load_from_cache(built, monkeypatch):
    tvm_backend, root, label, first = built
    _no_compile(monkeypatch, tvm_backend)
    summary = kernels.build_kernels(root, head_dims=(HEAD_DIM,), dtypes=("float32", "bfloat16"))
    assert {v["status"] for v in summary["variants"].values()} == {"cached"}
    # loading reports the first build's compile time rather than timing a new compile
    assert summary["variants"][label]["seconds"] == first["seconds"] > 0
    monkeypatch.setattr(tvm_backend, "_loaded", {})
    from longdoc.kernels import settings

    previous = settings.cache_dir()
    kernels.configure(cache_dir=root)
    try:
        q, k, v = (torch.randn(2, 37, 3, HEAD_DIM) for _ in range(3))
        g = torch.zeros(2, 37, dtype=torch.bool)
        g[:, 5] = True
        pattern = SlidingWindow(4, dilation=(1, 2, 1))
        out = attention(q, k, v, pattern, global_mask=g, backend="tvm")
        assert rel_err(out, reference_attention(q, k, v, pattern, g)) <= 1e-4
    finally:
        kernels.configure(cache_dir=previous)


@pytest.mark.parametrize("damage", ["corrupt-so", "corrupt-manifest", "stale-source"])
def test_damaged_entry_is_rebuilt(built, tmp_path, damage, caplog):
    tvm_backend, root, label, _ = built
    cache = _copy_cache(root, tmp_path / "cache")
    key = label.split("/")[0]
    so = cache / key / f"{tvm_backend.variant_name('float32', HEAD_DIM)}.so"
    manifest_path = cache / key / "manifest.json"
    if damage == "corrupt-so":
        so.write_bytes(b"\x7fELF not really a library")
    elif damage == "corrupt-manifest":
        manifest_path.write_text("{ truncated")
    else:
        manifest = json.loads(manifest_path.read_text())
        manifest["source_hash"] = "0" * 64
        manifest_path.write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger="longdoc.kernels.tvm_backend"):
        summary = kernels.build_kernels(cache, head_dims=(HEAD_DIM,))
    assert [v["status"] for v in summary["variants"].values()] == ["compiled"]
    assert any("compiling TVM kernel" in r.getMessage() for r in caplog.records)
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["variants"][so.stem]
    assert entry["sha256"] == tvm_backend._sha256(so)
    assert manifest["source_hash"] == tvm_backend.source_hash()
    # and the rebuilt library is usable
    fn = __import__("tvm").runtime.load_module(str(so))["sliding_window_fwd"]
    assert fn is not None


def test_unsupported_build_requests_are_clear(tmp_path):
    with pytest.raises(ValueError, match="target"):
        kernels.build_kernels(tmp_path, targets=("cuda",))
    with pytest.raises(ValueError, match="dtype"):
        kernels.build_kernels(tmp_path, dtypes=("float16",))


def test_tvm_num_threads_defaults_to_usable_cores(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    code = (
        "import os, sys; from longdoc import kernels;"
        "assert 'tvm' not in sys.modules;"
        f"kernels.build_kernels({str(tmp_path)!r}, head_dims=(4,));"
        "assert 'tvm' in sys.modules;"
        "assert os.environ['TVM_NUM_THREADS'] == str(len(os.sched_getaffinity(0)))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=180, env=env)
