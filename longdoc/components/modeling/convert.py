"""Short → long conversion: a RoBERTa-architecture checkpoint becomes a long model.

The recipe of the Longformer paper (section 5): the learned position embeddings are copied over
and over to fill `max_positions` (the model starts out knowing "local position" everywhere,
which the paper found far better than random new positions), the local query/key/value
projections are copied into the global ones, and every layer gets a sliding window. RoBERTa's
positions start at `pad_token_id + 1` (rows 0..pad are never used by real tokens); that offset
is kept, so rows below it are copied as they are and the tiling starts after them.

On inputs no longer than one side of the window the converted model computes exactly what the
original computes (every token still sees every other token), which the tests check.
"""

from __future__ import annotations

import logging
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
from longdoc.components.modeling.model import LongdocConfig, LongformerForMaskedLM, quiet_loading

log = logging.getLogger(__name__)

ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")


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


def long_config(base_config, params: ConvertParams) -> LongdocConfig:
    """The long model's config: the base's fields, longer positions, a window per layer."""
    fields = base_config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "auto_map"):
        fields.pop(key, None)
    offset = base_config.pad_token_id + 1
    windows = params.attention_window
    layers = base_config.num_hidden_layers
    if isinstance(windows, list) and len(windows) != layers:
        raise InputError(
            f"convert.attention_window has {len(windows)} entries for the base's {layers} layers"
        )
    fields.update(
        max_position_embeddings=params.max_positions + offset,
        attention_window=list(windows) if isinstance(windows, list) else [windows] * layers,
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


def convert(params: ConvertParams) -> dict:
    """Convert `params.base` (model + tokenizer dir) into a long model at `params.out`."""
    from transformers import AutoConfig, AutoTokenizer, RobertaForMaskedLM

    if params.base is None:
        raise InputError("convert: no base checkpoint given (--base DIR)")
    base_dir = require_path(params.base, "base checkpoint")
    check_publish_target(Path(params.out), "convert", force=params.force)
    try:
        base_config = AutoConfig.from_pretrained(str(base_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"{base_dir}: cannot read config.json: {exc}".splitlines()[0]) from None
    if base_config.model_type not in ROBERTA_TYPES:
        raise InputError(
            f"{base_dir}: model_type {base_config.model_type!r} is not a RoBERTa architecture "
            f"({', '.join(ROBERTA_TYPES)})"
        )
    base_len = base_config.max_position_embeddings - base_config.pad_token_id - 1
    if params.max_positions < base_len:
        raise InputError(f"convert.max_positions {params.max_positions} < the base's {base_len}")
    with quiet_loading():
        base = RobertaForMaskedLM.from_pretrained(str(base_dir), local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    except Exception as exc:  # transformers raises many types; the user needs one line
        msg = " ".join(str(exc).split())[:300]
        raise InputError(f"cannot load tokenizer from {base_dir}: {msg}") from None
    long = convert_model(base, params)
    tokenizer.model_max_length = params.max_positions
    staging = staging_dir(Path(params.out), "convert")
    long.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    summary = {
        "base": str(base_dir),
        "out": str(params.out),
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
