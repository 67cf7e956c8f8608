"""The CUDA path of the ``tvm`` backend, as far as a machine without a GPU can check it.

* The GPU kernels' arithmetic: ``kernels.tvm_gpu_source`` built with CPU loop kinds
  (``gpu=False``) and run through the same autograd wrapper the CUDA path uses, against the
  float64 reference (forward and gradients, padding, global tokens, dilation, causal).
* Their CUDA build: TVM's CUDA code generator + ``nvcc`` (skipped where either is missing).
* Running CUDA kernels needs TVM's CUDA runtime (the wheel's sidecar library, which needs the
  NVIDIA driver): where it did not load, the error says why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longdoc import kernels
from longdoc.kernels import SlidingWindow
from tests.kernels.reference import reference_attention, rel_err

pytestmark = pytest.mark.skipif(
    "tvm" not in kernels.available_backends(), reason="apache-tvm not installed"
)


@pytest.fixture(scope="module")
def tvm_backend():
    from longdoc.kernels import tvm_backend

    return tvm_backend


@pytest.mark.parametrize(
    "pattern, n, d",
    [
        (SlidingWindow(4), 37, 8),
        (SlidingWindow(3, dilation=(1, 2), causal=True), 41, 5),
        (SlidingWindow(6), 1, 8),
    ],
    ids=str,
)
def test_gpu_kernels_match_reference(tvm_backend, pattern, n, d):
    fns = tvm_backend.gpu_kernels_on_cpu(d)
    gen = torch.Generator().manual_seed(n)
    b, h = 2, 2
    q, k, v = (torch.randn(b, n, h, d, generator=gen, requires_grad=True) for _ in range(3))
    g = torch.zeros(b, n, dtype=torch.bool)
    g[0, n // 2] = True
    pad = torch.zeros(b, n, dtype=torch.bool)
    pad[1, max(1, n - 5) :] = True
    out = tvm_backend.tvm_attention(q, k, v, pattern, g, pad, kernels=fns)
    qr, kr, vr = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference_attention(qr, kr, vr, pattern, g, pad)
    assert rel_err(out, ref) <= 1e-4
    cot = torch.randn(out.shape, generator=gen)
    grads = torch.autograd.grad((out * cot).sum(), (q, k, v))
    refs = torch.autograd.grad((ref * cot.double()).sum(), (qr, kr, vr))
    scale = max(r.abs().max().item() for r in refs)
    for name, gr, rr in zip("qkv", grads, refs, strict=True):
        err = (gr.double() - rr).abs().max().item() / scale
        assert err <= 1e-4, f"d{name} error {err:.2e}"


def _can_compile_cuda() -> bool:
    import tvm

    return (
        tvm.get_global_func("target.build.cuda", allow_missing=True) is not None
        and shutil.which("nvcc") is not None
    )


@pytest.mark.slow  # nvcc: ~10-60 s on the shared 2-core machine
def test_cuda_variant_compiles_and_is_cached(tvm_backend, tmp_path):
    if not _can_compile_cuda():
        pytest.skip("no CUDA code generator in TVM or no nvcc")
    summary = kernels.build_kernels(tmp_path, head_dims=(8,), targets=("cuda:sm_80",))
    ((label, entry),) = summary["variants"].items()
    assert label == "cuda-sm_80/sliding_window_float32_d8"
    assert entry["status"] == "compiled" and entry["target"]["kind"] == "cuda"
    manifest = json.loads((tmp_path / "cuda-sm_80" / "manifest.json").read_text())
    assert manifest["target"]["arch"] == "sm_80"
    lib = (tmp_path / "cuda-sm_80" / "sliding_window_float32_d8.so").read_bytes()
    assert b"gpu_fwd" in lib and b"gpu_bwd_dkdv" in lib
    again = kernels.build_kernels(tmp_path, head_dims=(8,), targets=("cuda:sm_80",))
    assert [v["status"] for v in again["variants"].values()] == ["cached"]


def test_cuda_targets_fail_clearly(tvm_backend):
    import tvm

    with pytest.raises(ValueError, match="unsupported TVM target"):
        tvm_backend.resolve_target("rocm")
    with pytest.raises(ValueError, match="unsupported TVM target"):
        tvm_backend.resolve_target("llvm:sm_80")
    if tvm.runtime.enabled("cuda") and tvm.cuda(0).exist:
        pytest.skip("this TVM can run CUDA kernels")
    # no GPU to detect the architecture from: the message says how to name one
    if tvm.get_global_func("target.build.cuda", allow_missing=True) is not None:
        with pytest.raises(ValueError, match="cuda:sm_90"):
            tvm_backend.resolve_target("cuda")
    if not tvm.runtime.enabled("cuda"):
        # the wheel's CUDA runtime is a sidecar library: the message says why it did not load
        # (here, typically: no NVIDIA driver) or that TVM has no CUDA runtime at all
        why = tvm_backend.cuda_runtime_error()
        sidecar = tvm_backend.Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
        if sidecar.exists():
            assert "(libtvm_runtime_cuda.so) did not load" in why
            assert ".so" in why.split("did not load: ", 1)[1]  # the loader's own reason
        else:
            assert "without the CUDA runtime" in why
        with pytest.raises(ValueError, match="CUDA runtime"):
            tvm_backend._kernel(8, "cuda:sm_80")


def test_gpu_check_runs_its_steps_on_the_cpu_and_says_when_there_is_no_gpu(tmp_path):
    """`benchmarks/gpu_check.sh`, which has not run on a GPU yet: its dry run on the CPU kernels
    builds, checks exactness and prints the timing table; without a GPU it exits 2."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    dry = subprocess.run(
        ["bash", str(script), "--device", "cpu", "--seqs", "96", "--reps", "1", "--heads", "2"]
        + ["--cache", str(tmp_path), "--out", str(tmp_path / "report.md")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stdout + dry.stderr
    report = (tmp_path / "report.md").read_text()
    assert report.count(": ok") == 2 and "FAILED" not in report
    for name in ("tvm", "flex", "sdpa"):
        assert f"| 96 | {name} |" in report
    if not torch.cuda.is_available():
        bare = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
        assert bare.returncode == 2 and "no CUDA device" in bare.stdout
