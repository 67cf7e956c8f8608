"""An LED warm-started from one of our long encoders: the pipeline's way to a summarizer.

The pipeline pretrains an encoder-only long model (Longformer classes, MLM); summarization needs
an encoder–decoder. Rather than a second pretraining run, the LED is built the way Rothe et al.
2020 ("Leveraging Pre-trained Checkpoints for Sequence Generation Tasks") warm-start BERT2RND:
the encoder is the pretrained long encoder, weight for weight, and the token embeddings (shared
by encoder, decoder and LM head, as in LED) are the pretrained ones. The decoder is warm-started
too, as in their BERT2BERT (their best warm start for summarization, well ahead of a random
decoder): each decoder layer's self-attention (query/key/value/output), feed-forward and their
LayerNorms are the same-numbered encoder layer's, its positions are the encoder's first ones and
its embedding LayerNorm the encoder's. Unlike their BERT2BERT, the cross-attention (and its
LayerNorm) starts as the same layer's self-attention too (see `_CROSS_FROM_ENCODER`).
`decoder_init="random"` gives their BERT2RND instead. The two encoders are the same computation:
both are post-LayerNorm
transformers with the same Longformer attention module (`modeling.model`), so the only
differences to bridge are names and the embeddings:

- Longformer adds a token-type row (always type 0 here) and reads position `i + pad + 1`
  (RoBERTa's offset); LED has no token types and reads position `i`. LED row `i` is therefore
  Longformer row `i + pad + 1` plus the type-0 row, and LED has `max_position_embeddings -
  pad - 1` encoder positions.
- The LayerNorms keep their weights; their epsilon is LED's (1e-5 rather than 1e-12), a
  difference far below the model's own noise.

A base that already is an LED (`model_type` "led", e.g. from `longdoc convert` of a BART) is
loaded as it is.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig

from longdoc.components.modeling.led import LEDForConditionalGeneration, LongdocLEDConfig
from longdoc.components.modeling.model import LongformerModel, quiet_loading

#: Decoder positions (summary tokens) of a warm-started LED.
DEFAULT_TARGET_POSITIONS = 512

_LAYER_NAMES = {  # Longformer layer parameter -> LED encoder layer parameter
    "attention.self.": "self_attn.longformer_self_attn.",
    "attention.output.dense.": "self_attn.output.",
    "attention.output.LayerNorm.": "self_attn_layer_norm.",
    "intermediate.dense.": "fc1.",
    "output.dense.": "fc2.",
    "output.LayerNorm.": "final_layer_norm.",
}


def led_config_from_encoder(config, target_positions: int) -> LongdocLEDConfig:
    """An LED config sized like the encoder `config` (decoder: as many layers as the encoder)."""
    offset = config.pad_token_id + 1
    return LongdocLEDConfig(
        vocab_size=config.vocab_size,
        d_model=config.hidden_size,
        encoder_layers=config.num_hidden_layers,
        decoder_layers=config.num_hidden_layers,
        encoder_attention_heads=config.num_attention_heads,
        decoder_attention_heads=config.num_attention_heads,
        encoder_ffn_dim=config.intermediate_size,
        decoder_ffn_dim=config.intermediate_size,
        activation_function=config.hidden_act,
        dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob,
        init_std=config.initializer_range,
        max_encoder_position_embeddings=config.max_position_embeddings - offset,
        max_decoder_position_embeddings=target_positions,
        attention_window=list(config.attention_window)
        if isinstance(config.attention_window, list)
        else config.attention_window,
        attention_backend=config.attention_backend,
        attention_pattern=config.attention_pattern,
        attention_dilation=config.attention_dilation,
        attention_pattern_kwargs=config.attention_pattern_kwargs,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        decoder_start_token_id=config.eos_token_id,  # BART's convention: </s> starts decoding
        architectures=["LEDForConditionalGeneration"],
    )


def _encoder_state(encoder: LongformerModel) -> dict[str, torch.Tensor]:
    """The Longformer's weights under the LED encoder's names (see the module docstring)."""
    src = encoder.state_dict()
    offset = encoder.config.pad_token_id + 1
    positions = src["embeddings.position_embeddings.weight"][offset:]
    state = {
        "led.shared.weight": src["embeddings.word_embeddings.weight"],
        "led.encoder.embed_positions.weight": positions
        + src["embeddings.token_type_embeddings.weight"][0],
        "led.encoder.layernorm_embedding.weight": src["embeddings.LayerNorm.weight"],
        "led.encoder.layernorm_embedding.bias": src["embeddings.LayerNorm.bias"],
    }
    for name, tensor in src.items():
        if not name.startswith("encoder.layer."):
            continue
        _, _, index, rest = name.split(".", 3)
        for old, new in _LAYER_NAMES.items():
            if rest.startswith(old):
                state[f"led.encoder.layers.{index}.{new}{rest[len(old) :]}"] = tensor
                break
    return state


#: LED encoder layer parameter -> LED decoder layer parameter it warm-starts (BERT2BERT).
_DECODER_FROM_ENCODER = {
    "self_attn.longformer_self_attn.query.": "self_attn.q_proj.",
    "self_attn.longformer_self_attn.key.": "self_attn.k_proj.",
    "self_attn.longformer_self_attn.value.": "self_attn.v_proj.",
    "self_attn.output.": "self_attn.out_proj.",
    "self_attn_layer_norm.": "self_attn_layer_norm.",
    "fc1.": "fc1.",
    "fc2.": "fc2.",
    "final_layer_norm.": "final_layer_norm.",
}
#: ... and its cross-attention: a new one starts with near-zero value/output projections, so
#: its output and the gradient into its query/key start near zero (a saddle the decoder leaves
#: slowly, learning the summaries' template without the article first); the layer's trained
#: attention starts it as a working attention over the encoder states.
_CROSS_FROM_ENCODER = {
    "self_attn.longformer_self_attn.query.": "encoder_attn.q_proj.",
    "self_attn.longformer_self_attn.key.": "encoder_attn.k_proj.",
    "self_attn.longformer_self_attn.value.": "encoder_attn.v_proj.",
    "self_attn.output.": "encoder_attn.out_proj.",
    "self_attn_layer_norm.": "encoder_attn_layer_norm.",
}
DECODER_INITS = ("encoder", "random")


def _decoder_state(encoder_state: dict[str, torch.Tensor], target_positions: int) -> dict:
    """The decoder's weights from the (LED-named) encoder weights: every decoder layer (its
    self- and cross-attention both from the layer's self-attention), the first
    `target_positions` positions and the embedding LayerNorm. Cloned, so encoder and decoder
    (and the two attentions) train apart."""
    state = {
        f"led.decoder.layernorm_embedding.{t}": encoder_state[
            f"led.encoder.layernorm_embedding.{t}"
        ]
        for t in ("weight", "bias")
    }
    positions = encoder_state["led.encoder.embed_positions.weight"]
    if len(positions) >= target_positions:  # else the decoder's positions stay new
        state["led.decoder.embed_positions.weight"] = positions[:target_positions]
    for name, tensor in encoder_state.items():
        if not name.startswith("led.encoder.layers."):
            continue
        index, rest = name.split(".", 4)[3:]
        for mapping in (_DECODER_FROM_ENCODER, _CROSS_FROM_ENCODER):
            for old, new in mapping.items():
                if rest.startswith(old):
                    state[f"led.decoder.layers.{index}.{new}{rest[len(old) :]}"] = tensor
    return {k: v.clone() for k, v in state.items()}


def led_from_encoder(
    base: Path | str,
    target_positions: int = DEFAULT_TARGET_POSITIONS,
    seed: int = 0,
    decoder_init: str = "encoder",
) -> LEDForConditionalGeneration:
    """The LED for fine-tuning from checkpoint `base`: loaded if it is an LED, else warm-started
    from the long encoder there; `decoder_init` "encoder" warm-starts the decoder from it too
    (BERT2BERT), "random" draws it new (BERT2RND); new weights are drawn with `seed`."""
    if decoder_init not in DECODER_INITS:
        raise ValueError(f"decoder_init must be one of {DECODER_INITS}, got {decoder_init!r}")
    if AutoConfig.from_pretrained(base).model_type == "led":
        with quiet_loading():
            return LEDForConditionalGeneration.from_pretrained(base)
    with quiet_loading():  # the MLM head is not part of the encoder: dropped, as expected
        encoder = LongformerModel.from_pretrained(base, add_pooling_layer=False)
    torch.manual_seed(seed)
    led = LEDForConditionalGeneration(led_config_from_encoder(encoder.config, target_positions))
    state = _encoder_state(encoder)
    if decoder_init == "encoder":
        state.update(_decoder_state(state, target_positions))
    missing, unexpected = led.load_state_dict(state, strict=False)
    if unexpected or any(name.startswith("led.encoder.layers") for name in missing):
        raise ValueError(f"warm start: encoder weights left unmapped: {unexpected or missing}")
    led.tie_weights()
    return led
