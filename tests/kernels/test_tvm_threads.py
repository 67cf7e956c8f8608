"""The compiled kernels start their parallel loops on torch's OpenMP threads
(`kernels/omp_launch.c`), with the same results as on TVM's own thread pool."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import pytest
import torch

from longdoc import kernels
from longdoc.kernels import settings

pytestmark = pytest.mark.skipif(
    "tvm" not in kernels.available_backends(), reason="needs the apache-tvm package"
)
HEAD_DIM = 16


@pytest.fixture
def kernel_dir(tmp_path):
    """A private kernel cache with the ``HEAD_DIM`` variant built, so each test loads (and
    swaps the launcher of) its own copy of the library."""
    previous = settings.cache_dir()
    kernels.configure(cache_dir=tmp_path)
    kernels.build_kernels(tmp_path, head_dims=(HEAD_DIM,))
    yield tmp_path
    kernels.configure(cache_dir=previous)


def _library(directory: Path) -> str:
    (path,) = directory.glob(f"*/sliding_window_float32_d{HEAD_DIM}.so")
    return str(path)


def _attention_grads(threads: int, backend: str = "tvm") -> list[torch.Tensor]:
    """Forward and backward with a global token and padding."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, 300, 3, HEAD_DIM, generator=gen) for _ in range(3))
        for x in (q, k, v):
            x.requires_grad_(True)
        glob = torch.zeros(2, 300, dtype=torch.bool)
        glob[:, 0] = True
        pad = torch.zeros(2, 300, dtype=torch.bool)
        pad[1, 250:] = True
        out = kernels.attention(
            q,
            k,
            v,
            kernels.SlidingWindow(17),
            global_mask=glob,
            key_padding_mask=pad,
            backend=backend,
        )
        out.backward(torch.randn(out.shape, generator=gen))
        return [out.detach(), q.grad, k.grad, v.grad]
    finally:
        torch.set_num_threads(previous)


def test_the_kernels_run_on_torchs_openmp_threads_with_tvm_pools_results(kernel_dir):
    from longdoc.kernels import tvm_backend as tb

    tb._kernel(HEAD_DIM)
    path = _library(kernel_dir)
    slot = tb._launch_slot(path)
    launcher = tb._omp_launcher(Path(path).parent)
    assert launcher is not None, "the OpenMP launcher did not build here"
    ours = ctypes.cast(launcher.longdoc_omp_parallel_launch, ctypes.c_void_p).value
    assert slot.value == ours
    assert tb._tvm_pool_launch[path] not in (None, ours)

    on_openmp = [_attention_grads(threads) for threads in (1, 2, 3)]
    slot.value = tb._tvm_pool_launch[path]
    try:
        on_tvm_pool = _attention_grads(2)
    finally:
        slot.value = ours
    for got in on_openmp:
        for a, b in zip(got, on_tvm_pool, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("why", ["no compiler", "LONGDOC_TVM_POOL=tvm"])
def test_without_the_launcher_the_kernels_keep_tvms_pool(kernel_dir, monkeypatch, caplog, why):
    from longdoc.kernels import tvm_backend as tb

    monkeypatch.setattr(tb, "_omp_launchers", {})
    if why == "no compiler":  # TVM's compiler lookup takes $CXX, then $CC
        monkeypatch.setenv("CXX", str(kernel_dir / "no-such-compiler"))
        monkeypatch.setenv("CC", str(kernel_dir / "no-such-compiler"))
    else:
        monkeypatch.setenv("LONGDOC_TVM_POOL", "tvm")
    with caplog.at_level(logging.WARNING, logger=tb.log.name):
        tb._kernel(HEAD_DIM)
    path = _library(kernel_dir)
    assert path not in tb._tvm_pool_launch
    assert not list(kernel_dir.glob("*/omp_launch-*.so"))
    if why == "no compiler":
        assert "keep TVM's own thread pool" in caplog.text
    # the kernels still run, on TVM's pool
    for a, b in zip(_attention_grads(2), _attention_grads(2, "torch"), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
