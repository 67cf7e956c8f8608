"""Denoising pretraining of an LED (`pretrain.objective: denoise`): a tiny BART converted by
`longdoc convert` trains a few steps to a published checkpoint with a falling loss; a run
interrupted after its first checkpoint resumes to the losses of an uninterrupted one; the
objective must suit the base (MLM refuses an LED, denoising refuses an encoder-only base); ddp,
fsdp and tp on 2 CPU processes match one process at the same global batch, and a run killed in
one mode resumes in another."""

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
from tests.components.test_pretrain import REPO
from tests.components.training.test_parallel_pretrain import _finish, _kill_after_checkpoint

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


#: Several pretraining runs in one torchrun launch (the ranks start torch once); a config's
#: "pause" sleeps after each step from its first checkpoint on, so that the test can kill it.
MANY = """
import json, sys, time
import torch.distributed as dist
from longdoc.components.core.config import ModelParams, PretrainParams, TrackingParams
from longdoc.components.training.pretrain import pretrain
dist.init_process_group("gloo")
for cfg in map(json.loads, sys.argv[1:]):
    pause = cfg.pop("pause", 0.0)
    def on_step(step, loss, cfg=cfg, pause=pause):
        if pause and step >= cfg["pretrain"]["checkpoint_every"]:
            time.sleep(pause)
    pretrain(PretrainParams(**cfg["pretrain"]), ModelParams(**cfg["model"]),
             TrackingParams(**cfg["tracking"]), on_step=on_step)
dist.destroy_process_group()
"""


def _launch(tmp: Path, *runs: tuple[PretrainParams, str, float]) -> subprocess.Popen:
    """One 2-rank torchrun launch running `runs` (params, parallel mode, pause) in turn."""
    script = tmp / "many.py"
    script.write_text(MANY)
    configs = [
        {
            "pretrain": {**params_dict(params), "parallel": mode, "tp_size": 2},
            "model": params_dict(ModelParams()),
            "tracking": {"uri": f"sqlite:///{tmp / mode}.db", "experiment": "t"},
            "pause": pause,
        }
        for params, mode, pause in runs
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(tmp / "many.py"), *map(json.dumps, configs)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow  # three 2-rank runs and a reference: ~70 s on 2 cores
def test_ddp_fsdp_and_tp_denoise_as_one_process_and_resume_across_modes(led_and_shards, tmp_path):
    """Global batch 4: 2 processes x 2 rows (ddp, fsdp) or one tp pair x 4 rows (one head per
    rank) give the losses of 1 process x 4 rows (the noise is a function of (seed, row), not of
    the rank that draws it). An fsdp run killed after its step-2 checkpoint (sharded) resumes
    under tp with the same losses, and publishes an LED that transformers' class computes with
    as ours does, with the weights of the 1-process run."""
    led, shards = led_and_shards
    one = _params(led, shards, tmp_path, "one", batch_size=4, checkpoint_every=0)
    ddp = _params(led, shards, tmp_path, "ddp", batch_size=2, checkpoint_every=0)
    chain = _params(led, shards, tmp_path, "chain", batch_size=2)
    proc = _launch(tmp_path, (ddp, "ddp", 0.0), (chain, "fsdp", 2.0))
    _run(one, tmp_path)  # meanwhile
    _kill_after_checkpoint(proc, Path(chain.out).with_name("ckpt.ckpt"), 2)
    assert (Path(chain.out).with_name("ckpt.ckpt") / "step-00000002" / "shards").is_dir()
    resumed = chain.model_copy(update={"batch_size": 4})  # tp: one replica reads all 4 rows
    _finish(_launch(tmp_path, (resumed, "tp", 0.0)))
    expected = _losses(one)
    assert sorted(expected) == [1, 2, 3, 4]
    for got in (_losses(ddp), _losses(chain)):
        assert sorted(got) == sorted(expected)
        for step in expected:
            assert got[step] == pytest.approx(expected[step], rel=1e-4), step

    ours = LEDForConditionalGeneration.from_pretrained(chain.out).eval()
    theirs = transformers.LEDForConditionalGeneration.from_pretrained(chain.out).eval()
    ids = torch.randint(
        5, ours.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0)
    )
    ids[:, 0] = ours.config.bos_token_id
    decoder_ids = ids[:, :12]
    with torch.no_grad():
        a = ours(input_ids=ids, decoder_input_ids=decoder_ids).logits
        b = theirs(input_ids=ids, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    want = LEDForConditionalGeneration.from_pretrained(one.out).state_dict()
    for name, tensor in ours.state_dict().items():
        torch.testing.assert_close(tensor, want[name], rtol=1e-3, atol=1e-4, msg=name)


def test_tensor_parallel_refuses_a_size_that_splits_no_whole_heads(led_and_shards):
    """Checked before anything is sharded: every attention (the LED's encoder, decoder
    self- and cross-attention) must split into whole heads; a model without blocks refuses."""
    from types import SimpleNamespace

    from longdoc.components.training import parallel

    led = LEDForConditionalGeneration.from_pretrained(led_and_shards[0])  # 2 heads everywhere
    env = SimpleNamespace(tp_size=3, mesh={"tp": SimpleNamespace(get_local_rank=lambda: 0)})
    with pytest.raises(ValueError, match="tp_size=3 does not divide the 2 attention heads"):
        parallel.prepare(led, SimpleNamespace(**vars(env), mode="tp"))
    with pytest.raises(ValueError, match="no Longformer or LED layers"):
        parallel.prepare(torch.nn.Linear(2, 2), SimpleNamespace(**vars(env), mode="fsdp"))
