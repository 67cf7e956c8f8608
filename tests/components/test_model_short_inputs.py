"""Short inputs (issue 18): where the window covers the input (or its band spans it), the model's
local attention is one fused SDPA call per layer, and the model computes what the banded path
and transformers' LongformerModel compute (fp32, padding, global tokens; forward and gradients).
"""

from __future__ import annotations

import pytest
import torch
import transformers

from longdoc.components.modeling import model as M

VOCAB, PAD, BOS, EOS = 100, 1, 0, 2
WINDOW = 16  # transformers' attention_window: 8 keys on each side
TOL = 1e-5


def configs(**ours_kw):
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        attention_window=WINDOW,
        max_position_embeddings=64,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        sep_token_id=EOS,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.LongformerConfig(**fields), M.LongdocConfig(**fields, **ours_kw)


def inputs(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Row 0: full length, globals at 0 and n // 2; row 1: the last third padding, global at 0
    and on one padding position (which must be ignored)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, n), generator=g)
    ids[:, 0] = BOS
    mask = torch.ones(2, n, dtype=torch.long)
    cut = n - n // 3
    mask[1, cut:], ids[1, cut:] = 0, PAD
    glob = torch.zeros(2, n, dtype=torch.long)
    glob[:, 0] = 1
    glob[0, n // 2] = 1
    glob[1, n - 1] = 1
    return {"input_ids": ids, "attention_mask": mask, "global_attention_mask": glob}


@pytest.fixture(scope="module")
def models():
    hf_cfg, auto_cfg = configs(attention_backend="auto")
    _, banded_cfg = configs(attention_backend="torch")
    torch.manual_seed(0)
    hf = transformers.LongformerModel(hf_cfg).eval()
    ours = M.LongformerModel(auto_cfg).eval()
    banded = M.LongformerModel(banded_cfg).eval()
    for model in (ours, banded):
        model.load_state_dict(hf.state_dict())
    return hf, ours, banded


def spy_sdpa(monkeypatch) -> list:
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


# n = 9: the window covers everything; 13 and 17: the band (17 keys) spans the input; 30: neither
@pytest.mark.parametrize("n,fused", [(9, True), (13, True), (17, True), (30, False)])
def test_short_inputs_match_banded_path_and_transformers(models, monkeypatch, n, fused):
    hf, ours, banded = models
    b = inputs(n, seed=n)
    keep = b["attention_mask"].bool()
    with torch.no_grad():
        ref = hf(**b).last_hidden_state
        want = banded(**b).last_hidden_state
        calls = spy_sdpa(monkeypatch)
        got = ours(**b).last_hidden_state
    if fused:  # one masked call per layer (padding); the banded path makes calls of its own
        assert len(calls) == 2 and all(mask is not None for mask in calls)
    assert (got - want).abs().max().item() <= TOL  # padding rows too
    assert (got - ref)[keep].abs().max().item() <= TOL


def test_fused_call_has_no_mask_without_padding(models, monkeypatch):
    """Covered and unpadded (the MLM setting): plain full attention, what RoBERTa runs."""
    _, ours, banded = models
    b = inputs(9)
    b["attention_mask"][:] = 1
    b["input_ids"][1, 6:] = 5
    with torch.no_grad():
        want = banded(**b).last_hidden_state
        calls = spy_sdpa(monkeypatch)
        got = ours(**b).last_hidden_state
    assert calls == [None, None]
    assert (got - want).abs().max().item() <= TOL


def test_short_inputs_gradients_match_banded_path(models):
    _, ours, banded = models
    b = inputs(13, seed=3)
    cot = torch.randn(2, 13, 32, generator=torch.Generator().manual_seed(1))
    grads = []
    for model in (ours, banded):
        model.zero_grad()
        (model(**b).last_hidden_state * cot).sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        assert (g - grads[1][name]).abs().max().item() <= 1e-4 * max(1.0, g.abs().max().item()), (
            name
        )


def test_fused_mask_built_once_per_forward(models, fused_mask_builds):
    """Both layers share one fused mask, built by the first (per forward, not per layer), and the
    model still computes what the banded path computes."""
    built = fused_mask_builds
    _, ours, banded = models
    for n in (9, 13):  # covered (a padding-row mask), band spans (a band mask)
        b = inputs(n, seed=n + 1)
        built.clear()
        with torch.no_grad():
            got = ours(**b).last_hidden_state
            want = banded(**b).last_hidden_state
        assert len(built) == 1
        assert (got - want).abs().max().item() <= TOL
