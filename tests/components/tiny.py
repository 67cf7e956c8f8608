"""Tiny random-init checkpoints (model + a tokenizer trained on a few sentences) that tests
build in a second; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

from longdoc.components.core.config import ModelParams
from longdoc.components.data.tokenize import train_tokenizer
from longdoc.components.modeling.model import LongformerForMaskedLM, make_config


def tiny_checkpoint(
    path: Path,
    texts: list[str],
    cls: type = LongformerForMaskedLM,
    *,
    vocab_size: int = 300,
    hidden_size: int = 16,
    attention_window: int = 8,
    max_positions: int = 130,
    seed: int = 0,
    **config_extra,
):
    """Save a 1-layer, 2-head `cls` and its tokenizer at `path`; return the tokenizer."""
    tokenizer = train_tokenizer(iter(texts * 40), vocab_size=vocab_size, min_frequency=1)
    config = make_config(
        ModelParams(
            hidden_size=hidden_size,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=2 * hidden_size,
            attention_window=attention_window,
            max_position_embeddings=max_positions,
        ),
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **config_extra,
    )
    torch.manual_seed(seed)
    cls(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return tokenizer
