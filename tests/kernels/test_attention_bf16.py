"""bf16 attention with bf16 dot products (``kernels.tvm_bf16_source``): where the CPU has AMX-BF16
or AVX512-BF16, a bf16 call to the ``tvm`` backend that needs no gradient runs the bf16 kernel
on the engine this CPU has, exact to the float64 reference within bf16's rounding (the softmax
weights are rounded to bf16 before ``P @ V``), with global tokens, padding, odd lengths, causal
windows and block-local patterns; calls that need a gradient keep the float32 kernels. Skipped
where this process can run neither engine (their bf16 inputs take the float32 kernels, tested
in test_attention.py): no AMX-BF16 with Linux's grant, and no AVX512-BF16 on a CPU without
AMX (a CPU with AMX builds the AMX engine)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from longdoc import kernels
from longdoc.kernels import BlockLocal, SlidingWindow, attention, tvm_bf16
from tests.kernels.reference import reference_attention, rel_err
from tests.kernels.test_attention import make_inputs

pytestmark = pytest.mark.skipif(
    "tvm" not in kernels.available_backends()
    or not (
        tvm_bf16.amx_usable()
        or (tvm_bf16.cpu_has_avx512_bf16() and not tvm_bf16.cpu_has_amx_bf16())
    ),
    reason="needs apache-tvm and a CPU with AMX-BF16 (amx_bf16, amx_tile) or avx512_bf16",
)

PATTERNS = [
    SlidingWindow(3),
    SlidingWindow(40),
    SlidingWindow(7, causal=True),
    BlockLocal(16, neighbors=1),
    BlockLocal(5),
]


@pytest.fixture(scope="module", autouse=True)
def tvm_cache(tmp_path_factory):
    from longdoc.kernels import settings

    previous = settings.cache_dir()
    root = tmp_path_factory.mktemp("kernels-cache")
    kernels.configure(cache_dir=root)
    kernels.build_kernels(root, head_dims=(32, 64))
    yield root
    kernels.configure(cache_dir=previous)


@pytest.fixture
def bf16_calls(monkeypatch):
    calls = []
    band_forward = tvm_bf16.band_forward

    def counted(*args, **kwargs):
        calls.append(args[1].shape)
        return band_forward(*args, **kwargs)

    monkeypatch.setattr(tvm_bf16, "band_forward", counted)
    return calls


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
@pytest.mark.parametrize("n,d", [(37, 64), (130, 32)])
def test_bf16_inference_runs_the_bf16_kernel_exact_to_the_reference(pattern, n, d, bf16_calls):
    q, k, v, gmask, pmask = make_inputs(2, n, 3, d, torch.bfloat16, seed=n + d)
    with torch.no_grad():
        out = attention(q, k, v, pattern, global_mask=gmask, key_padding_mask=pmask, backend="tvm")
    assert out.dtype == torch.bfloat16 and len(bf16_calls) == 1
    ref = reference_attention(q, k, v, pattern, gmask, pmask)
    assert rel_err(out, ref) < 2e-2
    # and as close to the float32 kernels on the same (bf16) numbers as bf16 rounding allows
    with torch.no_grad():
        q32, k32, v32 = (x.float() for x in (q, k, v))
        fp32 = attention(
            q32, k32, v32, pattern, global_mask=gmask, key_padding_mask=pmask, backend="tvm"
        )
    assert rel_err(out, fp32) < 2e-2


@pytest.mark.parametrize("pattern", [SlidingWindow(3), BlockLocal(16, neighbors=1)], ids=str)
def test_the_global_rows_come_from_the_kernel_in_float32(pattern, bf16_calls):
    """The global queries' rows over every key are computed by the kernel's parallel tasks
    (partial softmaxes over their own rows, combined) from the bf16 numbers in fp32: each
    element is the float64 reference's rounded to bf16 (within one bf16 step), over several
    tasks, two batch entries, padding and adjacent global tokens."""
    q, k, v, gmask, pmask = make_inputs(2, 300, 3, 64, torch.bfloat16, seed=7)
    with torch.no_grad():
        out = attention(q, k, v, pattern, global_mask=gmask, key_padding_mask=pmask, backend="tvm")
    assert len(bf16_calls) == 1
    ref = reference_attention(q, k, v, pattern, gmask, pmask)[gmask]
    assert ((out[gmask].double() - ref).abs() <= 2**-8 * ref.abs() + 1e-6).all()


def test_a_call_that_needs_gradients_keeps_the_float32_kernels(bf16_calls):
    q, k, v, gmask, pmask = make_inputs(1, 50, 2, 64, torch.bfloat16, seed=3)
    q.requires_grad_(True)
    out = attention(
        q, k, v, SlidingWindow(8), global_mask=gmask, key_padding_mask=pmask, backend="tvm"
    )
    out.float().sum().backward()
    assert not bf16_calls and q.grad is not None


def test_the_library_holds_the_engines_instructions(tvm_cache):
    """The compiled kernel multiplies in bf16 (not fp32 code that happens to be right): AMX
    where the process may use it, else AVX512-BF16."""
    from longdoc.kernels import tvm_backend

    fns = tvm_backend._kernel(64)
    assert {"bf16_fwd", "bf16_pack_k", "bf16_pack_v"} <= fns.keys()
    expected = "amx" if tvm_bf16.cpu_has_amx_bf16() else "avx512bf16"
    assert fns["bf16_engine"] == expected
    if shutil.which("objdump") is None:
        pytest.skip("no objdump to disassemble the library with")
    lib_path = next(tvm_cache.rglob("*_d64.so"))
    asm = subprocess.run(["objdump", "-d", str(lib_path)], capture_output=True, text=True).stdout
    if expected == "amx":
        assert "tdpbf16ps" in asm and "ldtilecfg" in asm
    else:
        assert "vdpbf16ps" in asm and "tdpbf16ps" not in asm
