"""Short -> long conversion: a random-init RoBERTa becomes a long model that computes the same
hidden states on inputs within one side of the window, with the position table tiled."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from longdoc.components.core.config import ConvertParams
from longdoc.components.core.io import InputError
from longdoc.components.data import tokenize as tok
from longdoc.components.modeling.convert import convert, tile_positions
from longdoc.components.modeling.model import LongformerForMaskedLM, LongformerModel

TEXTS = ["the long model reads whole documents, not the first five hundred tokens"] * 20


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("roberta")
    tokenizer = tok.train_tokenizer(iter(TEXTS), vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    config = transformers.RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,  # 64 tokens + RoBERTa's offset of 2
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    model = transformers.RobertaForMaskedLM(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_converted_model_matches_roberta_within_window(roberta_dir, tmp_path):
    out = tmp_path / "long"
    params = ConvertParams(
        base=roberta_dir,
        out=out,
        max_positions=200,
        attention_window=128,
        attention_backend="torch",
    )
    summary = convert(params)
    assert summary["max_positions"] == 200 and summary["base_positions"] == 64
    assert json.loads((out / "manifest.json").read_text())["stage"] == "convert"
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 200

    roberta = transformers.RobertaModel.from_pretrained(roberta_dir, add_pooling_layer=False)
    long = LongformerModel.from_pretrained(out, add_pooling_layer=False).eval()
    assert long.config.attention_window == [128, 128]
    assert long.config.max_position_embeddings == 202

    # positions: rows 0-1 kept, learned rows 2..65 tiled over 2..201
    old = roberta.embeddings.position_embeddings.weight
    new = long.embeddings.position_embeddings.weight
    assert torch.equal(new[:66], old)
    assert torch.equal(new[66:130], old[2:66])
    assert torch.equal(new[194:202], old[2:10])
    # global projections start as copies of the local ones
    attn = long.encoder.layer[1].attention.self
    assert torch.equal(attn.query_global.weight, attn.query.weight)
    assert torch.equal(attn.value_global.bias, attn.value.bias)

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 300, (2, 60), generator=g)
    ids[:, 0] = 0
    ids[1, 50:] = 1  # padding
    mask = (ids != 1).long()
    with torch.no_grad():
        ref = roberta(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = long(input_ids=ids, attention_mask=mask).last_hidden_state
        glob = torch.zeros_like(mask)
        glob[:, 0] = 1
        ours_g = long(input_ids=ids, attention_mask=mask, global_attention_mask=glob)
    keep = mask.bool()
    assert (ref - ours)[keep].abs().max().item() <= 1e-4
    assert (ref - ours_g.last_hidden_state)[keep].abs().max().item() <= 1e-4

    # the MLM head came along (tied to the word embeddings) and the model runs past 64 tokens
    mlm = LongformerForMaskedLM.from_pretrained(out)
    long_ids = torch.randint(5, 300, (1, 190), generator=g)
    assert mlm(input_ids=long_ids).logits.shape == (1, 190, len(mlm.lm_head.bias))


def test_non_roberta_base_is_rejected(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base/config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(InputError, match="not a RoBERTa architecture"):
        convert(ConvertParams(base=tmp_path / "base", out=tmp_path / "o"))
    with pytest.raises(InputError, match="not found"):
        convert(ConvertParams(base=tmp_path / "missing", out=tmp_path / "o"))


def test_random_position_init_keeps_the_original_rows():
    old = torch.randn(10, 4)
    new = tile_positions(old, 30, offset=2, init="random")
    assert torch.equal(new[:10], old)
    assert not torch.equal(new[10:18], old[2:10])
    copied = tile_positions(old, 30, offset=2)
    assert torch.equal(copied[10:18], old[2:10]) and torch.equal(copied[26:30], old[2:6])
