"""BART -> LED conversion: a random-init BART becomes an LED whose encoder computes the same
states and which generates the same ids on inputs within one side of the window, with the
encoder's position table tiled to `max_positions` (BART's 2-row offset folded away)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from longdoc.components.core.config import ConvertParams
from longdoc.components.core.io import InputError
from longdoc.components.data import tokenize as tok
from longdoc.components.modeling.convert import convert
from longdoc.components.modeling.led import LEDForConditionalGeneration

TEXTS = ["a long document becomes a short summary of what it says"] * 20
BASE_POSITIONS = 64


def save_bart(out, **extra) -> None:
    tokenizer = tok.train_tokenizer(iter(TEXTS), vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    config = transformers.BartConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=BASE_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
        init_std=0.3,  # wide enough that generations depend on the input
        **extra,
    )
    transformers.BartForConditionalGeneration(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)


@pytest.fixture(scope="module")
def bart_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bart")
    save_bart(out)
    return out


def inputs(lengths: list[int], pad: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    ids = torch.full((len(lengths), n), pad)
    for i, length in enumerate(lengths):
        ids[i, :length] = torch.randint(5, 300, (length,), generator=g)
        ids[i, 0], ids[i, length - 1] = 0, 2
    return {"input_ids": ids, "attention_mask": (ids != pad).long()}


def test_converted_led_matches_bart_within_window(bart_dir, tmp_path):
    out = tmp_path / "led"
    params = ConvertParams(
        base=bart_dir, out=out, max_positions=300, attention_window=128, attention_backend="torch"
    )
    summary = convert(params)
    assert summary["family"] == "encoder-decoder"
    assert summary["architecture"] == "LEDForConditionalGeneration"
    assert summary["max_positions"] == 300 and summary["base_positions"] == BASE_POSITIONS
    assert json.loads((out / "manifest.json").read_text())["stage"] == "convert"
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 300
    assert json.loads((out / "config.json").read_text())["model_type"] == "led"

    bart = transformers.BartForConditionalGeneration.from_pretrained(bart_dir).eval()
    led = LEDForConditionalGeneration.from_pretrained(out).eval()
    assert led.config.attention_window == [128, 128]
    assert led.config.max_encoder_position_embeddings == 300
    assert led.config.max_decoder_position_embeddings == BASE_POSITIONS

    # positions: LED row i is BART row i + 2; the encoder's learned rows tiled up to 300
    old = bart.model.encoder.embed_positions.weight
    new = led.led.encoder.embed_positions.weight
    assert new.shape[0] == 300
    assert torch.equal(new[:64], old[2:66]) and torch.equal(new[64:128], old[2:66])
    assert torch.equal(new[256:300], old[2:46])
    dec_old, dec_new = bart.model.decoder.embed_positions.weight, led.led.decoder.embed_positions
    assert torch.equal(dec_new.weight, dec_old[2:])
    # the global projections start as copies of the local ones; out_proj became output
    bart_attn = bart.model.encoder.layers[1].self_attn
    attn = led.led.encoder.layers[1].self_attn
    assert torch.equal(attn.longformer_self_attn.query_global.weight, bart_attn.q_proj.weight)
    assert torch.equal(attn.longformer_self_attn.value.bias, bart_attn.v_proj.bias)
    assert torch.equal(attn.output.weight, bart_attn.out_proj.weight)

    b = inputs([60, 41, 17], pad=bart.config.pad_token_id)
    glob = torch.zeros_like(b["attention_mask"])
    glob[:, 0] = 1
    keep = b["attention_mask"].bool()
    with torch.no_grad():
        ref = bart.model.encoder(**b).last_hidden_state
        got = led.led.encoder(**b).last_hidden_state
        got_g = led.led.encoder(**b, global_attention_mask=glob).last_hidden_state
    assert (ref - got)[keep].abs().max().item() <= 1e-4
    assert (ref - got_g)[keep].abs().max().item() <= 1e-4
    for settings in ({}, {"num_beams": 4}):
        ref_ids = bart.generate(**b, max_new_tokens=20, **settings)
        got_ids = led.generate(**b, global_attention_mask=glob, max_new_tokens=20, **settings)
        assert ref_ids.shape[1] > 5 and torch.equal(got_ids, ref_ids), settings

    # and the LED reads past BART's 64 positions
    long_ids = inputs([250], pad=bart.config.pad_token_id)
    assert led(**long_ids, decoder_input_ids=long_ids["input_ids"][:, :5]).logits.shape[1] == 5


def test_led_default_positions_and_bad_bases(bart_dir, tmp_path):
    summary = convert(ConvertParams(base=bart_dir, out=tmp_path / "a", attention_window=16))
    assert summary["max_positions"] == 16384
    with pytest.raises(InputError, match="max_positions 32 < the base's 64"):
        convert(ConvertParams(base=bart_dir, out=tmp_path / "b", max_positions=32))
    scaled = tmp_path / "scaled"
    save_bart(scaled, scale_embedding=True)
    with pytest.raises(InputError, match="scale_embedding"):
        convert(ConvertParams(base=scaled, out=tmp_path / "c"))
    with pytest.raises(InputError, match="3 entries for the base's 2 layers"):
        convert(ConvertParams(base=bart_dir, out=tmp_path / "d", attention_window=[8, 8, 8]))
