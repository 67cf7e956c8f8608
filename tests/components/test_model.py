"""The long model against transformers' Longformer: interop both ways, heads, checkpointing, bf16.

Checkpoints come from random-init transformers models saved to tmp_path; nothing is downloaded.
Sizes are tiny (hidden 32, 2 layers, 2 heads) so the whole file runs in seconds on 2 cores.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from longdoc.components.core.config import ModelParams
from longdoc.components.modeling import model as M

VOCAB = 100
PAD, BOS, EOS = 1, 0, 2
TOL = 1e-4


def hf_config(window: int = 8, **kw) -> transformers.LongformerConfig:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        attention_window=window,
        max_position_embeddings=4200,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        sep_token_id=EOS,
    )
    base.update(kw)
    return transformers.LongformerConfig(**base)


def our_config(window: int = 8, **kw) -> M.LongdocConfig:
    params = ModelParams(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        attention_window=window,
        max_position_embeddings=4200,
        attention_backend="torch",
        dropout=0.0,
    )
    return M.make_config(
        params, vocab_size=VOCAB, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, **kw
    )


def batch(n: int, seed: int = 0, pad: int = 5) -> dict[str, torch.Tensor]:
    """Two rows of length n: row 1 ends with `pad` padding tokens (one of them marked global,
    which must be ignored); row 0 has two global tokens, row 1 one."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, n), generator=g)
    ids[:, 0] = BOS
    mask = torch.ones(2, n, dtype=torch.long)
    if pad:
        mask[1, n - pad :] = 0
        ids[1, n - pad :] = PAD
    glob = torch.zeros(2, n, dtype=torch.long)
    glob[:, 0] = 1
    glob[0, n // 2] = 1
    glob[1, n - 1] = 1  # padding when pad > 0: never global
    return {"input_ids": ids, "attention_mask": mask, "global_attention_mask": glob}


def saved_hf(cls, tmp_path, seed: int = 0, **cfg):
    torch.manual_seed(seed)
    model = cls(hf_config(**cfg)).eval()
    model.save_pretrained(tmp_path)
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return (a - b)[mask.bool()].abs().max().item()


# --------------------------------------------------------------------------- interop


@pytest.mark.parametrize("n", [16, 37, 100])
def test_transformers_base_checkpoint_loads_into_ours(tmp_path, n):
    hf = saved_hf(transformers.LongformerModel, tmp_path)
    ours = M.LongformerModel.from_pretrained(tmp_path).eval()
    assert isinstance(ours, M.LongformerModel)
    b = batch(n)
    with torch.no_grad():
        ref, got = hf(**b), ours(**b)
    assert max_diff(ref.last_hidden_state, got.last_hidden_state, b["attention_mask"]) <= TOL
    assert (ref.pooler_output - got.pooler_output).abs().max().item() <= TOL


@pytest.mark.parametrize(
    "n,window", [(16, 8), (37, 8), (100, 16), (512, 32), (1000, 16), (4096, 32)]
)
def test_transformers_mlm_checkpoint_loads_into_ours(tmp_path, n, window):
    hf = saved_hf(transformers.LongformerForMaskedLM, tmp_path, window=window)
    ours, info = M.LongformerForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    ours.eval()
    b = batch(n, seed=n, pad=7)
    with torch.no_grad():
        ref, got = hf(**b).logits, ours(**b).logits
    assert max_diff(ref, got, b["attention_mask"]) <= TOL


def test_without_masks_and_with_inputs_embeds(tmp_path):
    hf = saved_hf(transformers.LongformerModel, tmp_path)
    ours = M.LongformerModel.from_pretrained(tmp_path).eval()
    ids = batch(21, pad=0)["input_ids"]
    emb = hf.embeddings.word_embeddings(ids).detach()
    with torch.no_grad():
        assert (hf(ids)[0] - ours(ids)[0]).abs().max().item() <= TOL
        got = ours(inputs_embeds=emb).last_hidden_state
        assert (hf(inputs_embeds=emb)[0] - got).abs().max().item() <= TOL


def test_our_checkpoint_loads_into_transformers(tmp_path):
    torch.manual_seed(1)
    ours = M.LongformerForMaskedLM(our_config()).eval()
    ours.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "longformer"
    assert cfg["attention_backend"] == "torch" and cfg["attention_pattern"] == "sliding"
    hf, info = transformers.LongformerForMaskedLM.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert not any(info.values()), info
    hf.eval()
    auto = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(auto) is transformers.LongformerForMaskedLM  # "longformer" is not hijacked
    hf_base = transformers.LongformerModel.from_pretrained(tmp_path).eval()
    for n in (16, 37):
        b = batch(n, seed=n)
        with torch.no_grad():
            got = ours(**b)
            assert max_diff(hf(**b).logits, got.logits, b["attention_mask"]) <= TOL
            assert max_diff(auto(**b).logits, got.logits, b["attention_mask"]) <= TOL
            mine = ours.longformer(**b).last_hidden_state
            ref = hf_base(**b).last_hidden_state
            assert max_diff(ref, mine, b["attention_mask"]) <= TOL


@pytest.mark.parametrize(
    "name",
    [
        "LongformerModel",
        "LongformerForMaskedLM",
        "LongformerForSequenceClassification",
        "LongformerForQuestionAnswering",
        "LongformerForMultipleChoice",
    ],
)
def test_parameter_names_and_shapes_identical(name):
    torch.manual_seed(0)
    ref = getattr(transformers, name)(hf_config()).state_dict()
    got = getattr(M, name)(our_config()).state_dict()
    assert {k: tuple(v.shape) for k, v in ref.items()} == {
        k: tuple(v.shape) for k, v in got.items()
    }


def test_mlm_weights_tied_and_extra_config_roundtrips(tmp_path):
    cfg = our_config(attention_dilation=[1, 2], attention_backend="dense")
    model = M.LongformerForMaskedLM(cfg)
    assert model.lm_head.decoder.weight is model.longformer.embeddings.word_embeddings.weight
    assert model.lm_head.decoder.bias is model.lm_head.bias
    model.save_pretrained(tmp_path)
    back = M.LongformerForMaskedLM.from_pretrained(tmp_path)
    assert back.config.attention_dilation == [1, 2]
    assert back.config.attention_backend == "dense"
    assert back.longformer.encoder.layer[0].attention.self.pattern == M.SlidingWindow(4, (1, 2))
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_auto_classes_pick_ours_only_for_our_config(tmp_path):
    torch.manual_seed(0)
    assert type(transformers.AutoModel.from_config(our_config())) is M.LongformerModel
    kinds = {
        transformers.AutoModelForSequenceClassification: M.LongformerForSequenceClassification,
        transformers.AutoModelForQuestionAnswering: M.LongformerForQuestionAnswering,
        transformers.AutoModelForMultipleChoice: M.LongformerForMultipleChoice,
    }
    for auto, cls in kinds.items():
        assert type(auto.from_config(our_config())) is cls
    transformers.LongformerForMaskedLM(hf_config()).save_pretrained(tmp_path)
    cfg = M.LongdocConfig.from_pretrained(tmp_path)
    model = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path, config=cfg)
    assert type(model) is M.LongformerForMaskedLM
    assert type(transformers.AutoModel.from_config(hf_config())) is transformers.LongformerModel


# --------------------------------------------------------------------------- heads


def qa_batch(n: int = 30) -> dict[str, torch.Tensor]:
    """`<s> q </s></s> context </s>` rows with different question lengths, row 1 padded."""
    ids = torch.randint(3, VOCAB, (2, n), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, n, dtype=torch.long)
    ids[:, 0] = BOS
    ids[0, 4:6] = EOS
    ids[0, n - 1] = EOS
    ids[1, 6:8] = EOS
    ids[1, n - 5] = EOS
    ids[1, n - 4 :] = PAD
    mask[1, n - 4 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_heads_default_global_attention_matches_transformers(tmp_path):
    b = qa_batch()
    for name in ("LongformerForSequenceClassification", "LongformerForQuestionAnswering"):
        path = tmp_path / name
        hf = saved_hf(getattr(transformers, name), path)
        ours = getattr(M, name).from_pretrained(path).eval()
        with torch.no_grad():
            ref, got = hf(**b), ours(**b)
        if name.endswith("Classification"):
            assert (ref.logits - got.logits).abs().max().item() <= TOL
        else:
            assert max_diff(ref.start_logits, got.start_logits, b["attention_mask"]) <= TOL
            assert max_diff(ref.end_logits, got.end_logits, b["attention_mask"]) <= TOL
    path = tmp_path / "mc"
    hf = saved_hf(transformers.LongformerForMultipleChoice, path)
    ours = M.LongformerForMultipleChoice.from_pretrained(path).eval()
    mc = {k: v.unsqueeze(0) for k, v in b.items()}  # (1 example, 2 choices, seq)
    with torch.no_grad():
        assert (hf(**mc).logits - ours(**mc).logits).abs().max().item() <= TOL


def test_question_global_mask_needs_a_separator():
    with pytest.raises(ValueError, match="separator"):
        M.question_global_mask(torch.full((1, 8), 5), EOS)


def _train(model, inputs, steps: int = 8) -> list[float]:
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        out = model(**inputs)
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    return losses


def test_sequence_classification_shapes_and_learning():
    torch.manual_seed(0)
    model = M.LongformerForSequenceClassification(our_config(num_labels=3))
    b = batch(23)
    out = model(**b, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3)
    out.loss.backward()
    assert model.longformer.embeddings.word_embeddings.weight.grad is not None
    b.pop("global_attention_mask")  # default: global attention on <s>
    losses = _train(model, {**b, "labels": torch.tensor([0, 2])})
    assert losses[-1] < losses[0]


def test_question_answering_shapes_and_learning():
    torch.manual_seed(0)
    model = M.LongformerForQuestionAnswering(our_config())
    b = qa_batch()
    b.update(start_positions=torch.tensor([9, 12]), end_positions=torch.tensor([11, 15]))
    out = model(**b)
    assert out.start_logits.shape == out.end_logits.shape == (2, 30)
    losses = _train(model, b)
    assert losses[-1] < losses[0]


def test_multiple_choice_shapes_and_learning():
    torch.manual_seed(0)
    model = M.LongformerForMultipleChoice(our_config())
    one = batch(19)
    b = {k: torch.stack([v, v.flip(0)]) for k, v in one.items()}  # (2 examples, 2 choices, 19)
    out = model(**b, labels=torch.tensor([0, 1]))
    assert out.logits.shape == (2, 2)
    losses = _train(model, {**b, "labels": torch.tensor([0, 1])})
    assert losses[-1] < losses[0]


def test_masked_lm_learning_and_tuple_outputs():
    torch.manual_seed(0)
    model = M.LongformerForMaskedLM(our_config())
    b = batch(40)
    labels = torch.full_like(b["input_ids"], -100)
    labels[:, 5:15] = b["input_ids"][:, 5:15]
    losses = _train(model, {**b, "labels": labels})
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        loss, logits, hidden = model(
            **b, labels=labels, return_dict=False, output_hidden_states=True
        )
    assert logits.shape == (2, 40, VOCAB) and len(hidden) == 3
    with pytest.raises(NotImplementedError, match="output_attentions"):
        model(**b, output_attentions=True)


def test_labelled_logits_only_gives_the_same_loss_and_gradients():
    """The pretraining path projects to the vocabulary only at masked positions: same loss,
    same gradients, logits of the labelled positions in row-major order."""
    torch.manual_seed(0)
    model = M.LongformerForMaskedLM(our_config())
    b = batch(40)
    labels = torch.full_like(b["input_ids"], -100)
    labels[0, 3:9] = b["input_ids"][0, 3:9]
    labels[1, 20:23] = b["input_ids"][1, 20:23]
    full = model(**b, labels=labels)
    full.loss.backward()
    want = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    part = model(**b, labels=labels, labelled_logits_only=True)
    part.loss.backward()
    assert part.logits.shape == (9, VOCAB)
    torch.testing.assert_close(part.logits, full.logits[labels != -100])
    torch.testing.assert_close(part.loss, full.loss)
    for k, p in model.named_parameters():
        if k in want:
            torch.testing.assert_close(p.grad, want[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs labels"):
        model(**b, labelled_logits_only=True)


# --------------------------------------------------------------------------- compute paths


def _grads(model, b, labels) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(**b, labels=labels).loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated")
def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = M.LongformerForMaskedLM(our_config()).train()
    b = batch(37)
    labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    plain = _grads(model, b, labels)
    model.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.longformer.encoder.layer)
    ckpt = _grads(model, b, labels)
    assert plain.keys() == ckpt.keys() and len(plain) > 0
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"attention_dilation": [1, 2]},
        {"attention_dilation": [[1, 2], [2, 1]], "attention_window": [8, 16]},
        {"attention_pattern": "block"},
    ],
)
def test_dense_and_torch_backends_agree(extra):
    torch.manual_seed(0)
    model = M.LongformerForMaskedLM(our_config(**extra)).train()
    b = batch(45)
    labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    got = {}
    for backend in ("dense", "torch"):
        for layer in model.longformer.encoder.layer:
            layer.attention.self.backend = backend
        got[backend] = (model(**b).logits.detach(), _grads(model, b, labels))
    mask = b["attention_mask"].bool()
    assert max_diff(got["dense"][0], got["torch"][0], mask) <= TOL
    for k, g in got["dense"][1].items():
        torch.testing.assert_close(got["torch"][1][k], g, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("pattern", ["block", "strided", "fixed", "dense"])
def test_other_patterns_run(pattern):
    torch.manual_seed(0)
    cfg = our_config(attention_pattern=pattern, attention_backend="auto")
    model = M.LongformerForMaskedLM(cfg)
    out = model(**batch(33), labels=batch(33)["input_ids"])
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_dense_pattern_is_full_attention_everywhere(tmp_path):
    """With pattern "dense", a window covering the sequence changes nothing: cross-check of the
    pattern switch against transformers with a window wider than the input."""
    hf = saved_hf(transformers.LongformerModel, tmp_path, window=64)
    cfg = M.LongdocConfig.from_pretrained(tmp_path)
    cfg.attention_pattern = "dense"
    ours = M.LongformerModel.from_pretrained(tmp_path, config=cfg).eval()
    b = batch(24)
    with torch.no_grad():
        ref, got = hf(**b).last_hidden_state, ours(**b).last_hidden_state
    assert max_diff(ref, got, b["attention_mask"]) <= TOL


def test_bf16_autocast_forward_backward():
    torch.manual_seed(0)
    model = M.LongformerForMaskedLM(our_config()).train()
    b = batch(37)
    labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    with torch.no_grad():
        ref = model(**b, labels=labels).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**b, labels=labels)
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()
    assert torch.isfinite(out.loss) and abs(out.loss.item() - ref.item()) < 0.1
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# --------------------------------------------------------------------------- config


def test_make_config_from_params():
    params = ModelParams(attention_window=32, num_hidden_layers=3, dropout=0.05)
    cfg = M.make_config(params, vocab_size=500, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    assert isinstance(cfg, transformers.LongformerConfig)
    assert cfg.attention_window == 32 and cfg.max_position_embeddings == 4098
    assert cfg.hidden_dropout_prob == cfg.attention_probs_dropout_prob == 0.05
    assert cfg.attention_backend == "auto" and cfg.attention_pattern == "sliding"
    assert cfg.sep_token_id == 2 and cfg.vocab_size == 500
    model = M.LongformerModel(cfg)
    assert model.config.attention_window == [32, 32, 32]
    assert model.encoder.layer[2].attention.self.pattern == M.SlidingWindow(16)


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"attention_pattern": "spiral"}, "attention_pattern"),
        ({"attention_dilation": [1, 2, 3]}, "per-head"),
        ({"attention_pattern": "block", "attention_pattern_kwargs": {"stride": 2}}, "block"),
        ({"attention_window": 7}, "even"),
    ],
)
def test_bad_attention_config_is_a_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        our_config(**bad)


@pytest.mark.parametrize("backend", ["torch", "dense"])
def test_classification_inference_computes_only_the_global_rows_of_the_last_layer(
    monkeypatch, backend
):
    torch.manual_seed(0)
    model = M.LongformerForSequenceClassification(
        our_config(num_labels=3, attention_backend=backend)
    ).eval()
    b = batch(37)
    with torch.no_grad():  # hidden states asked for: every layer whole, the reference
        whole = model(**b, output_hidden_states=True).logits
    calls = []
    real = M.attention
    monkeypatch.setattr(M, "attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        pruned = model(**b).logits
    assert len(calls) == model.config.num_hidden_layers - 1  # no local attention in the last
    assert (pruned - whole).abs().max().item() <= 1e-6
    with torch.no_grad():  # <s> not global in one row: nothing to prune, every layer whole
        glob = b["global_attention_mask"].clone()
        glob[1, 0] = 0
        calls.clear()
        model(**{**b, "global_attention_mask": glob})
    assert len(calls) == model.config.num_hidden_layers
    model.train()
    calls.clear()
    model(**b)
    assert len(calls) == model.config.num_hidden_layers


def test_factored_global_attention_matches_projecting_every_key():
    """With few global tokens the global rows skip the `key_global`/`value_global` projections
    of every position (`_global_attention_factored`: the same sums reordered). In float64, with
    padding, two global tokens and attention-probability dropout in training mode (the same
    masks from the same seed), outputs and every parameter's gradient equal the plain path's."""
    config = our_config(attention_probs_dropout_prob=0.2)
    model = M.LongformerModel(config).double().train()
    inputs = batch(40)

    def run(factored: bool):
        for layer in model.encoder.layer:
            layer.attention.self._factored_global_pays = lambda *a, flag=factored: flag
        model.zero_grad()
        torch.manual_seed(3)
        out = model(**inputs).last_hidden_state
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        (out * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.detach(), grads

    plain, plain_grads = run(False)
    factored, factored_grads = run(True)
    assert torch.allclose(factored, plain, rtol=0, atol=1e-12)
    assert plain_grads.keys() == factored_grads.keys()
    assert {"key_global.weight", "value_global.bias"} <= {n.split("self.")[-1] for n in plain_grads}
    for name, grad in plain_grads.items():
        assert torch.allclose(factored_grads[name], grad, rtol=0, atol=1e-11), name
    layer = model.encoder.layer[0].attention.self
    del layer._factored_global_pays  # back to the class's decision: 2 heads x 2 globals pay
    assert layer._factored_global_pays(torch.zeros(1, 2, 2, 16), torch.zeros(1, 40, 32))
    assert not layer._factored_global_pays(torch.zeros(1, 9, 2, 16), torch.zeros(1, 40, 32))
