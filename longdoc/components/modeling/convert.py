"""Short → long conversion: RoBERTa becomes a Longformer, BART becomes an LED.

The recipe of the Longformer paper (sections 5 and 6): the learned position embeddings are
copied over and over to fill `max_positions` (the model starts out knowing "local position"
everywhere, which the paper found far better than random new positions), the local
query/key/value projections are copied into the global ones, and every (encoder) layer gets a
sliding window. The family follows the base:

- RoBERTa (`roberta`, `xlm-roberta`, `camembert`) -> `LongformerForMaskedLM`, 4096 positions by
  default. RoBERTa's positions start at `pad_token_id + 1` (rows 0..pad are never used by real
  tokens); that offset is kept, so rows below it are copied as they are and the tiling starts
  after them.
- BART (`bart`) -> `LEDForConditionalGeneration` (`modeling.led`), 16384 encoder positions by
  default; the decoder is kept as it was. BART looks up row `i + 2` for token `i` (its 2-row
  offset) while LED looks up row `i`, so the offset is kept by moving every table down two
  rows: LED row `i` is BART row `i + 2` (the two rows BART never reads are dropped), and the
  encoder's learned rows are tiled from there. The base's generation config comes along.

On inputs no longer than one side of the window the converted model computes exactly what the
original computes (every token still sees every other token), which the tests check.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from longdoc.components.core.config import ConvertParams, params_dict
from longdoc.components.core.io import (
    InputError,
    check_publish_target,
    publish_dir,
    require_path,
    staging_dir,
    write_manifest,
)
from longdoc.components.modeling.led import LEDForConditionalGeneration, LongdocLEDConfig
from longdoc.components.modeling.model import LongdocConfig, LongformerForMaskedLM, quiet_loading

log = logging.getLogger(__name__)

ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
BART_TYPES = ("bart",)
DEFAULT_POSITIONS = {"encoder": 4096, "encoder-decoder": 16384}
BART_POSITION_OFFSET = 2  # BartLearnedPositionalEmbedding reads row i + 2 for position i
# BART config fields that mean the same in LEDConfig and are copied as they are
BART_TO_LED_FIELDS = (
    "vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
    "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "encoder_layerdrop",
    "decoder_layerdrop", "activation_function", "dropout", "attention_dropout",
    "activation_dropout", "init_std", "classifier_dropout", "use_cache", "pad_token_id",
    "bos_token_id", "eos_token_id", "decoder_start_token_id", "tie_word_embeddings",
)  # fmt: skip


def tile_positions(
    old: torch.Tensor, new_rows: int, offset: int, init: str = "copy", std: float = 0.02
) -> torch.Tensor:
    """`old` position table (rows 0..offset-1 reserved) tiled to `new_rows` rows.

    `init="random"` keeps the original rows and draws the new ones from N(0, std) instead: the
    baseline the Longformer paper compares copying against.
    """
    new = old.new_empty(new_rows, old.shape[1])
    if init == "random":
        new.normal_(0.0, std)
        new[: len(old)] = old
        return new
    new[:offset] = old[:offset]
    learned = old[offset:]
    k = offset
    while k < new_rows:
        n = min(len(learned), new_rows - k)
        new[k : k + n] = learned[:n]
        k += n
    return new


def _per_layer_windows(params: ConvertParams, layers: int) -> list[int]:
    windows = params.attention_window
    if isinstance(windows, list) and len(windows) != layers:
        raise InputError(
            f"convert.attention_window has {len(windows)} entries for the base's {layers} layers"
        )
    return list(windows) if isinstance(windows, list) else [windows] * layers


def _max_positions(params: ConvertParams, family: str) -> int:
    return params.max_positions or DEFAULT_POSITIONS[family]


def long_config(base_config, params: ConvertParams) -> LongdocConfig:
    """The long model's config: the base's fields, longer positions, a window per layer."""
    fields = base_config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "auto_map"):
        fields.pop(key, None)
    offset = base_config.pad_token_id + 1
    fields.update(
        max_position_embeddings=_max_positions(params, "encoder") + offset,
        attention_window=_per_layer_windows(params, base_config.num_hidden_layers),
        attention_backend=params.attention_backend,
        sep_token_id=getattr(base_config, "sep_token_id", None) or base_config.eos_token_id,
        architectures=["LongformerForMaskedLM"],
    )
    return LongdocConfig(**fields)


def convert_model(base, params: ConvertParams) -> LongformerForMaskedLM:
    """A `LongformerForMaskedLM` holding `base` (a RobertaForMaskedLM)'s weights, converted."""
    config = long_config(base.config, params)
    long = LongformerForMaskedLM(config)
    state = base.state_dict()
    prefix = base.base_model_prefix  # "roberta"
    renamed = {}
    for name, tensor in state.items():
        if name.startswith(prefix + "."):
            name = "longformer." + name[len(prefix) + 1 :]
        renamed[name] = tensor
    pos_key = "longformer.embeddings.position_embeddings.weight"
    old = renamed[pos_key]
    offset = base.config.pad_token_id + 1
    renamed[pos_key] = tile_positions(
        old, config.max_position_embeddings, offset, params.position_init, config.initializer_range
    )
    renamed.pop("longformer.embeddings.position_ids", None)
    renamed.pop("longformer.embeddings.token_type_ids", None)
    for i in range(config.num_hidden_layers):
        p = f"longformer.encoder.layer.{i}.attention.self."
        for proj in ("query", "key", "value"):
            for part in ("weight", "bias"):
                renamed[f"{p}{proj}_global.{part}"] = renamed[f"{p}{proj}.{part}"].clone()
    target = long.state_dict()
    missing = [k for k in target if k not in renamed]
    unexpected = [k for k in renamed if k not in target]
    tied = {"lm_head.decoder.weight", "lm_head.decoder.bias"}
    if set(missing) - tied or unexpected:
        raise InputError(
            f"base checkpoint does not map onto the long model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    long.load_state_dict(renamed, strict=False)
    long.tie_weights()
    return long


def led_config(base_config, params: ConvertParams) -> LongdocLEDConfig:
    """The LED's config: BART's fields, `max_positions` encoder positions, a window per encoder
    layer; the decoder keeps BART's `max_position_embeddings`."""
    if getattr(base_config, "scale_embedding", False):
        raise InputError(
            "the BART base has scale_embedding=True (embeddings times sqrt(d_model)); LED has no "
            "such scale and the embeddings are tied to the LM head, so it cannot be converted"
        )
    fields = {name: getattr(base_config, name) for name in BART_TO_LED_FIELDS}
    fields.update(
        max_encoder_position_embeddings=_max_positions(params, "encoder-decoder"),
        max_decoder_position_embeddings=base_config.max_position_embeddings,
        attention_window=_per_layer_windows(params, base_config.encoder_layers),
        attention_backend=params.attention_backend,
        architectures=["LEDForConditionalGeneration"],
    )
    return LongdocLEDConfig(**fields)


_BART_ENCODER_ATTENTION = re.compile(r"^led\.encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.")
_LONGFORMER_NAMES = {"q": "query", "k": "key", "v": "value"}


def _led_state(bart_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BART's parameter names moved to LED's: `model.` -> `led.`, each encoder layer's
    q/k/v projections -> `longformer_self_attn.{query,key,value}` and copied into the global
    ones, `out_proj` -> `self_attn.output`. Position tables are left to the caller."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in bart_state.items():
        if name.startswith("model."):
            name = "led." + name[len("model.") :]
        match = _BART_ENCODER_ATTENTION.match(name)
        if match is None:
            state[name] = tensor
            continue
        layer, proj = match.groups()
        part = name[match.end() :]
        prefix = f"led.encoder.layers.{layer}.self_attn."
        if proj == "out":
            state[f"{prefix}output.{part}"] = tensor
            continue
        local = f"{prefix}longformer_self_attn.{_LONGFORMER_NAMES[proj]}"
        state[f"{local}.{part}"] = tensor
        state[f"{local}_global.{part}"] = tensor.clone()
    return state


def convert_bart(base, params: ConvertParams) -> LEDForConditionalGeneration:
    """An `LEDForConditionalGeneration` holding `base` (a BartForConditionalGeneration)'s
    weights, converted (see the module docstring for the positions)."""
    config = led_config(base.config, params)
    led = LEDForConditionalGeneration(config)
    state = _led_state(base.state_dict())
    for side in ("encoder", "decoder"):
        key = f"led.{side}.embed_positions.weight"
        learned = state[key][BART_POSITION_OFFSET:]
        if side == "encoder":
            rows = config.max_encoder_position_embeddings
            learned = tile_positions(learned, rows, 0, params.position_init, config.init_std)
        state[key] = learned
    target = led.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        raise InputError(
            f"BART checkpoint does not map onto LED: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    led.load_state_dict(state)
    led.tie_weights()
    led.generation_config = base.generation_config
    return led


# --------------------------------------------------------------------------- the stage


def _base_family(base_dir: Path) -> tuple[object, str]:
    """The base's config and family ("encoder" for RoBERTa, "encoder-decoder" for BART)."""
    from transformers import AutoConfig

    try:
        base_config = AutoConfig.from_pretrained(str(base_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"{base_dir}: cannot read config.json: {exc}".splitlines()[0]) from None
    if base_config.model_type in ROBERTA_TYPES:
        return base_config, "encoder"
    if base_config.model_type in BART_TYPES:
        return base_config, "encoder-decoder"
    raise InputError(
        f"{base_dir}: model_type {base_config.model_type!r} is not a RoBERTa architecture "
        f"({', '.join(ROBERTA_TYPES)}) nor a BART architecture ({', '.join(BART_TYPES)})"
    )


def _load_base(base_dir: Path, family: str):
    from transformers import BartForConditionalGeneration, RobertaForMaskedLM

    cls = RobertaForMaskedLM if family == "encoder" else BartForConditionalGeneration
    with quiet_loading():
        return cls.from_pretrained(str(base_dir), local_files_only=True)


def _load_tokenizer(base_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    except Exception as exc:  # transformers raises many types; the user needs one line
        msg = " ".join(str(exc).split())[:300]
        raise InputError(f"cannot load tokenizer from {base_dir}: {msg}") from None


def convert(params: ConvertParams) -> dict:
    """Convert `params.base` (model + tokenizer dir) into a long model at `params.out`."""
    if params.base is None:
        raise InputError("convert: no base checkpoint given (--base DIR)")
    base_dir = require_path(params.base, "base checkpoint")
    check_publish_target(Path(params.out), "convert", force=params.force)
    base_config, family = _base_family(base_dir)
    params = params.model_copy(update={"max_positions": _max_positions(params, family)})
    if family == "encoder":
        base_len = base_config.max_position_embeddings - base_config.pad_token_id - 1
    else:
        base_len = base_config.max_position_embeddings
    if params.max_positions < base_len:
        raise InputError(f"convert.max_positions {params.max_positions} < the base's {base_len}")
    base = _load_base(base_dir, family)
    tokenizer = _load_tokenizer(base_dir)
    long = convert_model(base, params) if family == "encoder" else convert_bart(base, params)
    tokenizer.model_max_length = params.max_positions
    staging = staging_dir(Path(params.out), "convert")
    long.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    summary = {
        "base": str(base_dir),
        "out": str(params.out),
        "family": family,
        "architecture": type(long).__name__,
        "base_positions": base_len,
        "max_positions": params.max_positions,
        "attention_window": long.config.attention_window,
        "layers": long.config.num_hidden_layers,
        "n_parameters": sum(p.numel() for p in long.parameters()),
    }
    publish_dir(staging, Path(params.out), stage="convert", force=params.force)
    write_manifest(
        params.out,
        stage="convert",
        inputs={"base": str(base_dir)},
        params=params_dict(params),
        results=summary,
    )
    log.info("convert: %s -> %s (%d positions)", base_dir, params.out, params.max_positions)
    return summary
