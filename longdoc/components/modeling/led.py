"""The long encoder–decoder: transformers' LED classes, re-implemented on our attention kernels.

LED (Beltagy et al. 2020, section 6) is BART with Longformer attention in the encoder: a sliding
window per layer plus global tokens with their own projections, encoder positions extended to
16K, and the decoder unchanged (full causal self-attention, full cross-attention). Why a
re-implementation rather than transformers' `LEDForConditionalGeneration`: its encoder pads
every input to a multiple of the window and computes the band with chunk/stride gymnastics
(the same code as its Longformer), and its decoder computes attention with explicit
`(tgt x src)` score matrices. Ours runs

- the encoder self-attention through `kernels.attention`, reusing the Longformer layer of
  `modeling.model` (`LongformerSelfAttention`: local rows from the kernel, global rows recomputed
  densely with `query_global/key_global/value_global`, padding handled inside, any length: no
  padding to a window multiple is visible to the caller);
- the decoder's causal self-attention and cross-attention through PyTorch's
  `scaled_dot_product_attention`, with transformers' `EncoderDecoderCache` for generation (the
  cross-attention keys/values are projected once per generation, the self-attention ones grow
  by one position per step), so transformers' `GenerationMixin` drives greedy and beam search
  exactly as it drives transformers' LED.

Everything else mirrors transformers: module and parameter names, shapes, the config
(`LEDConfig` fields and meaning), call signatures, output classes, tied embeddings and
`final_logits_bias`. A checkpoint saved by transformers' `LEDForConditionalGeneration` loads
into ours and gives the same logits; ours loads into theirs.

Configuration: `LongdocLEDConfig` is `LEDConfig` plus the encoder attention switches of
`LongdocConfig` (`attention_backend`, `attention_pattern`, `attention_dilation`,
`attention_pattern_kwargs`; see `modeling.model`). Like `LongdocConfig` it is written to
`config.json` as `"model_type": "led"`, so a checkpoint we save is a plain transformers LED
checkpoint; our classes are registered with the Auto classes under our config class only, so
importing this module never swaps the implementation behind transformers' own "led" type.

Global attention is the caller's to place, as in transformers (`global_attention_mask`, 1 =
global). For summarization put it on the first token (`<s>`): without it every token sees only
its window and the decoder's view of the document degrades. `generate(...,
global_attention_mask=...)` hands the mask to the encoder.

Differences from transformers, all deliberate:
- `output_attentions=True` raises (neither the kernels nor SDPA materialise probabilities);
- a one-token decoder step honours `decoder_attention_mask` (transformers ignores the mask when
  the query is a single token);
- layerdrop (`encoder_layerdrop` / `decoder_layerdrop`) is honoured in training only, as there.
"""

from __future__ import annotations

from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from torch.nn import CrossEntropyLoss
from torch.nn.functional import scaled_dot_product_attention
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, LEDConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, EncoderDecoderCache
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.models.led.modeling_led import (
    LEDEncoderBaseModelOutput,
    LEDSeq2SeqLMOutput,
    LEDSeq2SeqModelOutput,
    shift_tokens_right,
)
from transformers.utils.deprecation import deprecate_kwarg

from longdoc.components.modeling.model import (
    AttentionSwitches,
    GlobalIndex,
    LongformerSelfAttention,
    index_global_tokens,
    layer_pattern,
    layer_window,
    refuse_attention_outputs,
)

__all__ = [
    "LongdocLEDConfig",
    "LEDPreTrainedModel",
    "LEDEncoder",
    "LEDDecoder",
    "LEDModel",
    "LEDForConditionalGeneration",
    "shift_tokens_right",
]


# --------------------------------------------------------------------------- configuration


@strict
class LongdocLEDConfig(AttentionSwitches, LEDConfig):
    """`LEDConfig` plus the encoder's attention switches (see `modeling.model`); written to
    config.json as "led", and an "led" config.json reads back into this class."""

    model_type = "longdoc_led"
    hf_model_type = LEDConfig.model_type


def _check_encoder_windows(config: LEDConfig) -> None:
    """As transformers' `LEDEncoder`: one window per layer (an int is spread), each valid."""
    if isinstance(config.attention_window, int):
        layer_window(config, 0)
        config.attention_window = [config.attention_window] * config.encoder_layers
    for i in range(config.encoder_layers):  # fail at construction, not at the first forward
        layer_pattern(config, i)


# --------------------------------------------------------------------------- masks


def _encoder_masks(
    attention_mask: torch.Tensor | None,
    global_attention_mask: torch.Tensor | None,
    shape: tuple[int, int],
    device: torch.device,
) -> dict[str, Any]:
    """The keyword arguments of every encoder layer's `LongformerSelfAttention`: padding and
    global masks in the kernel's form. Padding is never global (transformers multiplies the
    two masks)."""
    valid = (
        attention_mask.to(device) != 0
        if attention_mask is not None
        else torch.ones(shape, dtype=torch.bool, device=device)
    )
    global_mask: torch.Tensor | None = None
    global_index: GlobalIndex | None = None
    if global_attention_mask is not None:
        global_mask = (global_attention_mask.to(device) != 0) & valid
        global_index = index_global_tokens(global_mask)
    return {
        "key_padding_mask": None if bool(valid.all()) else ~valid,
        "global_mask": global_mask,
        "global_index": global_index,
        # filled by the first layer's fused attention with its mask, which the others reuse
        "mask_cache": {},
    }


def _self_attention_mask(
    decoder_attention_mask: torch.Tensor | None, batch: int, q_len: int, past: int, device
) -> tuple[torch.Tensor | None, bool]:
    """The decoder self-attention mask for SDPA: `(mask, is_causal)`.

    Query i sits at absolute position `past + i` and sees keys `j <= past + i` that are not
    padding. Without padding and without a cache SDPA's own causal path is used; a single new
    token without padding needs no mask at all. A query whose every key is padding (left
    padding) is let see itself, so its (ignored) output stays finite.
    """
    kv_len = past + q_len
    if decoder_attention_mask is None or bool((decoder_attention_mask != 0).all()):
        if past == 0 and q_len > 1:
            return None, True
        if q_len == 1:
            return None, False
        key_valid = None
    else:
        if decoder_attention_mask.shape[-1] != kv_len:
            raise ValueError(
                f"decoder_attention_mask covers {decoder_attention_mask.shape[-1]} positions; with "
                f"{past} cached and {q_len} new decoder tokens it must cover {kv_len}"
            )
        key_valid = decoder_attention_mask.to(device) != 0
    q_pos = torch.arange(past, kv_len, device=device)
    allowed = torch.arange(kv_len, device=device)[None, :] <= q_pos[:, None]  # (q, kv)
    allowed = allowed.expand(batch, q_len, kv_len)
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, :]
        self_pos = q_pos[None, :, None] == torch.arange(kv_len, device=device)
        allowed = allowed | (~allowed.any(-1, keepdim=True) & self_pos)
    return allowed[:, None], False


def _cross_attention_mask(encoder_attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """`(batch, 1, 1, src)` bool, True = attend; None when nothing is padding."""
    if encoder_attention_mask is None or bool((encoder_attention_mask != 0).all()):
        return None
    return (encoder_attention_mask != 0)[:, None, None, :]


# --------------------------------------------------------------------------- modules


class LEDLearnedPositionalEmbedding(nn.Embedding):
    """Learned positions 0..n-1 (LED has no offset: BART's 2-row offset is folded away when
    converting, see `modeling.convert`)."""

    def forward(self, input_ids_shape: torch.Size, cache_length: int = 0) -> torch.Tensor:
        seq_len = input_ids_shape[1]
        end = cache_length + seq_len
        if end > self.num_embeddings:
            raise ValueError(
                f"position {end - 1} is past the model's {self.num_embeddings} learned positions "
                f"(max_encoder/decoder_position_embeddings); shorten the input"
            )
        positions = torch.arange(cache_length, end, dtype=torch.long, device=self.weight.device)
        return super().forward(positions)


class LEDEncoderAttention(nn.Module):
    """Longformer attention (our kernel-backed layer) and LED's output projection."""

    def __init__(self, config: LEDConfig, layer_id: int):
        super().__init__()
        self.longformer_self_attn = LongformerSelfAttention(config, layer_id)
        self.output = nn.Linear(config.d_model, config.d_model)

    def forward(self, hidden_states: torch.Tensor, **masks: Any) -> torch.Tensor:
        return self.output(self.longformer_self_attn(hidden_states, **masks))


class LEDEncoderLayer(GradientCheckpointingLayer):
    """Post-LN block: attention, residual, LayerNorm; feed-forward, residual, LayerNorm."""

    def __init__(self, config: LEDConfig, layer_id: int):
        super().__init__()
        self.embed_dim = config.d_model
        self.self_attn = LEDEncoderAttention(config, layer_id)
        self.self_attn_layer_norm = nn.LayerNorm(self.embed_dim)
        self.dropout = config.dropout
        self.activation_fn = ACT2FN[config.activation_function]
        self.activation_dropout = config.activation_dropout
        self.fc1 = nn.Linear(self.embed_dim, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, self.embed_dim)
        self.final_layer_norm = nn.LayerNorm(self.embed_dim)

    def forward(self, hidden_states: torch.Tensor, **masks: Any) -> torch.Tensor:
        drop = nn.functional.dropout
        attn = self.self_attn(hidden_states, **masks)
        hidden_states = self.self_attn_layer_norm(
            hidden_states + drop(attn, p=self.dropout, training=self.training)
        )
        ff = self.activation_fn(self.fc1(hidden_states))
        ff = self.fc2(drop(ff, p=self.activation_dropout, training=self.training))
        hidden_states = self.final_layer_norm(
            hidden_states + drop(ff, p=self.dropout, training=self.training)
        )
        if hidden_states.dtype == torch.float16 and not torch.isfinite(hidden_states).all():
            bound = torch.finfo(hidden_states.dtype).max - 1000  # as transformers, for fp16
            hidden_states = hidden_states.clamp(-bound, bound)
        return hidden_states


class SharedCrossAttentionLayer(DynamicLayer):
    """Cross-attention keys/values stored once per distinct encoder row, plus `rows`: the stored
    row each decoder sequence reads.

    Why: beam search repeats every encoder row `num_beams` times and, after every step, reorders
    the whole cache along the batch, cross-attention entries included: at 16K source tokens
    that is a copy of every layer's keys and values per generated token, and the projections
    and attention reads are done `num_beams` times over identical rows. Here a reorder only
    permutes `rows` (the values cannot change: each sequence still reads its own document), and
    `LEDDecoderAttention` runs each stored row against all its sequences' queries in one call.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values, self.rows = keys, values, rows

    def update(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("cross-attention keys/values are written once per generation")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.rows = self.rows.index_select(0, beam_idx.to(self.rows.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.rows = self.rows.repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.rows = self.rows[indices]

    def grouped(self) -> int:
        """g when sequence i reads stored row i // g (beam search's layout), else 0."""
        n, u = self.rows.shape[0], self.keys.shape[0]
        if n % u:
            return 0
        expected = torch.arange(u, device=self.rows.device).repeat_interleave(n // u)
        return n // u if torch.equal(self.rows, expected) else 0


def _distinct_rows(
    states: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(first, rows)`: the indices of the first of each run of identical consecutive rows of
    `states` (and of `mask`), and for every row the run it belongs to (`states[first][rows]`
    equals `states`). Generation repeats each encoder row per beam with `repeat_interleave`, so
    exact equality finds the beams of one document."""
    n = states.shape[0]
    same = (states[1:] == states[:-1]).flatten(1).all(1)
    if mask is not None:
        same &= (mask[1:] == mask[:-1]).flatten(1).all(1)
    new_run = torch.cat([same.new_ones(1), ~same])
    rows = torch.cumsum(new_run.long(), 0) - 1
    first = torch.arange(n, device=states.device)[new_run]
    return first, rows


class LEDDecoderAttention(nn.Module):
    """Multi-head attention through SDPA: causal self-attention (`key_value_states=None`) or
    cross-attention over the encoder states, with the key/value cache of generation."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        is_decoder: bool = False,
        bias: bool = True,
        layer_idx: int | None = None,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.head_dim = embed_dim // num_heads
        self.is_decoder = is_decoder
        self.layer_idx = layer_idx
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # heads from the tensor, not `num_heads`: under tensor parallelism (training.parallel)
        # the projections output only this rank's heads
        return x.view(*x.shape[:2], -1, self.head_dim).transpose(1, 2)

    def _project(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._heads(self.k_proj(states)), self._heads(self.v_proj(states))

    def _cross_layer(
        self, cache: EncoderDecoderCache, states: torch.Tensor, mask: torch.Tensor | None
    ) -> DynamicLayer:
        """This layer's cross-attention cache entry, written on the first step (keys/values of
        the distinct encoder rows only, see `SharedCrossAttentionLayer`) and read afterwards."""
        layers = cache.cross_attention_cache.layers
        if cache.is_updated.get(self.layer_idx):
            return layers[self.layer_idx]
        first, rows = _distinct_rows(states, mask)
        entry = SharedCrossAttentionLayer(*self._project(states[first]), rows)
        while len(layers) <= self.layer_idx:
            layers.append(DynamicLayer())
        layers[self.layer_idx] = entry
        cache.is_updated[self.layer_idx] = True
        return entry

    def _cross_attention(
        self, query: torch.Tensor, entry: DynamicLayer, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention over a cached cross entry; the beams of one document share one call."""
        keys, values = entry.keys.to(query.dtype), entry.values.to(query.dtype)
        rows = getattr(entry, "rows", None)
        group = entry.grouped() if rows is not None else 0
        if rows is not None and not group:  # an unusual layout: read each sequence's row
            keys, values = keys[rows], values[rows]
        if not group:
            return self._sdpa(query, keys, values, mask)
        n, h, t, d = query.shape
        u = n // group
        grouped_query = query.view(u, group, h, t, d).transpose(1, 2).reshape(u, h, group * t, d)
        grouped_mask = None if mask is None else mask[::group]
        out = self._sdpa(grouped_query, keys, values, grouped_mask)
        return out.view(u, h, group, t, d).transpose(1, 2).reshape(n, h, t, d)

    def _sdpa(self, query, keys, values, mask, is_causal: bool = False) -> torch.Tensor:
        return scaled_dot_product_attention(
            query,
            keys,
            values,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )

    def _self_keys_values(
        self, states: torch.Tensor, cache: Cache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of the new positions, appended to the cache's earlier ones."""
        keys, values = self._project(states)
        if cache is None:
            return keys, values
        if isinstance(cache, EncoderDecoderCache):
            cache = cache.self_attention_cache
        return cache.update(keys, values, self.layer_idx)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """`attention_mask`: bool `(batch, 1, tgt, src)`, True = attend (or None)."""
        batch, tgt_len, _ = hidden_states.shape
        query = self._heads(self.q_proj(hidden_states))
        if key_value_states is None:
            keys, values = self._self_keys_values(hidden_states, cache)
            out = self._sdpa(
                query, keys.to(query.dtype), values.to(query.dtype), attention_mask, is_causal
            )
        elif isinstance(cache, EncoderDecoderCache):
            entry = self._cross_layer(cache, key_value_states, attention_mask)
            out = self._cross_attention(query, entry, attention_mask)
        else:  # no cache (training): every sequence has its own document
            keys, values = self._project(key_value_states)
            out = self._sdpa(query, keys.to(query.dtype), values.to(query.dtype), attention_mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, tgt_len, -1))


class LEDDecoderLayer(GradientCheckpointingLayer):
    """Post-LN block: causal self-attention, cross-attention, feed-forward."""

    def __init__(self, config: LEDConfig, layer_idx: int | None = None):
        super().__init__()
        self.embed_dim = config.d_model
        heads, attn_drop = config.decoder_attention_heads, config.attention_dropout
        self.self_attn = LEDDecoderAttention(
            self.embed_dim, heads, dropout=attn_drop, is_decoder=True, layer_idx=layer_idx
        )
        self.dropout = config.dropout
        self.activation_fn = ACT2FN[config.activation_function]
        self.activation_dropout = config.activation_dropout
        self.self_attn_layer_norm = nn.LayerNorm(self.embed_dim)
        self.encoder_attn = LEDDecoderAttention(
            self.embed_dim, heads, dropout=attn_drop, is_decoder=True, layer_idx=layer_idx
        )
        self.encoder_attn_layer_norm = nn.LayerNorm(self.embed_dim)
        self.fc1 = nn.Linear(self.embed_dim, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, self.embed_dim)
        self.final_layer_norm = nn.LayerNorm(self.embed_dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        is_causal: bool = False,
        use_cache: bool | None = True,
    ) -> torch.Tensor:
        drop = nn.functional.dropout
        attn = self.self_attn(
            hidden_states, cache=cache, attention_mask=attention_mask, is_causal=is_causal
        )
        hidden_states = self.self_attn_layer_norm(
            hidden_states + drop(attn, p=self.dropout, training=self.training)
        )
        if encoder_hidden_states is not None:
            cross = self.encoder_attn(
                hidden_states,
                key_value_states=encoder_hidden_states,
                cache=cache,
                attention_mask=encoder_attention_mask,
            )
            hidden_states = self.encoder_attn_layer_norm(
                hidden_states + drop(cross, p=self.dropout, training=self.training)
            )
        ff = self.activation_fn(self.fc1(hidden_states))
        ff = self.fc2(drop(ff, p=self.activation_dropout, training=self.training))
        return self.final_layer_norm(
            hidden_states + drop(ff, p=self.dropout, training=self.training)
        )


# --------------------------------------------------------------------------- models


class LEDPreTrainedModel(PreTrainedModel):
    config_class = LongdocLEDConfig
    base_model_prefix = "led"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LEDEncoderLayer", "LEDDecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LEDForConditionalGeneration):
            init.zeros_(module.final_logits_bias)


def _layer_dropped(module: nn.Module, layerdrop: float) -> bool:
    """LayerDrop (Fan et al. 2019): skip a whole layer with probability `layerdrop` in training."""
    return module.training and layerdrop > 0.0 and bool(torch.rand([]) < layerdrop)


class LEDEncoder(LEDPreTrainedModel):
    """Embeddings, learned positions (up to `max_encoder_position_embeddings`) and
    `encoder_layers` Longformer layers on the kernels."""

    def __init__(self, config: LEDConfig):
        super().__init__(config)
        _check_encoder_windows(config)
        self.dropout = config.dropout
        self.layerdrop = config.encoder_layerdrop
        self.padding_idx = config.pad_token_id
        self.max_source_positions = config.max_encoder_position_embeddings
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, self.padding_idx)
        self.embed_positions = LEDLearnedPositionalEmbedding(
            self.max_source_positions, config.d_model
        )
        self.layers = nn.ModuleList(
            [LEDEncoderLayer(config, i) for i in range(config.encoder_layers)]
        )
        self.layernorm_embedding = nn.LayerNorm(config.d_model)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> tuple | LEDEncoderBaseModelOutput:
        """`attention_mask`: 1 = token, 0 = padding. `global_attention_mask`: 1 = global."""
        refuse_attention_outputs(output_attentions, self.config)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You have to specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        shape = tuple(inputs_embeds.shape[:2])
        masks = _encoder_masks(attention_mask, global_attention_mask, shape, inputs_embeds.device)
        hidden_states = inputs_embeds + self.embed_positions(shape)
        hidden_states = self.layernorm_embedding(hidden_states)
        hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
        states: tuple[torch.Tensor, ...] | None = () if output_hidden_states else None
        for layer in self.layers:
            if states is not None:
                states = states + (hidden_states,)
            if not _layer_dropped(self, self.layerdrop):
                hidden_states = layer(hidden_states, **masks)
        if states is not None:
            states = states + (hidden_states,)
        if not return_dict:
            return tuple(v for v in (hidden_states, states) if v is not None)
        return LEDEncoderBaseModelOutput(last_hidden_state=hidden_states, hidden_states=states)


class LEDDecoder(LEDPreTrainedModel):
    """Embeddings, learned positions (up to `max_decoder_position_embeddings`) and
    `decoder_layers` layers of causal self-attention + cross-attention (SDPA)."""

    def __init__(self, config: LEDConfig):
        super().__init__(config)
        self.dropout = config.dropout
        self.layerdrop = config.decoder_layerdrop
        self.padding_idx = config.pad_token_id
        self.max_target_positions = config.max_decoder_position_embeddings
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, self.padding_idx)
        self.embed_positions = LEDLearnedPositionalEmbedding(
            self.max_target_positions, config.d_model
        )
        self.layers = nn.ModuleList(
            [LEDDecoderLayer(config, layer_idx=i) for i in range(config.decoder_layers)]
        )
        self.layernorm_embedding = nn.LayerNorm(config.d_model)
        self.gradient_checkpointing = False
        self.post_init()

    def _embed(self, inputs_embeds: torch.Tensor, past: int) -> torch.Tensor:
        """Token embeddings plus the positions after the `past` cached ones, normalised."""
        hidden_states = inputs_embeds + self.embed_positions(inputs_embeds.shape, past)
        hidden_states = self.layernorm_embedding(hidden_states)
        return nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)

    def _cache(self, use_cache: bool, cache: Cache | None) -> tuple[bool, Cache | None]:
        """(use_cache, the cache to fill): a new one when asked for and none given."""
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputation would write the cache twice
        if use_cache and cache is None:
            cache = EncoderDecoderCache(
                DynamicCache(config=self.config), DynamicCache(config=self.config)
            )
        return use_cache, cache

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> tuple | BaseModelOutputWithPastAndCrossAttentions:
        """`global_attention_mask` is accepted for transformers' signature and unused (the
        decoder attends fully)."""
        refuse_attention_outputs(output_attentions, self.config)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(
                "You have to specify exactly one of decoder_input_ids or decoder_inputs_embeds"
            )
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache, cache = self._cache(use_cache, cache)
        batch, q_len = inputs_embeds.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        self_mask, is_causal = _self_attention_mask(
            attention_mask, batch, q_len, past, inputs_embeds.device
        )
        cross_mask = _cross_attention_mask(encoder_attention_mask)
        hidden_states = self._embed(inputs_embeds, past)
        states: tuple[torch.Tensor, ...] | None = () if output_hidden_states else None
        for layer in self.layers:
            if states is not None:
                states = states + (hidden_states,)
            if _layer_dropped(self, self.layerdrop):
                continue
            hidden_states = layer(
                hidden_states,
                self_mask,
                encoder_hidden_states,  # positional, for gradient checkpointing
                encoder_attention_mask=cross_mask,
                cache=cache,
                is_causal=is_causal,
                use_cache=use_cache,
            )
        states = states + (hidden_states,) if states is not None else None
        if not return_dict:
            return tuple(v for v in (hidden_states, cache, states) if v is not None)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states, cache=cache, hidden_states=states
        )


def _as_encoder_output(encoder_outputs: Any) -> LEDEncoderBaseModelOutput:
    if isinstance(encoder_outputs, LEDEncoderBaseModelOutput):
        return encoder_outputs
    return LEDEncoderBaseModelOutput(
        last_hidden_state=encoder_outputs[0],
        hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
    )


class LEDModel(LEDPreTrainedModel):
    """The bare encoder–decoder; same call signature and outputs as transformers' `LEDModel`."""

    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: LEDConfig):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.encoder = LEDEncoder(config)
        self.decoder = LEDDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = value
        self.encoder.embed_tokens = self.shared
        self.decoder.embed_tokens = self.shared

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        encoder_outputs: tuple | LEDEncoderBaseModelOutput | None = None,
        global_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> tuple | LEDSeq2SeqModelOutput:
        """As transformers: without decoder inputs, the decoder reads `input_ids` shifted right
        (BART's denoising setting); `encoder_outputs` skips the encoder (generation)."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if input_ids is None:
                raise ValueError("no decoder inputs: pass decoder_input_ids or input_ids")
            decoder_input_ids = shift_tokens_right(
                input_ids, self.config.pad_token_id, self.config.decoder_start_token_id
            )
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                global_attention_mask=global_attention_mask,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        encoder_outputs = _as_encoder_output(encoder_outputs)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        if not return_dict:
            return decoder_outputs.to_tuple() + encoder_outputs.to_tuple()
        return LEDSeq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
        )


class LEDForConditionalGeneration(LEDPreTrainedModel, GenerationMixin):
    """LED with its LM head (tied to the shared embeddings) and `final_logits_bias`;
    `generate()` comes from transformers' `GenerationMixin`."""

    base_model_prefix = "led"
    _keys_to_ignore_on_load_missing = ["final_logits_bias"]
    _tied_weights_keys = {"lm_head.weight": "led.shared.weight"}

    def __init__(self, config: LEDConfig):
        super().__init__(config)
        self.led = LEDModel(config)
        self.final_logits_bias = nn.Buffer(torch.zeros((1, self.led.shared.num_embeddings)))
        self.lm_head = nn.Linear(config.d_model, self.led.shared.num_embeddings, bias=False)
        self.post_init()

    def resize_token_embeddings(
        self, new_num_tokens: int, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        new_embeddings = super().resize_token_embeddings(
            new_num_tokens, pad_to_multiple_of, mean_resizing
        )
        n, old = new_embeddings.weight.shape[0], self.final_logits_bias
        extra = old.new_zeros((1, max(0, n - old.shape[-1])))
        self.final_logits_bias = nn.Buffer(torch.cat([old[:, :n], extra], dim=1))
        return new_embeddings

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        encoder_outputs: tuple | LEDEncoderBaseModelOutput | None = None,
        global_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> tuple | LEDSeq2SeqLMOutput:
        """`labels`: target ids, -100 where no loss is taken; the decoder then reads them
        shifted right behind `decoder_start_token_id` (teacher forcing) and caches nothing."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.led(
            input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            global_attention_mask=global_attention_mask,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(outputs.last_hidden_state) + self.final_logits_bias
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            loss = CrossEntropyLoss()(logits.view(-1, self.config.vocab_size), labels.view(-1))
        out = LEDSeq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
        )
        return out if return_dict else out.to_tuple()

    def encode(self, **inputs: Any) -> LEDEncoderBaseModelOutput:
        """The encoder alone. A method of the top module, so that FSDP (training.parallel)
        gathers the shared embeddings around it as it does around `forward`."""
        return self.led.encoder(**inputs)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(
            labels, self.config.pad_token_id, self.config.decoder_start_token_id
        )


# --------------------------------------------------------------------------- Auto classes

AutoConfig.register(LongdocLEDConfig.model_type, LongdocLEDConfig, exist_ok=True)
AutoModel.register(LongdocLEDConfig, LEDModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(LongdocLEDConfig, LEDForConditionalGeneration, exist_ok=True)
