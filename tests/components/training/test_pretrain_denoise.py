"""Denoising pretraining of an LED (`pretrain.objective: denoise`): a tiny BART converted by
`longdoc convert` trains a few steps to a published checkpoint with a falling loss; a run
interrupted after its first checkpoint resumes to the losses of an uninterrupted one; the
objective must suit the base (MLM refuses an LED, denoising refuses an encoder-only base); DDP on
2 CPU processes matches one process at the same global batch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import transformers
from pyarrow import ipc

from longdoc.components.core.config import (
    ConvertParams,
    ModelParams,
    PretrainParams,
    TrackingParams,
    params_dict,
)
from longdoc.components.core.io import InputError
from longdoc.components.data import tokenize as tok
from longdoc.components.modeling.convert import convert
from longdoc.components.modeling.led import LEDForConditionalGeneration
from longdoc.components.training.pretrain import PackedRows, check_objective, pretrain
from tests.components.test_pretrain import REPO, RUNNER

SEQ = 48
SENTENCES = [
    "the river runs past the old mill.",
    "a heron waits in the reeds.",
    "long documents need long models.",
    "the reader turns the page slowly.",
]


@pytest.fixture(scope="module")
def led_and_shards(tmp_path_factory) -> tuple[Path, Path]:
    """A 1+1-layer LED converted from a random BART (64 positions -> 128, window 16) and
    shards of rows made of whole sentences, with their sentence starts."""
    root = tmp_path_factory.mktemp("denoise")
    tokenizer = tok.train_tokenizer(iter(SENTENCES * 20), vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    config = transformers.BartConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        dropout=0.0,  # no dropout: DDP ranks draw their own masks, the comparison would differ
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
    )
    transformers.BartForConditionalGeneration(config).save_pretrained(root / "bart")
    tokenizer.save_pretrained(root / "bart")
    convert(
        ConvertParams(
            base=root / "bart",
            out=root / "led",
            max_positions=128,
            attention_window=16,
            attention_backend="torch",
        )
    )
    shards = root / "shards"
    tokenizer.save_pretrained(shards / "tokenizer")
    encoded = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in SENTENCES]
    rng = np.random.default_rng(0)
    (shards / "packed").mkdir()
    for split, n in (("train", 16), ("validation", 4)):
        rows, starts = [], []
        for _ in range(n):
            row, row_starts = [], []
            while len(row) < SEQ:
                row_starts.append(len(row))
                row.extend(encoded[rng.integers(len(encoded))])
            rows.append(row[:SEQ])
            starts.append(row_starts)
        schema = tok.packed_schema(len(tokenizer), SEQ, sentences=True)
        ids = pa.FixedSizeListArray.from_arrays(pa.array(np.ravel(rows), pa.uint16()), SEQ)
        batch = pa.record_batch([ids, pa.array(starts, pa.list_(pa.int32()))], schema=schema)
        with ipc.new_file(str(shards / "packed" / f"{split}.arrow"), schema) as w:
            w.write_batch(batch)
    (shards / "manifest.json").write_text(json.dumps({"chars_per_token": 4.0}))
    return root / "led", shards


def _params(led: Path, shards: Path, tmp: Path, name: str, **extra) -> PretrainParams:
    return PretrainParams(
        shards=shards,
        base=led,
        objective="denoise",
        out=tmp / name / "ckpt",
        metrics=tmp / name / "metrics.json",
        steps=4,
        batch_size=2,
        lr=3e-3,
        warmup_steps=1,
        eval_batches=2,
        checkpoint_every=2,
        seed=0,
    ).model_copy(update=extra)


def _run(params: PretrainParams, tmp: Path, on_step=None) -> dict:
    tracking = TrackingParams(uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="t")
    return pretrain(params, ModelParams(), tracking, on_step=on_step)


def _losses(params: PretrainParams) -> dict[int, float]:
    log = Path(params.out) / "train_log.jsonl"
    return {e["step"]: e["loss"] for e in map(json.loads, log.read_text().splitlines())}


class _Interrupted(Exception):
    pass


@pytest.fixture(autouse=True)
def _no_env_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_denoising_trains_an_led_and_resumes_with_the_same_losses(led_and_shards, tmp_path):
    led, shards = led_and_shards
    whole = _params(led, shards, tmp_path, "whole")
    summary = _run(whole, tmp_path)
    losses = _losses(whole)
    assert sorted(losses) == list(range(1, 5))
    assert all(math.isfinite(x) for x in losses.values())
    assert losses[4] < losses[1]  # it learns to reconstruct
    assert math.isfinite(summary["eval_loss"]) and summary["steps"] == 4
    out = LEDForConditionalGeneration.from_pretrained(whole.out)  # a plain LED checkpoint
    assert json.loads((Path(whole.out) / "config.json").read_text())["model_type"] == "led"
    assert out.config.max_encoder_position_embeddings == 128

    def stop_after_3(step: int, loss: float) -> None:  # after the step-2 checkpoint
        if step == 3:
            raise _Interrupted

    cut = _params(led, shards, tmp_path, "cut")
    with pytest.raises(_Interrupted):
        _run(cut, tmp_path, on_step=stop_after_3)
    assert not Path(cut.out).exists()  # nothing published
    _run(cut, tmp_path)  # resumes from step 2
    resumed = _losses(cut)
    assert sorted(resumed) == list(range(1, 5))
    for step in range(1, 5):
        assert resumed[step] == pytest.approx(losses[step], rel=1e-6, abs=1e-7), step


def test_objective_must_suit_the_base(led_and_shards, tmp_path):
    led, shards = led_and_shards
    with pytest.raises(InputError, match="encoder-decoder .led.; masked-LM"):
        check_objective(PretrainParams(base=led, objective="mlm"))
    with pytest.raises(InputError, match="denoise trains an encoder-decoder .* but no base"):
        check_objective(PretrainParams(objective="denoise"))
    with pytest.raises(InputError, match="convert it first"):
        check_objective(PretrainParams(base=led.parent / "bart", objective="denoise"))
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"model_type": "longformer"}))
    with pytest.raises(InputError, match="'longformer' model.*use objective: mlm"):
        check_objective(PretrainParams(base=encoder, objective="denoise"))
    check_objective(PretrainParams(base=encoder, objective="mlm"))
    check_objective(PretrainParams(base=led, objective="denoise"))


def test_shards_without_sentence_starts_are_refused_for_permutation(shards):
    """Packed rows written before tokenize stored sentence starts (here: the MLM tests')."""
    data = PackedRows(shards, "train")
    assert data.rows(0, 2).shape == (2, data.seq_len)  # MLM reads them as before
    with pytest.raises(InputError, match="no sentence_starts .* rerun `longdoc tokenize`"):
        data.sentence_starts(0, 2)


def test_ddp_two_processes_denoise_as_one_process(led_and_shards, tmp_path):
    """Global batch 4: 2 processes x 2 rows (torchrun, gloo) give the losses of 1 process x 4
    rows (the noise is a function of (seed, row), not of the rank that draws it)."""
    led, shards = led_and_shards
    one = _params(led, shards, tmp_path, "one", batch_size=4, checkpoint_every=0)
    two = _params(led, shards, tmp_path, "two", batch_size=2, checkpoint_every=0)
    cfg = {
        "pretrain": params_dict(two),
        "model": params_dict(ModelParams()),
        "tracking": {"uri": f"sqlite:///{tmp_path / 'ddp.db'}", "experiment": "t"},
    }
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.Popen(
        [*cmd, str(script), json.dumps(cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    _run(one, tmp_path)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out.decode()[-4000:]
    a, b = _losses(one), _losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
