"""The long model: transformers' Longformer classes, re-implemented on our attention kernels.

Why a re-implementation rather than transformers' own classes: their `LongformerSelfAttention`
pads every input to a multiple of the window, materialises a `(seq, 2w+1)` score tensor per head
with chunk/stride gymnastics, knows only one pattern (undilated sliding window) and one backend.
Ours hands the local part to `kernels.attention` (any length, any pattern, dense | torch | tvm
backends) and keeps only the Longformer-specific part here: global tokens with their own
query/key/value projections. Everything else (embeddings, RoBERTa position ids, feed-forward,
heads, parameter names and shapes, output classes, call signatures) mirrors transformers, so a
state dict moves between the two implementations without renaming and the outputs agree.

What a layer computes (the same function as transformers' Longformer, read from its source):

- local (non-global) query i, with the local projections `query/key/value`: softmax over the
  keys in its pattern band plus every global key, minus padding keys;
- global query i, with `query_global/key_global/value_global`: softmax over every non-padding
  key. The kernel computes the local rows (`global_rows=False`: it skips the global ones); the
  few global rows are computed densely (O(globals x seq)) and written over. With few global
  tokens they do not project every key and value: `(Wk^T q) . x + q . bk` and
  `Wv (sum p x) + (sum p) bv` are the same sums reordered (`_global_attention_factored`);
- padding queries output zeros (as in transformers), padding tokens are never global.

Short inputs: with the default `attention_backend="auto"`, when a layer's window covers the
whole (padded) input, the local rows are one fused SDPA call (the global keys and rows need no
special case there: every pair is allowed), with no mask at all when nothing is padding, i.e.
exactly RoBERTa's attention; up to `2w+1` tokens, where the band spans the input, one SDPA call
with the band's mask. That mask (or the padding row) is built once per forward, by the first
layer, and shared through `mask_cache`. Only the few global rows are then recomputed with the
global projections as above (they use their own keys and values, so they cannot share that
call), written over the fused call's rows. See `kernels.api.fused_dense_pays`; explicit
backends are honoured as given.

Configuration: `LongdocConfig` is transformers' `LongformerConfig` (same fields, HF meaning:
`attention_window` is the full two-sided window per layer, one side = w // 2) plus

- `attention_backend`: "auto" | "torch" | "tvm" | "dense" (passed to `kernels.attention`);
- `attention_pattern`: "sliding" (Longformer, default) | "block" | "strided" | "fixed" | "dense";
  with w = the layer's `attention_window`, the kernel pattern is
  `SlidingWindow(w // 2, dilation)`, `BlockLocal(block=w // 2, neighbors=1)`,
  `Strided(stride=w // 2, causal=False)`, `Fixed(block=w, summary=max(1, w // 16),
  causal=False)` or `Dense()`; `attention_pattern_kwargs` (a dict) overrides those arguments
  (e.g. `{"neighbors": 2}` or `{"causal": True}`);
- `attention_dilation`: sliding-window dilation, an int, one int per head, or one per-head list
  per layer.

Only "sliding" with dilation 1 computes what transformers' classes compute; a checkpoint trained
with another pattern still loads into them (same parameters) but they will attend differently.

Auto classes and the checkpoint format (the decision): a saved `config.json` always says
`"model_type": "longformer"` and the weights use transformers' names, so a checkpoint we save is
a plain transformers Longformer checkpoint: `transformers.AutoModel*` and `transformers.Longformer*`
load it (our extra config keys ride along, ignored). Transformers' own `"longformer"` model type
is NOT re-registered: hijacking it would silently swap the implementation behind every
`AutoModel.from_pretrained` call in the process once this module is imported. Instead our classes
are registered with the Auto classes under a distinct config class, `LongdocConfig`
(`model_type = "longdoc_longformer"`, serialised as "longformer"), so the Auto classes pick our
implementation exactly when given our config:

    AutoModelForMaskedLM.from_pretrained(path, config=LongdocConfig.from_pretrained(path))
    AutoModel.from_config(make_config(...))

and our classes load any transformers Longformer checkpoint directly:
`components.modeling.model.LongformerForMaskedLM.from_pretrained(path)`.

Not supported: `output_attentions=True` (the kernels never materialise attention probabilities;
it raises), and attention-probability dropout inside the local attention (the kernels have no
dropout; `attention_probs_dropout_prob` applies to the global rows only, as transformers applies
it there; hidden-state dropout is unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    LongformerConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.activations import ACT2FN, gelu
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.longformer.modeling_longformer import (
    LongformerBaseModelOutputWithPooling,
    LongformerMaskedLMOutput,
    LongformerMultipleChoiceModelOutput,
    LongformerQuestionAnsweringModelOutput,
    LongformerSequenceClassifierOutput,
)
from transformers.pytorch_utils import apply_chunking_to_forward

from longdoc.components.core.config import ModelParams
from longdoc.kernels import (
    BlockLocal,
    Dense,
    Fixed,
    Pattern,
    SlidingWindow,
    Strided,
    attention,
    fused_dense_pays,
)

__all__ = [
    "LongdocConfig",
    "LongformerPreTrainedModel",
    "LongformerModel",
    "LongformerForMaskedLM",
    "LongformerForSequenceClassification",
    "LongformerForQuestionAnswering",
    "LongformerForMultipleChoice",
    "make_config",
    "layer_pattern",
    "question_global_mask",
    "second_segment_global_mask",
    "create_position_ids_from_input_ids",
]

BACKENDS = ("auto", "torch", "tvm", "dense")
PATTERNS = ("sliding", "block", "strided", "fixed", "dense")


# --------------------------------------------------------------------------- configuration


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' per-weight load report and progress bar for loads where a fresh
    task head is expected (MLM checkpoint -> classifier); real problems still raise."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


@dataclass(repr=False, eq=False)
class AttentionSwitches:
    """Our attention switches and the `model_type` aliasing, shared by `LongdocConfig` and the
    LED's config (put first among the bases, so its `get_config_dict`/`to_dict` wrap
    transformers').

    `model_type` is distinct only so the Auto classes can map our config classes to our models;
    `config.json` says `hf_model_type` (transformers' type) and such a config.json reads back
    into our class silently, so checkpoints stay transformers checkpoints.
    """

    attention_backend: str = "auto"
    attention_pattern: str = "sliding"
    attention_dilation: int | list[int] | list[list[int]] = 1
    attention_pattern_kwargs: dict[str, Any] | None = None

    hf_model_type: ClassVar[str]

    @classmethod
    def get_config_dict(cls, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        if config_dict.get("model_type") == cls.hf_model_type:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["model_type"] = self.hf_model_type
        return out


@strict
class LongdocConfig(AttentionSwitches, LongformerConfig):
    """`LongformerConfig` plus our attention switches (see the module docstring)."""

    model_type = "longdoc_longformer"
    hf_model_type = LongformerConfig.model_type


def make_config(
    params: ModelParams,
    *,
    vocab_size: int,
    pad_token_id: int,
    bos_token_id: int,
    eos_token_id: int,
    **overrides: Any,
) -> LongdocConfig:
    """The config for a fresh model from the `model` section of params.yaml.

    `attention_window` (HF convention, full window) applies to every layer; `dropout` sets both
    hidden and attention-probability dropout; `sep_token_id` is the eos token (RoBERTa's `</s>`).
    `overrides` are any further config fields (they win).
    """
    fields: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=params.hidden_size,
        num_hidden_layers=params.num_hidden_layers,
        num_attention_heads=params.num_attention_heads,
        intermediate_size=params.intermediate_size,
        attention_window=params.attention_window,
        max_position_embeddings=params.max_position_embeddings,
        hidden_dropout_prob=params.dropout,
        attention_probs_dropout_prob=params.dropout,
        attention_backend=params.attention_backend,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        sep_token_id=eos_token_id,
    )
    fields.update(overrides)
    config = LongdocConfig(**fields)
    for i in range(config.num_hidden_layers):  # fail here, not at the first forward
        layer_pattern(config, i)
    return config


def layer_window(config: LongformerConfig, layer_id: int) -> int:
    aw = config.attention_window
    if isinstance(aw, int):
        w = aw
    else:
        if len(aw) != config.num_hidden_layers:
            raise ValueError(
                f"attention_window has {len(aw)} entries for {config.num_hidden_layers} layers"
            )
        w = aw[layer_id]
    if w <= 0 or w % 2:
        raise ValueError(
            f"attention_window for layer {layer_id} must be even and positive (HF convention: "
            f"w // 2 tokens on each side), got {w}"
        )
    return w


def _layer_dilation(config: LongformerConfig, layer_id: int) -> int | tuple[int, ...]:
    dil = getattr(config, "attention_dilation", 1)
    heads = config.num_attention_heads
    if isinstance(dil, int):
        return dil
    dil = list(dil)
    if dil and all(isinstance(d, Sequence) for d in dil):  # per layer, per head
        if len(dil) != config.num_hidden_layers:
            raise ValueError(
                f"attention_dilation has {len(dil)} per-layer entries for "
                f"{config.num_hidden_layers} layers"
            )
        dil = list(dil[layer_id])
    if len(dil) != heads:
        raise ValueError(f"attention_dilation has {len(dil)} per-head entries for {heads} heads")
    return tuple(int(d) for d in dil)


def layer_pattern(config: LongformerConfig, layer_id: int) -> Pattern:
    """The kernel pattern of layer `layer_id` (see the module docstring for the mapping)."""
    w = layer_window(config, layer_id)
    kind = getattr(config, "attention_pattern", "sliding")
    extra = dict(getattr(config, "attention_pattern_kwargs", None) or {})
    if kind == "sliding":
        cls, args = SlidingWindow, {"window": w // 2, "dilation": _layer_dilation(config, layer_id)}
    elif kind == "block":
        cls, args = BlockLocal, {"block": w // 2, "neighbors": 1}
    elif kind == "strided":
        cls, args = Strided, {"stride": w // 2, "causal": False}
    elif kind == "fixed":
        cls, args = Fixed, {"block": w, "summary": max(1, w // 16), "causal": False}
    elif kind == "dense":
        cls, args = Dense, {}
    else:
        raise ValueError(f"attention_pattern must be one of {PATTERNS}, got {kind!r}")
    try:
        return cls(**{**args, **extra})
    except TypeError as exc:
        raise ValueError(
            f"attention_pattern_kwargs {extra} do not fit pattern {kind!r} ({cls.__name__}): {exc}"
        ) from None


# --------------------------------------------------------------------------- masks


class GlobalIndex(NamedTuple):
    """Where the global tokens are, computed once per forward and shared by all layers.

    `slots[b, g]` is the position of the g-th global token of row b (0 in unused slots, where
    `slot_used` is False); `batch, pos, slot` list each global token once.
    """

    slots: torch.Tensor  # (batch, G) long
    slot_used: torch.Tensor  # (batch, G) bool
    batch: torch.Tensor  # (N,) long
    pos: torch.Tensor  # (N,) long
    slot: torch.Tensor  # (N,) long


def index_global_tokens(global_mask: torch.Tensor) -> GlobalIndex | None:
    counts = global_mask.sum(dim=1)
    n_max = int(counts.max()) if global_mask.numel() else 0
    if n_max == 0:
        return None
    batch, pos = global_mask.nonzero(as_tuple=True)
    slot = (torch.cumsum(global_mask.long(), dim=1) - 1)[batch, pos]
    slots = torch.zeros(global_mask.shape[0], n_max, dtype=torch.long, device=global_mask.device)
    slots[batch, slot] = pos
    slot_used = torch.arange(n_max, device=global_mask.device) < counts.unsqueeze(1)
    return GlobalIndex(slots, slot_used, batch, pos, slot)


def _gather_rows(hidden_states: torch.Tensor, gi: GlobalIndex) -> torch.Tensor:
    """`(batch, globals, hidden)`: the hidden states at each sequence's global slots."""
    embed = hidden_states.shape[-1]
    return torch.gather(hidden_states, 1, gi.slots.unsqueeze(-1).expand(-1, -1, embed))


def _first_sep(input_ids: torch.Tensor, sep_token_id: int | None) -> torch.Tensor:
    """Index of the first `sep_token_id` in each row (rows must contain one)."""
    if sep_token_id is None:
        raise ValueError("config.sep_token_id is None: pass global_attention_mask explicitly")
    is_sep = input_ids == sep_token_id
    missing = ~is_sep.any(dim=-1)
    if missing.any():
        raise ValueError(
            f"cannot place global attention automatically: {int(missing.sum())} row(s) contain no "
            f"separator token {sep_token_id}; pass global_attention_mask explicitly"
        )
    return is_sep.long().argmax(dim=-1)


def question_global_mask(input_ids: torch.Tensor, sep_token_id: int | None) -> torch.Tensor:
    """Global attention on the question: every token before the first separator (as
    transformers' `LongformerForQuestionAnswering` does for `<s> q </s></s> context </s>`)."""
    end = _first_sep(input_ids, sep_token_id).unsqueeze(-1)
    return torch.arange(input_ids.shape[-1], device=input_ids.device) < end


def second_segment_global_mask(input_ids: torch.Tensor, sep_token_id: int | None) -> torch.Tensor:
    """Global attention on every token after the first `</s></s>` (transformers'
    `LongformerForMultipleChoice` default, `before_sep_token=False`)."""
    end = _first_sep(input_ids, sep_token_id).unsqueeze(-1)
    return torch.arange(input_ids.shape[-1], device=input_ids.device) > end + 1


# --------------------------------------------------------------------------- modules


def create_position_ids_from_input_ids(input_ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """RoBERTa positions: non-pad tokens count from padding_idx + 1, pad tokens get padding_idx."""
    mask = input_ids.ne(padding_idx).int()
    return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + padding_idx


class LongformerEmbeddings(nn.Module):
    """Word + RoBERTa-style position + token-type embeddings, LayerNorm, dropout."""

    def __init__(self, config: LongformerConfig):
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=self.padding_idx
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch, seq = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        if position_ids is None:
            if input_ids is not None:
                position_ids = create_position_ids_from_input_ids(input_ids, self.padding_idx)
            else:  # no ids: padding unknown, sequential positions
                start = self.padding_idx + 1
                position_ids = torch.arange(start, start + seq, device=device).expand(batch, seq)
        n_pos = self.position_embeddings.num_embeddings
        if seq + self.padding_idx >= n_pos and int(position_ids.max()) >= n_pos:  # clear error
            raise ValueError(
                f"a sequence of {seq} tokens needs position id {int(position_ids.max())} but the "
                f"model has max_position_embeddings={n_pos} (RoBERTa offsets positions by "
                f"pad_token_id + 1)"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch, seq, dtype=torch.long, device=device)
        embeddings = (
            inputs_embeds
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(embeddings))


# ---- global projections ------------------------------------------------------------------
# MLM marks no token global, so a model pretrained from scratch never trains its global
# q/k/v; pretraining publishes them as copies of the local ones and the probe checks which.

#: (local, global) projection names of a Longformer self-attention layer.
_PROJECTIONS = (("query", "query_global"), ("key", "key_global"), ("value", "value_global"))


def _attention_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if all(hasattr(m, g) for _, g in _PROJECTIONS)]


def untrained_global_projections(model: torch.nn.Module) -> bool:
    """True when no layer's global query/key/value projection was ever trained: every one of
    their biases is exactly zero, as initialised (a trained bias never lands on exactly zero in
    every coordinate), in a model with such layers."""
    layers = _attention_layers(model)
    biases = [getattr(layer, g).bias for layer in layers for _, g in _PROJECTIONS]
    if not layers or any(b is None for b in biases):
        return False
    return not any(bool(b.detach().any()) for b in biases)


def global_projections_are_local_copies(model: torch.nn.Module) -> bool:
    """True when every layer's global query/key/value projection equals its local one exactly
    (what `copy_local_to_global` leaves, and what pretraining from scratch publishes)."""
    layers = _attention_layers(model)
    return bool(layers) and all(
        torch.equal(getattr(layer, g).weight, getattr(layer, local).weight)
        and torch.equal(getattr(layer, g).bias, getattr(layer, local).bias)
        for layer in layers
        for local, g in _PROJECTIONS
    )


def copy_local_to_global(model: torch.nn.Module) -> int:
    """Set every layer's global projections to copies of its local ones, in place (Longformer's
    initialisation of them); returns how many layers."""
    layers = _attention_layers(model)
    with torch.no_grad():
        for layer in layers:
            for local, glob in _PROJECTIONS:
                getattr(layer, glob).weight.copy_(getattr(layer, local).weight)
                getattr(layer, glob).bias.copy_(getattr(layer, local).bias)
    return len(layers)


class LongformerSelfAttention(nn.Module):
    """Local attention through the kernel, global rows recomputed with the global projections."""

    def __init__(self, config: LongformerConfig, layer_id: int):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"hidden_size ({config.hidden_size}) is not a multiple of num_attention_heads "
                f"({config.num_attention_heads})"
            )
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.embed_dim = config.hidden_size
        self.query = nn.Linear(config.hidden_size, self.embed_dim)
        self.key = nn.Linear(config.hidden_size, self.embed_dim)
        self.value = nn.Linear(config.hidden_size, self.embed_dim)
        # separate projections for tokens with global attention (Longformer, section 3.1)
        self.query_global = nn.Linear(config.hidden_size, self.embed_dim)
        self.key_global = nn.Linear(config.hidden_size, self.embed_dim)
        self.value_global = nn.Linear(config.hidden_size, self.embed_dim)
        self.dropout = config.attention_probs_dropout_prob
        self.layer_id = layer_id
        self.pattern = layer_pattern(config, layer_id)
        self.backend = getattr(config, "attention_backend", "auto")
        if self.backend not in BACKENDS:
            raise ValueError(f"attention_backend must be one of {BACKENDS}, got {self.backend!r}")

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # heads from the tensor, not the config: under tensor parallelism (training.parallel)
        # the projections output only this rank's heads
        return x.view(*x.shape[:2], -1, self.head_dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        global_mask: torch.Tensor | None = None,
        global_index: GlobalIndex | None = None,
        mask_cache: dict | None = None,
    ) -> torch.Tensor:
        batch, seq, _ = hidden_states.shape
        q = self._heads(self.query(hidden_states))
        k = self._heads(self.key(hidden_states))
        v = self._heads(self.value(hidden_states))
        out = attention(
            q,
            k,
            v,
            self.pattern,
            global_mask=global_mask if global_index is not None else None,
            key_padding_mask=key_padding_mask,
            backend=self.backend,
            # the global rows are overwritten below with the global projections: the banded
            # kernels leave them out and skip their work, forward and backward
            global_rows=global_index is None or not self._kernel_skips_global_rows(seq),
            mask_cache=mask_cache,
        )
        if global_index is None and key_padding_mask is None:
            return out.reshape(batch, seq, -1)
        # one copy, then the global and padding rows written into it in place: autograd saved
        # nothing of this fresh tensor, and each in-place write is one small op
        out = out.clone(memory_format=torch.contiguous_format).view(batch, seq, -1)
        if global_index is not None:
            self._write_global_rows(hidden_states, out, key_padding_mask, global_index)
        if key_padding_mask is not None:  # transformers zeroes padding queries
            out.masked_fill_(key_padding_mask.unsqueeze(-1), 0.0)
        return out

    def _kernel_skips_global_rows(self, seq: int) -> bool:
        """Whether the kernel saves work when told to leave the global rows out: the banded
        backends do; a dense or fused dense call computes every row anyway, and zeroing the
        rows that `_write_global_rows` overwrites would only cost a copy."""
        if self.backend == "auto":
            return not fused_dense_pays(self.pattern, seq)
        return self.backend != "dense"

    def _write_global_rows(
        self,
        hidden_states: torch.Tensor,
        out: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        gi: GlobalIndex,
    ) -> None:
        """Global queries attend every non-padding key with the global projections: a dense
        `(globals x seq)` attention, cheap because global tokens are few. Written into `out`
        (`(batch, seq, embed)`) in place."""
        glob = self.global_attention(
            hidden_states, _gather_rows(hidden_states, gi), key_padding_mask
        )
        out.index_put_((gi.batch, gi.pos), glob.flatten(2)[gi.batch, gi.slot].to(out.dtype))

    def global_attention(
        self,
        hidden_states: torch.Tensor,
        gathered: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """`(batch, globals, heads, head_dim)`: the global rows `gathered` (their hidden states)
        attending every non-padding key of `hidden_states`."""
        qg = self._heads(self.query_global(gathered)) / math.sqrt(self.head_dim)
        if self._factored_global_pays(qg, hidden_states):
            return self._global_attention_factored(hidden_states, qg, key_padding_mask)
        kg = self._heads(self.key_global(hidden_states))
        vg = self._heads(self.value_global(hidden_states))
        scores = torch.einsum("bghd,bshd->bhgs", qg, kg)
        probs = self._global_probs(scores, key_padding_mask, vg.dtype)
        return torch.einsum("bhgs,bshd->bghd", probs, vg)

    def _global_probs(
        self, scores: torch.Tensor, key_padding_mask: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor:
        if key_padding_mask is not None:  # (batch, ..., seq) scores
            pad = key_padding_mask.view(scores.shape[0], *(1,) * (scores.dim() - 2), -1)
            scores = scores.masked_fill(pad, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
        return nn.functional.dropout(probs, p=self.dropout, training=self.training)

    def _factored_global_pays(self, qg: torch.Tensor, hidden_states: torch.Tensor) -> bool:
        """Whether `_global_attention_factored` is cheaper: with `G` global tokens and `H` heads
        it costs `O(seq * H * G * hidden)` against `O(seq * hidden^2)` for projecting every key
        and value, so while `H * G` is well under `hidden` (one `<s>`, a short question). Only
        on plain parameters: under tensor parallelism they are sharded DTensors, which the
        modules' own calls handle."""
        heads, globals_ = qg.shape[2], qg.shape[1]
        params = (self.key_global.weight, self.key_global.bias, self.value_global.weight)
        plain = all(type(p) in (nn.Parameter, torch.Tensor) for p in params)
        return plain and 2 * heads * globals_ <= hidden_states.shape[-1]

    def _global_attention_factored(
        self, hidden_states: torch.Tensor, qg: torch.Tensor, key_padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """`global_attention` without projecting every key and value: the same sums, reordered.

        A score is `qg . (Wk x_s + bk) = (Wk^T qg) . x_s + qg . bk`, and the output is
        `sum_s p_s (Wv x_s + bv) = Wv (sum_s p_s x_s) + (sum_s p_s) bv`, per head, so the
        `(seq x hidden) @ (hidden x hidden)` projections become products with `H * G` vectors;
        autograd differentiates the reordered sums exactly (same parameters, same gradients up
        to float rounding)."""
        batch, globals_, heads, dim = qg.shape
        wk = self.key_global.weight.view(heads, dim, -1)  # (H, D, hidden)
        wv = self.value_global.weight.view(heads, dim, -1)
        # the (head, global) pairs as the rows of one batched product with the hidden states;
        # the scores' memory order is the unfactored path's (B, H, G, S): same dropout masks
        qk = torch.einsum("bghd,hde->bhge", qg, wk).reshape(batch, heads * globals_, -1)
        q_bias = torch.einsum("bghd,hd->bhg", qg, self.key_global.bias.view(heads, dim))
        scores = torch.baddbmm(q_bias.reshape(batch, -1, 1), qk, hidden_states.transpose(1, 2))
        probs = self._global_probs(scores, key_padding_mask, hidden_states.dtype)
        mixed = torch.bmm(probs, hidden_states).view(batch, heads, globals_, -1)
        out = torch.einsum("bhge,hde->bghd", mixed, wv)
        weight = probs.sum(-1).view(batch, heads, globals_).transpose(1, 2)  # 1 unless dropout
        return torch.addcmul(out, weight.unsqueeze(-1), self.value_global.bias.view(heads, dim))


class LongformerSelfOutput(nn.Module):
    def __init__(self, config: LongformerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class LongformerAttention(nn.Module):
    def __init__(self, config: LongformerConfig, layer_id: int = 0):
        super().__init__()
        self.self = LongformerSelfAttention(config, layer_id)
        self.output = LongformerSelfOutput(config)

    def forward(self, hidden_states: torch.Tensor, **masks: Any) -> torch.Tensor:
        return self.output(self.self(hidden_states, **masks), hidden_states)


class LongformerIntermediate(nn.Module):
    def __init__(self, config: LongformerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        act = config.hidden_act
        self.intermediate_act_fn = ACT2FN[act] if isinstance(act, str) else act

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class LongformerOutput(nn.Module):
    def __init__(self, config: LongformerConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class LongformerLayer(GradientCheckpointingLayer):
    """One transformer block. As a `GradientCheckpointingLayer`, `gradient_checkpointing_enable()`
    makes it recompute its activations in the backward pass (hidden states stay positional)."""

    def __init__(self, config: LongformerConfig, layer_id: int = 0):
        super().__init__()
        self.attention = LongformerAttention(config, layer_id)
        self.intermediate = LongformerIntermediate(config)
        self.output = LongformerOutput(config)
        self.chunk_size_feed_forward = config.chunk_size_feed_forward
        self.seq_len_dim = 1

    def forward(self, hidden_states: torch.Tensor, **masks: Any) -> torch.Tensor:
        attn_output = self.attention(hidden_states, **masks)
        return apply_chunking_to_forward(
            self.ff_chunk, self.chunk_size_feed_forward, self.seq_len_dim, attn_output
        )

    def ff_chunk(self, attn_output: torch.Tensor) -> torch.Tensor:
        return self.output(self.intermediate(attn_output), attn_output)

    def forward_global_rows(
        self,
        hidden_states: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        global_index: GlobalIndex | None = None,
        **_: Any,
    ) -> torch.Tensor:
        """This layer's output at the global rows only, written over `hidden_states` (every
        other row keeps its input). Every step after the attention is row-wise, so those rows
        equal `forward`'s; a head that reads only global rows (classification on `<s>`) skips
        the last layer's local attention, its q/k/v and its feed-forward for every other row."""
        gi = global_index
        gathered = _gather_rows(hidden_states, gi)
        glob = self.attention.self.global_attention(hidden_states, gathered, key_padding_mask)
        attn = self.attention.output(glob.flatten(2).to(gathered.dtype), gathered)
        rows = self.ff_chunk(attn)
        return hidden_states.index_put((gi.batch, gi.pos), rows[gi.batch, gi.slot])


class LongformerEncoder(nn.Module):
    def __init__(self, config: LongformerConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList(
            [LongformerLayer(config, layer_id=i) for i in range(config.num_hidden_layers)]
        )
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        output_hidden_states: bool = False,
        last_layer_global_rows_only: bool = False,
        **masks: Any,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """`last_layer_global_rows_only`: the last layer computes only the global rows (see
        `LongformerLayer.forward_global_rows`); the other rows of the result are stale."""
        all_hidden = (hidden_states,) if output_hidden_states else None
        layers = list(self.layer)
        last = layers.pop() if last_layer_global_rows_only else None
        for layer in layers:
            hidden_states = layer(hidden_states, **masks)
            if all_hidden is not None:
                all_hidden = all_hidden + (hidden_states,)
        if last is not None:
            hidden_states = last.forward_global_rows(hidden_states, **masks)
        return hidden_states, all_hidden


class LongformerPooler(nn.Module):
    def __init__(self, config: LongformerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class LongformerLMHead(nn.Module):
    """RoBERTa's MLM head: dense, gelu, LayerNorm, decoder (tied to the word embeddings)."""

    def __init__(self, config: LongformerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, features: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.decoder(self.layer_norm(gelu(self.dense(features))))


class LongformerClassificationHead(nn.Module):
    """Sentence-level head on the first token (`<s>`)."""

    def __init__(self, config: LongformerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        x = self.dropout(hidden_states[:, 0, :])
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)


# --------------------------------------------------------------------------- models


class LongformerPreTrainedModel(PreTrainedModel):
    config_class = LongdocConfig
    base_model_prefix = "longformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LongformerSelfAttention"]

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' defaults (normal(0, initializer_range) for linears and embeddings, zero
        padding rows, unit LayerNorms) plus the LM head's extra bias, as RoBERTa does."""
        super()._init_weights(module)
        if isinstance(module, LongformerLMHead):
            init.zeros_(module.bias)


def refuse_attention_outputs(output_attentions: bool | None, config: LongformerConfig) -> None:
    wanted = output_attentions if output_attentions is not None else config.output_attentions
    if wanted:
        raise NotImplementedError(
            "output_attentions=True is not supported: the attention kernels never materialise "
            "attention probabilities (use transformers' LongformerModel to inspect them)"
        )


class LongformerModel(LongformerPreTrainedModel):
    """The bare encoder; same call signature and outputs as transformers' `LongformerModel`."""

    def __init__(self, config: LongformerConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.config = config
        if isinstance(config.attention_window, int):  # as transformers: one value per layer
            layer_window(config, 0)
            config.attention_window = [config.attention_window] * config.num_hidden_layers
        self.embeddings = LongformerEmbeddings(config)
        self.encoder = LongformerEncoder(config)
        self.pooler = LongformerPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def _layer_masks(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        global_attention_mask: torch.Tensor | None,
    ) -> dict[str, Any]:
        """Check the inputs and turn the HF-style masks into what every layer takes, once per
        forward: `key_padding_mask` (None when nothing is padding, so short unpadded inputs run
        unmasked attention), `global_mask` (never on padding), its `global_index` and an empty
        `mask_cache` (see `kernels.attention`)."""
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        if input_ids is not None:
            self.warn_if_padding_and_no_attention_mask(input_ids, attention_mask)
            shape, device = input_ids.shape, input_ids.device
        elif inputs_embeds is not None:
            shape, device = inputs_embeds.shape[:2], inputs_embeds.device
        else:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        if len(shape) != 2:
            raise ValueError(f"expected (batch, seq) inputs, got shape {tuple(shape)}")
        valid = (
            attention_mask.to(device) != 0
            if attention_mask is not None
            else torch.ones(shape, dtype=torch.bool, device=device)
        )
        global_index = global_mask = None
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

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        last_layer_global_rows_only: bool = False,
        **kwargs: Any,
    ) -> tuple | LongformerBaseModelOutputWithPooling:
        """`attention_mask`: 1 = token, 0 = padding. `global_attention_mask`: 1 = global
        (attends to and is attended by every token), 0 = local. Padding is never global.
        `last_layer_global_rows_only` (ours, for heads that read only global rows): the last
        hidden state is exact at the global rows only (see `LongformerEncoder.forward`)."""
        refuse_attention_outputs(output_attentions, self.config)
        output_hidden_states = (
            output_hidden_states
            if output_hidden_states is not None
            else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        masks = self._layer_masks(input_ids, inputs_embeds, attention_mask, global_attention_mask)
        embedding_output = self.embeddings(
            input_ids=input_ids,
            position_ids=position_ids,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
        )
        sequence_output, all_hidden = self.encoder(
            embedding_output,
            output_hidden_states=output_hidden_states,
            last_layer_global_rows_only=last_layer_global_rows_only
            and masks["global_index"] is not None,
            **masks,
        )
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        if not return_dict:
            rest = (all_hidden,) if all_hidden is not None else ()
            return (sequence_output, pooled_output) + rest
        return LongformerBaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            hidden_states=all_hidden,
        )


def _rest(outputs: Any) -> tuple:
    """The optional outputs after (sequence, pooled) of a tuple-returning base model."""
    return tuple(outputs[2:])


class LongformerForMaskedLM(LongformerPreTrainedModel):
    _tied_weights_keys = {
        "lm_head.decoder.weight": "longformer.embeddings.word_embeddings.weight",
        "lm_head.decoder.bias": "lm_head.bias",
    }

    def __init__(self, config: LongformerConfig):
        super().__init__(config)
        self.longformer = LongformerModel(config, add_pooling_layer=False)
        self.lm_head = LongformerLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head.decoder = new_embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        labelled_logits_only: bool = False,
        **kwargs: Any,
    ) -> tuple | LongformerMaskedLMOutput:
        """`labels`: token ids to predict, -100 where no loss is taken.

        `labelled_logits_only=True` (an extension; needs `labels`) runs the vocabulary projection
        only at the labelled positions and returns their logits as `(n_labelled, vocab)`, in
        row-major order of `labels != -100`. The loss is the same; for MLM at 15% masking this
        avoids ~85% of the largest activation in training (seq x vocab logits and their softmax).
        """
        if labelled_logits_only and labels is None:
            raise ValueError("labelled_logits_only=True needs labels")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.longformer(
            input_ids,
            attention_mask=attention_mask,
            global_attention_mask=global_attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=False,
        )
        sequence_output = outputs[0]
        if labelled_logits_only:
            labels = labels.to(sequence_output.device)
            keep = labels != -100
            logits = self.lm_head(sequence_output[keep])
            loss = CrossEntropyLoss()(logits, labels[keep])
        else:
            logits = self.lm_head(sequence_output)
            loss = None
            if labels is not None:
                labels = labels.to(logits.device)
                loss = CrossEntropyLoss()(logits.view(-1, self.config.vocab_size), labels.view(-1))
        if not return_dict:
            out = (logits,) + _rest(outputs)
            return ((loss,) + out) if loss is not None else out
        hidden = outputs[2] if len(outputs) > 2 else None
        return LongformerMaskedLMOutput(loss=loss, logits=logits, hidden_states=hidden)


class LongformerForSequenceClassification(LongformerPreTrainedModel):
    """Classification/regression on `<s>`; global attention on `<s>` unless told otherwise."""

    def __init__(self, config: LongformerConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.config = config
        self.longformer = LongformerModel(config, add_pooling_layer=False)
        self.classifier = LongformerClassificationHead(config)
        self.post_init()

    def _reads_global_rows_only(
        self,
        attention_mask: torch.Tensor | None,
        global_attention_mask: torch.Tensor,
        output_hidden_states: bool | None,
    ) -> bool:
        """Inference on a global `<s>` reads one row of the last layer: compute only its global
        rows (the same values; the local rows there are work nobody reads). Training keeps the
        whole layer, as does anyone asking for the hidden states."""
        if self.training or output_hidden_states or self.config.output_hidden_states:
            return False
        first = global_attention_mask[:, 0] != 0
        if attention_mask is not None:
            first = first & (attention_mask[:, 0] != 0)
        return bool(first.all())

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> tuple | LongformerSequenceClassifierOutput:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if global_attention_mask is None:  # transformers: global attention on the CLS token
            ref = input_ids if input_ids is not None else inputs_embeds[..., 0]
            global_attention_mask = torch.zeros(ref.shape, dtype=torch.long, device=ref.device)
            global_attention_mask[:, 0] = 1
        outputs = self.longformer(
            input_ids,
            attention_mask=attention_mask,
            global_attention_mask=global_attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=False,
            last_layer_global_rows_only=self._reads_global_rows_only(
                attention_mask, global_attention_mask, output_hidden_states
            ),
        )
        logits = self.classifier(outputs[0])
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if self.config.problem_type is None:
                if self.num_labels == 1:
                    self.config.problem_type = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    self.config.problem_type = "single_label_classification"
                else:
                    self.config.problem_type = "multi_label_classification"
            if self.config.problem_type == "regression":
                if self.num_labels == 1:
                    loss = MSELoss()(logits.squeeze(), labels.squeeze())
                else:
                    loss = MSELoss()(logits, labels)
            elif self.config.problem_type == "single_label_classification":
                loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
            else:
                loss = BCEWithLogitsLoss()(logits, labels)
        if not return_dict:
            out = (logits,) + _rest(outputs)
            return ((loss,) + out) if loss is not None else out
        hidden = outputs[2] if len(outputs) > 2 else None
        return LongformerSequenceClassifierOutput(loss=loss, logits=logits, hidden_states=hidden)


class LongformerForQuestionAnswering(LongformerPreTrainedModel):
    """Extractive QA (start/end logits); global attention on the question tokens (those before
    the first separator) unless `global_attention_mask` is given."""

    def __init__(self, config: LongformerConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.longformer = LongformerModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> tuple | LongformerQuestionAnsweringModelOutput:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if global_attention_mask is None and input_ids is not None:
            global_attention_mask = question_global_mask(input_ids, self.config.sep_token_id)
        outputs = self.longformer(
            input_ids,
            attention_mask=attention_mask,
            global_attention_mask=global_attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=False,
        )
        logits = self.qa_outputs(outputs[0])
        start_logits, end_logits = logits.split(1, dim=-1)
        start_logits = start_logits.squeeze(-1).contiguous()
        end_logits = end_logits.squeeze(-1).contiguous()
        total_loss = None
        if start_positions is not None and end_positions is not None:
            if start_positions.dim() > 1:
                start_positions = start_positions.squeeze(-1)
            if end_positions.dim() > 1:
                end_positions = end_positions.squeeze(-1)
            ignored = start_logits.size(1)  # positions outside the input are ignored
            start_positions = start_positions.to(logits.device).clamp(0, ignored)
            end_positions = end_positions.to(logits.device).clamp(0, ignored)
            loss_fct = CrossEntropyLoss(ignore_index=ignored)
            total_loss = (
                loss_fct(start_logits, start_positions) + loss_fct(end_logits, end_positions)
            ) / 2
        if not return_dict:
            out = (start_logits, end_logits) + _rest(outputs)
            return ((total_loss,) + out) if total_loss is not None else out
        hidden = outputs[2] if len(outputs) > 2 else None
        return LongformerQuestionAnsweringModelOutput(
            loss=total_loss, start_logits=start_logits, end_logits=end_logits, hidden_states=hidden
        )


class LongformerForMultipleChoice(LongformerPreTrainedModel):
    """Inputs `(batch, num_choices, seq)`; one score per choice from the pooled `<s>`. Global
    attention defaults to the tokens after the first `</s></s>`, as in transformers."""

    def __init__(self, config: LongformerConfig):
        super().__init__(config)
        self.longformer = LongformerModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> tuple | LongformerMultipleChoiceModelOutput:
        num_choices = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if global_attention_mask is None and input_ids is not None:
            global_attention_mask = second_segment_global_mask(input_ids, self.config.sep_token_id)

        def flat(x: torch.Tensor | None, keep: int = 1) -> torch.Tensor | None:
            return None if x is None else x.reshape(-1, *x.shape[-keep:])

        outputs = self.longformer(
            flat(input_ids),
            position_ids=flat(position_ids),
            token_type_ids=flat(token_type_ids),
            attention_mask=flat(attention_mask),
            global_attention_mask=flat(global_attention_mask),
            inputs_embeds=flat(inputs_embeds, keep=2),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=False,
        )
        logits = self.classifier(self.dropout(outputs[1])).view(-1, num_choices)
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits, labels.to(logits.device))
        if not return_dict:
            out = (logits,) + _rest(outputs)
            return ((loss,) + out) if loss is not None else out
        hidden = outputs[2] if len(outputs) > 2 else None
        return LongformerMultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=hidden)


# --------------------------------------------------------------------------- Auto classes

AutoConfig.register(LongdocConfig.model_type, LongdocConfig, exist_ok=True)
for _auto, _cls in (
    (AutoModel, LongformerModel),
    (AutoModelForMaskedLM, LongformerForMaskedLM),
    (AutoModelForSequenceClassification, LongformerForSequenceClassification),
    (AutoModelForQuestionAnswering, LongformerForQuestionAnswering),
    (AutoModelForMultipleChoice, LongformerForMultipleChoice),
):
    _auto.register(LongdocConfig, _cls, exist_ok=True)
