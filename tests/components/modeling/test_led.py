"""The long encoder–decoder against transformers' LED: interop both ways, the same logits,
the same generated ids (greedy, beams, n-gram blocking, length penalty), the KV cache, gradient
checkpointing and bf16.

Checkpoints are random-init transformers models saved to tmp_path (d_model 32, 2+2 layers, 2
heads); nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from longdoc.components.modeling import led as L

VOCAB = 120
PAD, BOS, EOS = 1, 0, 2
TOL = 1e-4


def config_fields(window=(8, 16), **kw) -> dict:
    fields = dict(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_encoder_position_embeddings=1024,
        max_decoder_position_embeddings=64,
        attention_window=list(window),
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=EOS,
        dropout=0.0,
        init_std=0.3,  # wide enough that generations depend on the input
    )
    fields.update(kw)
    return fields


def hf_model(tmp_path, seed: int = 0, **kw) -> transformers.LEDForConditionalGeneration:
    torch.manual_seed(seed)
    model = transformers.LEDForConditionalGeneration(transformers.LEDConfig(**config_fields(**kw)))
    model.eval().save_pretrained(tmp_path)
    return model


def ours_from(path) -> L.LEDForConditionalGeneration:
    model, info = L.LEDForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    return model.eval()


def batch(lengths: list[int], seed: int = 0, tgt: int = 9) -> dict[str, torch.Tensor]:
    """Rows of different lengths (right padding), `<s> ... </s>`; global attention on `<s>`,
    one more global token in row 0 and a global flag on a padding token of the last row
    (which must be ignored)."""
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    ids = torch.full((len(lengths), n), PAD)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for i, length in enumerate(lengths):
        ids[i, :length] = torch.randint(3, VOCAB, (length,), generator=g)
        ids[i, 0], ids[i, length - 1] = BOS, EOS
        mask[i, :length] = 1
    glob = torch.zeros_like(mask)
    glob[:, 0] = 1
    glob[0, lengths[0] // 2] = 1
    glob[-1, n - 1] = 1
    dec = torch.randint(3, VOCAB, (len(lengths), tgt), generator=g)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "global_attention_mask": glob,
        "decoder_input_ids": dec,
    }


def masked_max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return (a - b)[mask.bool()].abs().max().item()


# --------------------------------------------------------------------------- interop


@pytest.mark.parametrize(
    "lengths,window", [([16, 11], (8, 8)), ([37, 30, 5], (8, 16)), ([300, 257], (32, 64))]
)
def test_transformers_checkpoint_loads_into_ours(tmp_path, lengths, window):
    hf = hf_model(tmp_path, window=window)
    ours = ours_from(tmp_path)
    assert isinstance(ours.config, L.LongdocLEDConfig)
    b = batch(lengths, seed=len(lengths))
    with torch.no_grad():
        ref, got = hf(**b, output_hidden_states=True), ours(**b, output_hidden_states=True)
    assert (ref.logits - got.logits).abs().max().item() <= TOL
    assert len(got.encoder_hidden_states) == len(ref.encoder_hidden_states) == 3
    mask = b["attention_mask"]
    for r, o in zip(ref.encoder_hidden_states, got.encoder_hidden_states, strict=True):
        assert r.shape == o.shape  # no padding to a window multiple is visible
        assert masked_max_diff(r, o, mask) <= TOL


def test_our_checkpoint_loads_into_transformers(tmp_path):
    torch.manual_seed(1)
    cfg = L.LongdocLEDConfig(**config_fields(), attention_backend="torch")
    ours = L.LEDForConditionalGeneration(cfg).eval()
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "led" and saved["attention_backend"] == "torch"
    hf, info = transformers.LEDForConditionalGeneration.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert not any(info.values()), info
    auto = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert type(auto) is transformers.LEDForConditionalGeneration  # "led" is not hijacked
    back = L.LEDForConditionalGeneration.from_pretrained(tmp_path)
    assert back.config.attention_backend == "torch"
    b = batch([23, 17])
    labels = b["decoder_input_ids"].clone()
    labels[1, -3:] = -100
    with torch.no_grad():
        ref, got = hf.eval()(**b, labels=labels), ours(**b, labels=labels)
    assert (ref.logits - got.logits).abs().max().item() <= TOL
    assert abs(ref.loss.item() - got.loss.item()) <= TOL
    assert (ref.encoder_last_hidden_state - got.encoder_last_hidden_state)[
        b["attention_mask"].bool()
    ].abs().max().item() <= TOL


@pytest.mark.parametrize("name", ["LEDModel", "LEDForConditionalGeneration"])
def test_parameter_names_and_shapes_identical(name):
    ref = getattr(transformers, name)(transformers.LEDConfig(**config_fields())).state_dict()
    got = getattr(L, name)(L.LongdocLEDConfig(**config_fields())).state_dict()
    assert {k: tuple(v.shape) for k, v in ref.items()} == {
        k: tuple(v.shape) for k, v in got.items()
    }


def test_weights_tied_auto_classes_and_tuple_outputs(tmp_path):
    cfg = L.LongdocLEDConfig(**config_fields())
    model = L.LEDForConditionalGeneration(cfg).eval()
    shared = model.led.shared.weight
    assert model.lm_head.weight is shared
    assert model.led.encoder.embed_tokens.weight is shared
    assert model.led.decoder.embed_tokens.weight is shared
    assert (
        type(transformers.AutoModelForSeq2SeqLM.from_config(cfg)) is L.LEDForConditionalGeneration
    )
    assert type(transformers.AutoModel.from_config(cfg)) is L.LEDModel
    hf_cfg = transformers.LEDConfig(**config_fields())
    assert type(transformers.AutoModel.from_config(hf_cfg)) is transformers.LEDModel
    b = batch([12, 9])
    labels = b.pop("decoder_input_ids")
    with torch.no_grad():
        as_dict = model(**b, labels=labels)
        as_tuple = model(**b, labels=labels, return_dict=False)
    assert torch.equal(as_tuple[0], as_dict.loss) and torch.equal(as_tuple[1], as_dict.logits)
    assert torch.equal(as_tuple[-1], as_dict.encoder_last_hidden_state)


def test_clear_errors():
    model = L.LEDForConditionalGeneration(L.LongdocLEDConfig(**config_fields())).eval()
    too_long = torch.randint(3, VOCAB, (1, 1025))
    with pytest.raises(ValueError, match="past the model's 1024 learned positions"):
        model(input_ids=too_long, decoder_input_ids=too_long[:, :4])
    with pytest.raises(NotImplementedError, match="output_attentions"):
        model(**batch([8]), output_attentions=True)
    with pytest.raises(ValueError, match="attention_window"):
        L.LEDModel(L.LongdocLEDConfig(**config_fields(window=(8, 7))))


# --------------------------------------------------------------------------- generation


GENERATION_SETTINGS = [
    {},
    {"num_beams": 4},
    {"num_beams": 4, "no_repeat_ngram_size": 2, "length_penalty": 2.0},
]


def test_generate_matches_transformers(tmp_path):
    hf = hf_model(tmp_path, window=(8, 16))
    ours = ours_from(tmp_path)
    b = batch([45, 30, 13], seed=5)
    b.pop("decoder_input_ids")
    seen = []
    encoder_forward = ours.led.encoder.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("global_attention_mask"))
        return encoder_forward(*args, **kwargs)

    ours.led.encoder.forward = spy
    outputs = []
    for settings in GENERATION_SETTINGS:
        ref = hf.generate(**b, max_new_tokens=12, **settings)
        got = ours.generate(**b, max_new_tokens=12, **settings)
        assert got.shape == ref.shape == (3, 13), settings
        assert torch.equal(got, ref), settings
        outputs.append(got)
    assert len(seen) == 3 and all(torch.equal(m, b["global_attention_mask"]) for m in seen)
    assert not torch.equal(outputs[0], outputs[1])  # beams explored something else
    rows = outputs[2][:, 1:].tolist()  # no bigram repeats with no_repeat_ngram_size=2
    assert all(len(set(zip(r, r[1:], strict=False))) == len(r) - 1 for r in rows)
    without_global = {k: v for k, v in b.items() if k != "global_attention_mask"}
    assert not torch.equal(ours.generate(**without_global, max_new_tokens=12), outputs[0])


def test_cached_steps_equal_a_full_decoder_pass(tmp_path):
    hf_model(tmp_path)
    model = ours_from(tmp_path)
    b = batch([20, 14], tgt=7)
    dec = b.pop("decoder_input_ids")
    with torch.no_grad():
        full = model(**b, decoder_input_ids=dec, use_cache=False).logits
        out = model(**b, decoder_input_ids=dec[:, :3], use_cache=True)
        steps = [out.logits]
        enc = (out.encoder_last_hidden_state,)
        for t in range(3, dec.shape[1]):
            out = model(
                attention_mask=b["attention_mask"],
                encoder_outputs=enc,
                decoder_input_ids=dec[:, t : t + 1],
                cache=out.cache,
            )
            steps.append(out.logits)
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= TOL


def test_decoder_padding_mask_matches_transformers(tmp_path):
    hf = hf_model(tmp_path)
    ours = ours_from(tmp_path)
    b = batch([19, 25], tgt=8)
    dec_mask = torch.ones_like(b["decoder_input_ids"])
    dec_mask[0, -3:] = 0
    with torch.no_grad():
        ref = hf(**b, decoder_attention_mask=dec_mask).logits
        got = ours(**b, decoder_attention_mask=dec_mask).logits
    assert masked_max_diff(ref, got, dec_mask) <= TOL


# --------------------------------------------------------------------------- training


def _grads(model, b, labels) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(**b, labels=labels).loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated")
def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    cfg = L.LongdocLEDConfig(**config_fields(init_std=0.02), attention_backend="torch")
    model = L.LEDForConditionalGeneration(cfg).train()
    b = batch([37, 29])
    labels = b.pop("decoder_input_ids")
    plain = _grads(model, b, labels)
    model.gradient_checkpointing_enable()
    layers = [*model.led.encoder.layers, *model.led.decoder.layers]
    assert all(layer.gradient_checkpointing for layer in layers)
    ckpt = _grads(model, b, labels)
    assert plain.keys() == ckpt.keys() and len(plain) > 0
    assert any("query_global" in k for k in plain)  # the global projections learn too
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)


def test_bf16_autocast_forward_backward():
    torch.manual_seed(0)
    cfg = L.LongdocLEDConfig(**config_fields(init_std=0.02), attention_backend="torch")
    model = L.LEDForConditionalGeneration(cfg).train()
    b = batch([37, 29])
    labels = b.pop("decoder_input_ids")
    with torch.no_grad():
        ref = model(**b, labels=labels).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**b, labels=labels)
    out.loss.backward()
    assert torch.isfinite(out.loss) and abs(out.loss.item() - ref.item()) < 0.1
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_shared_cross_attention_cache_follows_any_reorder(tmp_path):
    """Identical encoder rows share one cross-attention entry; a reorder that mixes documents
    (never done by beam search, possible through the Cache API) still reads the right rows."""
    hf_model(tmp_path)
    model = ours_from(tmp_path)
    b = batch([20, 14, 17], tgt=4)
    pick = torch.tensor([0, 0, 1, 2])  # rows 0 and 1 are the same document
    enc = {k: b[k][pick] for k in ("input_ids", "attention_mask", "global_attention_mask")}
    dec = b["decoder_input_ids"][pick]
    dec[1] = dec[1].flip(0)  # the two copies decode different prefixes
    with torch.no_grad():
        out = model(**enc, decoder_input_ids=dec[:, :3], use_cache=True)
        entry = out.cache.cross_attention_cache.layers[0]
        assert isinstance(entry, L.SharedCrossAttentionLayer)
        assert entry.keys.shape[0] == 3 and entry.rows.tolist() == [0, 0, 1, 2]
        order = torch.tensor([2, 0, 3, 1])
        out.cache.reorder_cache(order)
        step = model(
            attention_mask=enc["attention_mask"][order],
            encoder_outputs=(out.encoder_last_hidden_state[order],),
            decoder_input_ids=dec[order, 3:4],
            cache=out.cache,
        ).logits
        full = model(
            **{k: v[order] for k, v in enc.items()}, decoder_input_ids=dec[order], use_cache=False
        ).logits
    assert (step[:, 0] - full[:, 3]).abs().max().item() <= TOL
