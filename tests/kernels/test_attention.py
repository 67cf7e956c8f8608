"""Correctness of every backend x pattern against the float64 reference (issue 3)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longdoc import kernels
from longdoc.kernels import BlockLocal, Dense, Fixed, SlidingWindow, Strided, attention
from tests.kernels.reference import brute_mask, reference_attention, rel_err, vector_mask

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}

PATTERNS = [
    SlidingWindow(3),
    SlidingWindow(2, dilation=(1, 2, 3, 1)),
    SlidingWindow(4, causal=True),
    SlidingWindow(3, dilation=2, causal=True),
    BlockLocal(4, neighbors=1),
    BlockLocal(5),
    Strided(5),
    Strided(4, causal=False),
    Fixed(8, 2),
    Fixed(6, 3, causal=False),
    Dense(),
    Dense(causal=True),
]

# backend -> pattern types it must serve; asking for anything else is a clear ValueError
SUPPORTED = {
    "dense": (SlidingWindow, BlockLocal, Strided, Fixed, Dense),
    "sdpa": (SlidingWindow, BlockLocal, Strided, Fixed, Dense),
    "torch": (SlidingWindow, BlockLocal, Strided, Fixed),
    "tvm": (SlidingWindow, Strided, BlockLocal, Fixed),
}
HAVE_TVM = "tvm" in kernels.available_backends()
BACKENDS = ["dense", "sdpa", "torch"] + (["tvm"] if HAVE_TVM else [])


@pytest.fixture(scope="module", autouse=True)
def tvm_cache(tmp_path_factory):
    """Compile the TVM variants these tests use once, into a private cache directory (compiles
    take well under a second each here), so neither ``tvm`` nor ``auto`` touches data/kernels."""
    from longdoc.kernels import settings

    previous = settings.cache_dir()
    root = tmp_path_factory.mktemp("kernels-cache")
    kernels.configure(cache_dir=root)
    if HAVE_TVM:
        kernels.build_kernels(root, head_dims=(4, 8, 16, 32))
    yield root
    kernels.configure(cache_dir=previous)


def supported(backend, pattern):
    return isinstance(pattern, SUPPORTED[backend])


def make_inputs(b, n, h, d, dtype, seed, *, globals_=True, padding=True):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, n, h, d, generator=gen).to(dtype) for _ in range(3))
    gmask = pmask = None
    if globals_:
        gmask = torch.rand(b, n, generator=gen) < 0.03
        gmask[0, 0] = True
        if n > 3:
            gmask[-1, n // 2] = True
            gmask[-1, n // 2 + 1] = True  # adjacent globals: in each other's window
    if padding:
        pmask = torch.zeros(b, n, dtype=torch.bool)
        pmask[-1, max(1, n - n // 3) :] = True  # right padding in the last batch entry
        pmask |= torch.rand(b, n, generator=gen) < 0.02  # and a few scattered padded keys
    return q, k, v, gmask, pmask


def check(backend, pattern, b, n, h, d, dtype, seed, **kw):
    q, k, v, g, p = make_inputs(b, n, h, d, dtype, seed, **kw)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = attention(q, k, v, pattern, global_mask=g, key_padding_mask=p, backend=backend)
    assert out.shape == q.shape and out.dtype == dtype
    qr, kr, vr = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference_attention(qr, kr, vr, pattern, g, p)
    tol = TOL[dtype]
    assert rel_err(out, ref) <= tol, f"forward error {rel_err(out, ref):.2e}"
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1))
    grads = torch.autograd.grad((out.double() * cot.double()).sum(), (q, k, v))
    refs = torch.autograd.grad((ref * cot.double()).sum(), (qr, kr, vr))
    # relative to the largest gradient entry of q, k and v together: dq alone can be exactly 0
    # (seq 1: one key, softmax constant), where a per-tensor ratio would be 0/0
    scale = max(r.abs().max().item() for r in refs)
    for name, gr, rr in zip("qkv", grads, refs, strict=True):
        assert torch.isfinite(gr).all()
        err = (gr.double() - rr).abs().max().item() / scale
        assert err <= tol, f"d{name} error {err:.2e}"


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_pattern_mask_matches_definition(pattern):
    heads = pattern.heads or 2
    for n in (1, 2, 4, 5, 7, 19):
        mask = pattern.mask(n)
        expected = brute_mask(pattern, n, heads)
        if mask.dim() == 2:
            mask = mask.expand(heads, n, n)
        assert torch.equal(mask, expected)
        assert pattern.covers(n) == bool(expected.all()), n


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_backend_pattern_short(backend, pattern):
    if not supported(backend, pattern):
        q = torch.randn(1, 5, 4, 8)
        with pytest.raises(ValueError, match=backend) as err:
            attention(q, q, q, pattern, backend=backend)
        assert type(pattern).__name__ in str(err.value)
        return
    for n in (1, 7, 40):
        check(backend, pattern, 2, n, 4, 8, torch.float32, seed=n)


LONG = [
    (SlidingWindow(16), 1000),
    (SlidingWindow(8, dilation=(1, 2, 1, 4)), 513),
    (SlidingWindow(12, causal=True), 513),
    (BlockLocal(32, neighbors=1), 1000),
    (Strided(32), 1000),
    (Strided(23, causal=False), 513),
    (Fixed(32, 4), 513),
    (Fixed(24, 3, causal=False), 1000),
]


@pytest.mark.parametrize(
    "backend,pattern,n",
    [(be, pat, n) for pat, n in LONG for be in BACKENDS if supported(be, pat)],
    ids=str,
)
def test_backend_long(backend, pattern, n):
    check(backend, pattern, 2, n, 4, 16, torch.float32, seed=n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "pattern", [SlidingWindow(8), SlidingWindow(4, dilation=(1, 3, 2, 1), causal=True)], ids=str
)
def test_bfloat16(backend, pattern):
    check(backend, pattern, 2, 513, 4, 16, torch.bfloat16, seed=3)


@pytest.mark.parametrize("backend", BACKENDS + ["auto"])
def test_no_allowed_key_outputs_zeros(backend):
    q, k, v = (torch.randn(2, 9, 4, 8, requires_grad=True) for _ in range(3))
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[0] = True  # batch 0: every key is padding -> every query of it outputs zeros
    pad[1, 0] = True  # batch 1, query 0 under a causal window sees only key 0, which is padding
    out = attention(q, k, v, SlidingWindow(2, causal=True), key_padding_mask=pad, backend=backend)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.equal(out[1, 0], torch.zeros_like(out[1, 0]))
    assert (out[1, 1:].abs().sum(-1) > 0).all()
    out.sum().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all()
    assert torch.equal(q.grad[0], torch.zeros_like(q.grad[0]))


def test_global_token_in_band_counted_once():
    """A key that is both in the window and global must enter the softmax once."""
    n = 6
    q = torch.zeros(1, n, 1, 4)
    k = torch.zeros(1, n, 1, 4)
    v = torch.arange(n, dtype=torch.float32).view(1, n, 1, 1).expand(1, n, 1, 4).contiguous()
    g = torch.zeros(1, n, dtype=torch.bool)
    g[0, 2] = True
    out = attention(q, k, v, SlidingWindow(1), global_mask=g, backend="torch")
    # query 3 sees keys 2, 3, 4 with equal scores: mean 3 (4 if key 2 were counted twice: 2.75)
    assert torch.allclose(out[0, 3, 0], torch.full((4,), 3.0))
    # query 5 sees keys 4, 5 (window) and 2 (global): mean 11/3
    assert torch.allclose(out[0, 5, 0], torch.full((4,), 11 / 3))
    # the global query 2 sees every key
    assert torch.allclose(out[0, 2, 0], torch.full((4,), 2.5))


def test_errors_are_clear():
    q = torch.randn(1, 8, 4, 8)
    with pytest.raises(ValueError, match="torch.*Dense"):
        attention(q, q, q, Dense(), backend="torch")
    with pytest.raises(ValueError, match="tvm.*Dense"):
        attention(q, q, q, Dense(), backend="tvm")
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, q, q, Dense(), backend="cuda-magic")
    with pytest.raises(ValueError, match="3 heads"):
        attention(q, q, q, SlidingWindow(2, dilation=(1, 2, 3)))
    with pytest.raises(ValueError, match="global_mask"):
        attention(q, q, q, Dense(), global_mask=torch.zeros(1, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="window"):
        SlidingWindow(-1)
    with pytest.raises(ValueError, match="summary"):
        Fixed(4, 5)


def test_auto_selection():
    q = torch.randn(1, 10, 4, 32)
    assert kernels.select_backend(q, Strided(4), needs_grad=True) == "torch"
    assert kernels.select_backend(q, Fixed(4, 1), needs_grad=True) == "torch"
    assert kernels.select_backend(q, Dense(causal=True), needs_grad=False) == "sdpa"
    # tvm: when its kernel is cached (the fixture built d=32): for calls without gradients, and
    # for training with undilated sliding windows (the fused path); the rest trains on torch
    compiled = "tvm" if HAVE_TVM else "torch"
    assert kernels.select_backend(q, SlidingWindow(4), needs_grad=True) == compiled
    assert kernels.select_backend(q, SlidingWindow(4, causal=True), needs_grad=True) == compiled
    assert kernels.select_backend(q, SlidingWindow(2, dilation=2), needs_grad=True) == "torch"
    assert kernels.select_backend(q, SlidingWindow(4), needs_grad=False) == compiled
    assert kernels.select_backend(q[..., :24], SlidingWindow(4), needs_grad=False) == "torch"
    assert kernels.select_backend(q[..., :24], SlidingWindow(4), needs_grad=True) == "torch"
    assert kernels.select_backend(q, BlockLocal(4), needs_grad=False) == compiled
    assert kernels.select_backend(q, BlockLocal(4), needs_grad=True) == "torch"
    out = attention(q, q, q, Dense(causal=True))  # auto: the fused dense call for Dense
    ref = reference_attention(q, q, q, Dense(causal=True))
    assert rel_err(out, ref) <= 1e-4


def test_auto_uses_one_fused_call_for_short_inputs(monkeypatch):
    """Where the pattern covers the sequence (or its band spans it) ``auto`` runs one SDPA
    call: with no mask at all when nothing is padding, with an additive mask otherwise."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    select = kernels.select_backend
    n = 9
    q = torch.randn(2, n, 4, 8)
    assert select(q, SlidingWindow(8), needs_grad=True) == "sdpa"  # covers
    assert select(q, SlidingWindow(4), needs_grad=True) == "sdpa"  # band spans: 2w+1 = 9
    assert select(q, BlockLocal(3, neighbors=1), needs_grad=False) == "sdpa"
    banded = "tvm" if HAVE_TVM else "torch"  # the fixture compiled head_dim 8
    assert select(q, SlidingWindow(3), needs_grad=True) == banded
    assert select(q, SlidingWindow(8, dilation=2), needs_grad=True) == "torch"
    assert select(q, SlidingWindow(8, causal=True), needs_grad=True) == banded
    assert select(q, BlockLocal(4), needs_grad=True) == "torch"
    g = torch.zeros(2, n, dtype=torch.bool)
    g[:, 0] = True
    out = attention(q, q, q, SlidingWindow(8), global_mask=g)
    assert len(calls) == 1 and calls[0] is None  # covered, no padding: plain full attention
    assert rel_err(out, reference_attention(q, q, q, SlidingWindow(8), g)) <= 1e-4
    pad = torch.zeros(2, n, dtype=torch.bool)
    pad[1, 5:] = True
    for pattern in (SlidingWindow(8), SlidingWindow(4), BlockLocal(3, neighbors=1)):
        calls.clear()
        out = attention(q, q, q, pattern, global_mask=g, key_padding_mask=pad)
        assert len(calls) == 1 and calls[0] is not None
        assert rel_err(out, reference_attention(q, q, q, pattern, g, pad)) <= 1e-4


def test_sdpa_mask_cache_builds_each_mask_once(fused_mask_builds):
    """Calls sharing a ``mask_cache`` (a model's layers) build the fused call's mask once per
    pattern and reuse it; every call still matches the reference, a query with no usable key
    included (row 1 is all padding), and patterns that share the cache keep their own masks."""
    built = fused_mask_builds
    n = 9
    q, k, v = torch.randn(3, 3, n, 4, 8, generator=torch.Generator().manual_seed(7))
    g = torch.zeros(3, n, dtype=torch.bool)
    g[:, 0] = True
    pad = torch.zeros(3, n, dtype=torch.bool)
    pad[1, :], pad[2, 6:], g[1, 0] = True, True, False
    cache: dict = {}
    patterns = (SlidingWindow(8), SlidingWindow(4), BlockLocal(3, neighbors=1))
    for pattern in patterns * 2:
        out = attention(
            q, k, v, pattern, global_mask=g, key_padding_mask=pad, backend="sdpa", mask_cache=cache
        )
        assert rel_err(out, reference_attention(q, k, v, pattern, g, pad)) <= 1e-4, pattern
        assert out[1].abs().max().item() == 0.0  # no usable key: zeros
    assert built == list(patterns)


def test_available_backends_and_lazy_tvm_import():
    assert {"dense", "torch"} <= set(kernels.available_backends())
    code = (
        "import sys, torch; from longdoc import kernels; kernels.available_backends();"
        "q = torch.randn(1, 5, 2, 4);"
        "kernels.attention(q, q, q, kernels.SlidingWindow(2));"
        "assert 'tvm' not in sys.modules, 'importing longdoc.kernels pulled in tvm'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_pattern_masks_shapes():
    assert SlidingWindow(2, dilation=[1, 2]).mask(5).shape == (2, 5, 5)
    assert SlidingWindow(2, dilation=[1, 2]).dilation == (1, 2)  # normalised, hashable
    assert hash(SlidingWindow(2, dilation=[1, 2])) == hash(SlidingWindow(2, dilation=(1, 2)))
    assert BlockLocal(3).mask(7).shape == (7, 7)
    assert torch.equal(vector_mask(Fixed(4, 1), 9, 1)[0], Fixed(4, 1).mask(9))


# ---- property-based ----------------------------------------------------------------------

patterns = st.one_of(
    st.builds(
        SlidingWindow,
        window=st.integers(0, 6),
        dilation=st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))),
        causal=st.booleans(),
    ),
    st.builds(BlockLocal, block=st.integers(1, 6), neighbors=st.integers(0, 2)),
    st.builds(Strided, stride=st.integers(1, 6), causal=st.booleans()),
    st.builds(
        lambda block, summary, causal: Fixed(block, min(summary, block), causal),
        block=st.integers(1, 6),
        summary=st.integers(1, 3),
        causal=st.booleans(),
    ),
    st.builds(Dense, causal=st.booleans()),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=patterns,
    n=st.integers(1, 50),
    b=st.integers(1, 2),
    d=st.sampled_from([4, 8]),
    seed=st.integers(0, 2**16),
    p_global=st.sampled_from([0.0, 0.1]),
    p_pad=st.sampled_from([0.0, 0.3]),
)
def test_property_matches_reference(pattern, n, b, d, seed, p_global, p_pad):
    h = pattern.heads or 2
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, n, h, d, generator=gen) for _ in range(3))
    g = torch.rand(b, n, generator=gen) < p_global
    p = torch.rand(b, n, generator=gen) < p_pad
    ref = reference_attention(q, k, v, pattern, g, p)
    for backend in BACKENDS + ["auto"]:
        if backend != "auto" and not supported(backend, pattern):
            continue
        out = attention(q, k, v, pattern, global_mask=g, key_padding_mask=p, backend=backend)
        assert rel_err(out, ref) <= 1e-4, backend
        allowed_any = ~p.all(dim=1)  # a batch entry with every key padded: all zeros
        assert torch.equal(out[~allowed_any], torch.zeros_like(out[~allowed_any]))


@pytest.mark.skipif(not HAVE_TVM, reason="apache-tvm not installed")
def test_auto_picks_tvm_only_when_eligible_and_cached(monkeypatch):
    from longdoc.kernels import tvm_backend

    monkeypatch.setattr(tvm_backend, "AUTO_ELIGIBLE", {"inference": True, "training": True})
    q = torch.randn(1, 10, 4, 32)
    assert kernels.select_backend(q, SlidingWindow(4), needs_grad=False) == "tvm"
    assert kernels.select_backend(q, SlidingWindow(4), needs_grad=True) == "tvm"
    assert kernels.select_backend(q[..., :24], SlidingWindow(4), needs_grad=False) == "torch"
    assert kernels.select_backend(q, BlockLocal(4), needs_grad=True) == "torch"  # not measured
    assert kernels.select_backend(q.double(), SlidingWindow(4), needs_grad=False) == "torch"
    monkeypatch.setattr(tvm_backend, "AUTO_ELIGIBLE", {"inference": False, "training": False})
    assert kernels.select_backend(q, SlidingWindow(4), needs_grad=False) == "torch"


@pytest.mark.skipif(not HAVE_TVM, reason="apache-tvm not installed")
@pytest.mark.parametrize(
    "pattern, d",
    [
        (SlidingWindow(5), 8),
        (SlidingWindow(3, dilation=(1, 2), causal=True), 5),  # odd head_dim: kernel tail path
        (SlidingWindow(20), 16),
        (BlockLocal(5, neighbors=1), 8),  # blocks that do not divide the length (67)
        (BlockLocal(40), 5),  # blocks wider than a row tile, odd head_dim
    ],
    ids=str,
)
def test_tvm_backward_is_compiled(monkeypatch, pattern, d):
    """The tvm backend's gradients come from its compiled backward kernels, not from a torch
    recompute of the band: with the torch band path disabled they still match the reference."""
    from longdoc.kernels import torch_backend

    def no_torch_band(*args, **kwargs):
        raise AssertionError("tvm backend fell back to the torch band computation")

    monkeypatch.setattr(torch_backend, "_banded", no_torch_band)
    check("tvm", pattern, 2, 67, 2, d, torch.float32, seed=7)


@pytest.mark.skipif(not HAVE_TVM, reason="apache-tvm not installed")
def test_tvm_head_groups_match_reference(monkeypatch):
    """Long inputs run the kernels over groups of heads (bounded copies); force tiny groups."""
    from longdoc.kernels import tvm_backend

    monkeypatch.setattr(tvm_backend, "CHUNK_BYTES", 1)  # one head per group
    assert len(tvm_backend._head_groups(torch.empty(1, 5, 3, 8))) == 3
    check("tvm", SlidingWindow(4, dilation=(1, 2, 1)), 2, 61, 3, 8, torch.float32, seed=11)
    check("tvm", BlockLocal(7, neighbors=1), 2, 61, 3, 8, torch.float32, seed=12)


@pytest.mark.parametrize("pattern", [Strided(32), Strided(32, causal=False), Fixed(32, 2)], ids=str)
def test_torch_sparse_patterns_never_build_seq_by_seq(pattern):
    """The torch path for the Sparse Transformer patterns keeps O(n * (s + n/s)) scores: no
    tensor it saves for backward (or returns) has ``seq * seq`` elements per head."""
    b, n, h, d = 1, 1024, 2, 8
    q, k, v = (torch.randn(b, n, h, d, requires_grad=True) for _ in range(3))
    largest = [0]

    def pack(t):
        largest[0] = max(largest[0], t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = attention(q, k, v, pattern, backend="torch")
    out.sum().backward()
    # a seq x seq score matrix would be b * h * n * n = 2M elements; the band and the
    # long-range part each hold about n * 3s and n * n/s (x heads)
    assert largest[0] <= b * h * n * n // 4, largest[0]


@pytest.mark.parametrize("pattern", [Strided(16), Fixed(16, 2, causal=False)], ids=str)
def test_torch_sparse_patterns_bfloat16(pattern):
    check("torch", pattern, 2, 301, 4, 16, torch.bfloat16, seed=5)


@pytest.mark.skipif(not HAVE_TVM, reason="apache-tvm not installed")
@pytest.mark.parametrize(
    "pattern",
    [Strided(6), Strided(5, causal=False), Fixed(7, 2), Fixed(6, 1, causal=False)],
    ids=str,
)
def test_tvm_strided_band_is_compiled(monkeypatch, pattern):
    """``tvm`` runs Strided's band and Fixed's own block in its kernels (only the long-range
    part is torch)."""
    from longdoc.kernels import torch_backend

    def no_torch_band(*args, **kwargs):
        raise AssertionError("tvm backend fell back to the torch band computation")

    monkeypatch.setattr(torch_backend, "_local_part", no_torch_band)
    check("tvm", pattern, 2, 67, 2, 8, torch.float32, seed=9)


@pytest.mark.skipif(not HAVE_TVM, reason="apache-tvm not installed")
@pytest.mark.parametrize(
    "pattern, n, d",
    [
        (SlidingWindow(300), 700, 8),
        (SlidingWindow(600, causal=True), 900, 8),
        (SlidingWindow(1), 70, 8),
        (SlidingWindow(256), 600, 64),  # the benchmark's window and head_dim
        (BlockLocal(100, neighbors=1), 777, 8),  # 300 keys: three chunks, blocks across tiles
        (Fixed(150, 4), 401, 8),  # causal own block over two chunks
    ],
    ids=str,
)
def test_tvm_forward_multi_chunk_band(pattern, n, d):
    """Bands longer than the forward kernel's softmax chunk (``FWD_CHUNK`` keys, online rescale
    between chunks) and bands shorter than one row tile (every key block is a band edge)."""
    from longdoc.kernels.tvm_source import FWD_CHUNK, FWD_ROWS

    if isinstance(pattern, SlidingWindow):
        nkeys = 2 * pattern.window + 1 - pattern.causal * pattern.window
    else:
        nkeys = pattern.block * (2 * getattr(pattern, "neighbors", 0) + 1)
    assert nkeys + FWD_ROWS - 1 > FWD_CHUNK or nkeys < FWD_ROWS
    check("tvm", pattern, 1, n, 2, d, torch.float32, seed=n)


@pytest.mark.skipif(not HAVE_TVM, reason="apache-tvm not installed")
def test_tvm_schedule_for_the_other_vector_width_is_exact(tmp_path, monkeypatch):
    """The kernels are scheduled for the target's vector width (`tvm_backend._vector_lanes`:
    16 float32 lanes with AVX-512, else 8), so a machine runs only its own schedule: build the
    other one here and check it too, forward and backward, over several row tiles and a band
    longer than a softmax chunk."""
    from longdoc.kernels import settings, tvm_backend

    host = tvm_backend._vector_lanes(tvm_backend.resolve_target("llvm")[1])
    monkeypatch.setattr(tvm_backend, "_vector_lanes", lambda target: 24 - host)  # 16 <-> 8
    previous = settings.cache_dir()
    kernels.configure(cache_dir=tmp_path)
    try:
        for pattern, n, d in [
            (SlidingWindow(70), 300, 32),
            (SlidingWindow(9, causal=True), 77, 8),
            (BlockLocal(20, neighbors=1), 101, 16),
        ]:
            check("tvm", pattern, 2, n, 2, d, torch.float32, seed=n)
    finally:
        kernels.configure(cache_dir=previous)


@pytest.mark.skipif(not HAVE_TVM, reason="apache-tvm not installed")
@pytest.mark.parametrize(
    "pattern, n",
    [
        (SlidingWindow(70), 300),
        (SlidingWindow(9, causal=True), 77),
        (BlockLocal(20, neighbors=1), 101),
        (SlidingWindow(256), 1000),
    ],
)
def test_tvm_inference_computes_global_rows_in_the_kernel(pattern, n, monkeypatch):
    """Without gradients the forward kernel also computes the global queries' rows (partial
    softmaxes per task, combined after): exact to the float64 reference with global tokens in
    several places, padding, and a row whose keys are all padding's but one."""
    from longdoc.kernels import tvm_backend

    def not_this_path(*args):
        raise AssertionError("inference took the torch path for the global rows")

    monkeypatch.setattr(tvm_backend, "_global_rows_forward", not_this_path)
    torch.manual_seed(n)
    q, k, v = (torch.randn(3, n, 2, 64) for _ in range(3))
    glob = torch.zeros(3, n, dtype=torch.bool)
    glob[:, 0] = True
    glob[1, [5, n // 2]] = True
    pad = torch.zeros(3, n, dtype=torch.bool)
    pad[1, n - n // 4 :] = True
    pad[2, 1:] = True  # only the global token itself is a usable key
    with torch.no_grad():
        out = attention(q, k, v, pattern, global_mask=glob, key_padding_mask=pad, backend="tvm")
    ref = reference_attention(q, k, v, pattern, glob, pad)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.skipif(not HAVE_TVM, reason="apache-tvm not installed")
def test_tvm_forward_many_global_keys():
    """More global keys than one softmax chunk holds: the forward kernel takes them in several
    chunks before the band (some of them padding, some inside the band too)."""
    from longdoc.kernels.tvm_source import FWD_CHUNK

    b, n, h, d = 1, 1300, 2, 8
    gen = torch.Generator().manual_seed(21)
    q, k, v = (torch.randn(b, n, h, d, generator=gen).requires_grad_() for _ in range(3))
    g = torch.rand(b, n, generator=gen) < 0.5
    pad = torch.rand(b, n, generator=gen) < 0.05
    assert int(g.sum()) > FWD_CHUNK
    pattern = SlidingWindow(7)
    out = attention(q, k, v, pattern, global_mask=g, key_padding_mask=pad, backend="tvm")
    qr, kr, vr = (x.detach().double() for x in (q, k, v))
    ref = reference_attention(qr, kr, vr, pattern, g, pad)
    assert rel_err(out, ref) <= TOL[torch.float32]


@pytest.mark.skipif(not HAVE_TVM, reason="apache-tvm not installed")
@pytest.mark.parametrize("n", [2047, 3971, 4095])
def test_tvm_odd_lengths_with_large_windows(tvm_cache, n):
    """Regression: odd lengths with a 128-token window gave wrong (even NaN) rows within a
    window of the end at head_dim 64, in some processes: the forward's P @ V loop read its score
    buffer at a negative index for chunks starting past the sequence end (kernels.tvm_source,
    ``y1``). Now run unpadded (no ``PAD_TO`` workaround); forward and backward must match."""
    kernels.build_kernels(tvm_cache, head_dims=(64,))
    torch.manual_seed(n)
    q, k, v = (torch.randn(1, n, 2, 64, requires_grad=True) for _ in range(3))
    g = torch.zeros(1, n, dtype=torch.bool)
    g[0, 0] = True
    pattern = SlidingWindow(128)
    with torch.inference_mode():
        assert (
            rel_err(
                attention(q, k, v, pattern, backend="tvm"),
                attention(q, k, v, pattern, backend="torch"),
            )
            <= 1e-5
        )
    out = attention(q, k, v, pattern, global_mask=g, backend="tvm")
    ref = reference_attention(q, k, v, pattern, g)
    assert rel_err(out, ref) <= 1e-4
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    want = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for got, exp in zip(grads, want, strict=True):
        assert rel_err(got, exp) <= 1e-3


# ---- the fused training path (issue 18): band + global keys + global rows in one node --------


def _fused_case(b, n, h, d, seed, globals_per_entry, pad_tail):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, n, h, d, generator=gen).requires_grad_() for _ in range(3))
    g = torch.zeros(b, n, dtype=torch.bool)
    for e, count in enumerate(globals_per_entry):
        g[e, torch.randperm(n, generator=gen)[:count]] = True
    pad = torch.zeros(b, n, dtype=torch.bool)
    for e, tail in enumerate(pad_tail):
        pad[e, n - tail :] = tail > 0
    pad |= torch.rand(b, n, generator=gen) < 0.03  # scattered padded keys, some of them global
    return q, k, v, g, pad


@pytest.mark.skipif(not HAVE_TVM, reason="apache-tvm not installed")
@pytest.mark.parametrize(
    "pattern, n, globals_per_entry, pad_tail",
    [
        (SlidingWindow(5), 67, (1, 0, 2), (0, 20, 3)),  # 1 and 2 keys: the addcmul_ updates
        (SlidingWindow(4, causal=True), 53, (5, 3, 0), (7, 0, 0)),  # > 2: the bmm updates
        (BlockLocal(6, neighbors=1), 61, (3, 1, 1), (0, 61, 0)),  # entry 1: every key padding
        (SlidingWindow(20), 41, (2, 2, 9), (0, 0, 13)),  # window wider than the entries
    ],
    ids=str,
)
def test_tvm_fused_path_gradients(pattern, n, globals_per_entry, pad_tail):
    """Undilated patterns run band, global keys and global rows as one autograd node
    (``_Fused``) whose backward writes every gradient into one dq, dk, dv: outputs and
    gradients must match the float64 reference (varying global counts per entry, padded global
    tokens, odd lengths, an entry whose keys are all padding)."""
    q, k, v, g, pad = _fused_case(3, n, 2, 8, n, globals_per_entry, pad_tail)
    out = attention(q, k, v, pattern, global_mask=g, key_padding_mask=pad, backend="tvm")
    assert type(out.grad_fn).__name__ == "_FusedBackward"  # no gather/index_put nodes around it
    qr, kr, vr = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference_attention(qr, kr, vr, pattern, g, pad)
    assert rel_err(out, ref) <= 1e-5
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad((out * cot).sum(), (q, k, v))
    want = torch.autograd.grad((ref * cot.double()).sum(), (qr, kr, vr))
    scale = max(w.abs().max().item() for w in want)
    for name, a, e in zip("qkv", got, want, strict=True):
        err = (a.double() - e).abs().max().item() / scale
        assert err <= 1e-5, f"d{name} error {err:.2e}"


@pytest.mark.skipif(not HAVE_TVM, reason="apache-tvm not installed")
def test_tvm_fused_path_matches_unfused_and_second_backward_is_clear():
    """The fused node gives the gradients the per-part path (dilation's, ``_Band`` + torch glue)
    gives for the same inputs, and backward twice through one graph is refused as usual."""
    from longdoc.kernels import tvm_backend

    q, k, v, g, pad = _fused_case(2, 45, 4, 16, 5, (2, 1), (0, 9))
    pattern = SlidingWindow(6)
    out = attention(q, k, v, pattern, global_mask=g, key_padding_mask=pad, backend="tvm")
    fused = torch.autograd.grad(out.square().sum(), (q, k, v), retain_graph=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tvm_backend, "_fused_applies", lambda pattern, heads: False)  # force _Band
        old = attention(q, k, v, pattern, global_mask=g, key_padding_mask=pad, backend="tvm")
    assert type(old.grad_fn).__name__ != "_FusedBackward"
    unfused = torch.autograd.grad(old.square().sum(), (q, k, v))
    assert torch.allclose(out, old, atol=1e-6)
    for a, e in zip(fused, unfused, strict=True):
        assert torch.allclose(a, e, atol=1e-5, rtol=1e-4)
    torch.autograd.grad(out.sum(), (q,), retain_graph=False)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(out.sum(), (q,))


@pytest.mark.skipif(not HAVE_TVM, reason="apache-tvm not installed")
def test_tvm_fused_path_under_bf16_autocast():
    """Pretraining's optional bf16 autocast: the fused node computes in float32 inside (its
    torch matmuls are not autocast), so forward and backward work with several global tokens."""
    q, k, v, g, pad = _fused_case(2, 50, 2, 8, 3, (4, 3), (0, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(
            q, k, v, SlidingWindow(4), global_mask=g, key_padding_mask=pad, backend="tvm"
        )
    assert out.dtype == torch.float32
    got = torch.autograd.grad(out.square().sum(), (q, k, v))
    qr, kr, vr = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference_attention(qr, kr, vr, SlidingWindow(4), g, pad)
    want = torch.autograd.grad(ref.square().sum(), (qr, kr, vr))
    assert rel_err(out, ref) <= 1e-5
    for a, e in zip(got, want, strict=True):
        assert rel_err(a, e) <= 1e-4


@pytest.mark.skipif(not HAVE_TVM, reason="apache-tvm not installed")
def test_tvm_fused_path_padded_global_key_with_huge_score():
    """A global token that is also padding is no key: its score may far exceed a row's
    log-sum-exp (exp overflows), and must still contribute exactly nothing to any gradient."""
    q, k, v, g, pad = _fused_case(1, 40, 2, 8, 4, (0,), (0,))
    g[0, 7] = g[0, 30] = True
    pad[0, 30] = True
    with torch.no_grad():
        k[0, 30] = 60 * q[0, 10:12].mean(0)  # scores of hundreds against nearby queries
    out = attention(q, k, v, SlidingWindow(3), global_mask=g, key_padding_mask=pad, backend="tvm")
    got = torch.autograd.grad(out.sum(), (q, k, v))
    qr, kr, vr = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference_attention(qr, kr, vr, SlidingWindow(3), g, pad)
    want = torch.autograd.grad(ref.sum(), (qr, kr, vr))
    for a, e in zip(got, want, strict=True):
        assert torch.isfinite(a).all()
        assert rel_err(a, e) <= 1e-4


# ---- global_rows=False: the caller computes the global queries' rows itself -------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "pattern",
    [SlidingWindow(3), SlidingWindow(2, dilation=(1, 2, 3, 1)), BlockLocal(4, neighbors=1)]
    + [Strided(5), Fixed(6, 3, causal=False), Dense()],
    ids=str,
)
def test_global_rows_false_zeroes_them_and_their_gradient(backend, pattern):
    """``global_rows=False`` (the Longformer model's call: it recomputes those rows with its
    global projections): every other row and every gradient is the float64 reference's with the
    global queries' rows taken out, on every backend and pattern it serves."""
    if not supported(backend, pattern):
        pytest.skip(f"{backend} does not serve {pattern}")
    q, k, v, g, p = make_inputs(3, 37, 4, 8, torch.float32, 11)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = attention(
        q, k, v, pattern, global_mask=g, key_padding_mask=p, backend=backend, global_rows=False
    )
    qr, kr, vr = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference_attention(qr, kr, vr, pattern, g, p).masked_fill(g[:, :, None, None], 0.0)
    assert torch.equal(out[g], torch.zeros_like(out[g]))
    assert rel_err(out, ref) <= 1e-5
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad((out * cot).sum(), (q, k, v))
    want = torch.autograd.grad((ref * cot.double()).sum(), (qr, kr, vr))
    scale = max(w.abs().max().item() for w in want)
    for name, a, e in zip("qkv", got, want, strict=True):
        err = (a.double() - e).abs().max().item() / scale
        assert err <= 1e-5, f"d{name} error {err:.2e}"
    with torch.no_grad():  # inference: the rows are zeroed in place, same values
        again = attention(
            q, k, v, pattern, global_mask=g, key_padding_mask=p, backend=backend, global_rows=False
        )
    assert torch.equal(again, out.detach())
