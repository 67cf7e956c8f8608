"""Pretraining: resumable after kill -9 with the same subsequent losses, DDP on 2 CPU processes
matching one process at the same global batch, gradient accumulation matching a big batch; the
MLM loss path against transformers' gradients; published global projections copied from local.

The shards are made here directly (tokenizer + packed Arrow files + manifest) so these tests do
not depend on the ingest/tokenize stages; the model is tiny and sequences are 32 tokens.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pytest
from pyarrow import ipc

from longdoc.components.core.config import ModelParams, PretrainParams, TrackingParams, params_dict
from longdoc.components.data import tokenize as tok
from longdoc.components.training.pretrain import pretrain

REPO = Path(__file__).resolve().parents[2]
SEQ = 32
MODEL = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    attention_window=16,
    max_position_embeddings=64,
    attention_backend="torch",
)

# The runner every subprocess uses: params as JSON on argv; optional pause (seconds) per step
# after the first checkpoint, so the parent has time to kill -9 it mid-run.
RUNNER = """
import json, sys, time
from longdoc.components.core.config import ModelParams, PretrainParams, TrackingParams
from longdoc.components.training.pretrain import pretrain
cfg = json.loads(sys.argv[1])
pause = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
def on_step(step, loss):
    if pause and step >= cfg["pretrain"]["checkpoint_every"]:
        time.sleep(pause)
pretrain(PretrainParams(**cfg["pretrain"]), ModelParams(**cfg["model"]),
         TrackingParams(**cfg["tracking"]), on_step=on_step)
"""


def _write_packed(path: Path, rows: np.ndarray) -> None:
    schema = tok.packed_schema(400, SEQ)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1), pa.uint16()), SEQ)
    with ipc.new_file(str(path), schema) as w:
        for i in range(0, len(rows), 8):  # several record batches, to cross their boundaries
            w.write_batch(pa.record_batch([arr[i : i + 8]], schema=schema))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    texts = ["long documents need long models and patient readers"] * 20
    tokenizer = tok.train_tokenizer(iter(texts), vocab_size=300, min_frequency=1)
    tokenizer.save_pretrained(out / "tokenizer")
    rng = np.random.default_rng(0)
    (out / "packed").mkdir()
    for split, n in (("train", 20), ("validation", 4)):
        rows = rng.integers(5, len(tokenizer), size=(n, SEQ))
        rows[:, 0] = 0
        _write_packed(out / "packed" / f"{split}.arrow", rows)
    (out / "manifest.json").write_text(json.dumps({"chars_per_token": 4.0}))
    return out


def _cfg(shards: Path, tmp: Path, name: str, db: str | None = None, **pretrain) -> dict:
    p = PretrainParams(
        shards=shards,
        out=tmp / name / "ckpt",
        metrics=tmp / name / "metrics.json",
        steps=8,
        batch_size=2,
        warmup_steps=2,
        eval_batches=1,
        checkpoint_every=3,
        seed=0,
    ).model_copy(update=pretrain)
    return {
        "pretrain": params_dict(p),
        "model": params_dict(ModelParams(**MODEL)),
        "tracking": {"uri": f"sqlite:///{tmp / (db or name)}.db", "experiment": "t"},
    }


def _run(cfg: dict, pause: float = 0.0, torchrun: int = 0) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-c", RUNNER, json.dumps(cfg), str(pause)]
    if torchrun:
        script = Path(cfg["pretrain"]["out"]).parent / "runner.py"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(RUNNER)
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={torchrun}",
            str(script),
            json.dumps(cfg),
        ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _in_process(cfg: dict) -> None:
    pretrain(
        PretrainParams(**cfg["pretrain"]),
        ModelParams(**cfg["model"]),
        TrackingParams(**cfg["tracking"]),
    )


def _finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out.decode()[-4000:]


def _losses(cfg: dict) -> dict[int, float]:
    log = Path(cfg["pretrain"]["out"]) / "train_log.jsonl"
    return {e["step"]: e["loss"] for e in map(json.loads, log.read_text().splitlines())}


def _logged(ckpt_root: Path) -> int:
    """The last step in a running pretraining's loss log (0 before any)."""
    log = ckpt_root / "log.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return max((json.loads(x)["step"] for x in lines if x.endswith("}")), default=0)


@pytest.fixture(autouse=True)
def _no_env_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_resume_after_kill_9_gives_the_same_losses(shards, tmp_path, monkeypatch):
    whole = _cfg(shards, tmp_path, "whole", db="inproc")
    killed = _cfg(shards, tmp_path, "killed")
    proc = _run(killed, pause=1.5)  # slow after its first checkpoint: room to kill it
    _in_process(whole)  # the uninterrupted reference, meanwhile
    ckpt_root = Path(killed["pretrain"]["out"]).with_name("ckpt.ckpt")
    deadline = time.monotonic() + 180
    while not (ckpt_root / "step-00000003" / "state.json").exists() or _logged(ckpt_root) < 4:
        assert proc.poll() is None and time.monotonic() < deadline, "no step after checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # in step 4's pause: step 4 ran after the checkpoint
    out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, out.decode()[-3000:]
    assert not Path(killed["pretrain"]["out"]).exists()  # nothing published
    assert 4 <= _logged(ckpt_root) < 8  # killed mid-run, a step after the first checkpoint

    _in_process(killed)  # the rerun resumes from step 3
    a, b = _losses(whole), _losses(killed)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in range(1, 9):
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step
    assert not ckpt_root.exists()  # a finished run cleans up its resumable checkpoints
    assert json.loads(Path(killed["pretrain"]["metrics"]).read_text())["steps"] == 8
    # MLflow holds each step's loss once: the killed run sent its steps up to the checkpoint
    # (batched, flushed before it); the steps it ran after it were redone and sent by the rerun
    client = mlflow.MlflowClient(killed["tracking"]["uri"])
    (run,) = client.search_runs(client.get_experiment_by_name("t").experiment_id)
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 9))
    for m in history:
        assert m.value == pytest.approx(b[m.step], rel=1e-6), m.step


@pytest.mark.slow  # two ranks under torchrun and a reference run: ~35 s
def test_ddp_two_processes_match_one_process(shards, tmp_path):
    """Same global batch of 4 rows: 1 process x 4, 2 processes x 2 (torchrun, gloo), and
    1 process x 1 row x 4 accumulation steps; dropout off so only summation order differs."""
    model = {**MODEL, "dropout": 0.0}
    common = dict(steps=4, checkpoint_every=0)
    one = _cfg(shards, tmp_path, "one", db="inproc", batch_size=4, **common)
    two = _cfg(shards, tmp_path, "two", batch_size=2, **common)
    accum = _cfg(shards, tmp_path, "accum", db="inproc", batch_size=1, grad_accum=4, **common)
    for cfg in (one, two, accum):
        cfg["model"] = params_dict(ModelParams(**model))
    proc = _run(two, torchrun=2)
    _in_process(one)
    _in_process(accum)
    _finish(proc)
    a, b, c = _losses(one), _losses(two), _losses(accum)
    assert sorted(a) == sorted(b) == sorted(c) == [1, 2, 3, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
        assert c[step] == pytest.approx(a[step], rel=1e-4), step


def test_bf16_and_gradient_checkpointing_follow_the_fp32_run(shards, tmp_path):
    """The two memory options together (bf16 autocast + recomputation) train the same model as
    plain fp32, up to bf16 rounding: step losses agree within 2%."""
    common = dict(steps=6, checkpoint_every=0)
    fp32 = _cfg(shards, tmp_path, "fp32", db="inproc", **common)
    bf16 = _cfg(shards, tmp_path, "bf16", db="inproc", **common)
    bf16["pretrain"].update(bf16=True, gradient_checkpointing=True)
    for cfg in (fp32, bf16):
        _in_process(cfg)
    a, b = _losses(fp32), _losses(bf16)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert a != b  # bf16 really was in effect
    for step in a:
        assert math.isfinite(b[step]) and b[step] == pytest.approx(a[step], rel=2e-2), step


def test_published_checkpoint_has_global_projections_copied_from_the_local_ones(shards, tmp_path):
    """MLM marks no token global, so the global q/k/v never train; pretraining publishes them as
    copies of the trained local ones (Longformer's conversion rule), not as random init."""
    import torch

    from longdoc.components.inference.cloze import MaskedLM
    from longdoc.components.modeling.model import LongformerForMaskedLM

    cfg = _cfg(shards, tmp_path, "globals", steps=2, checkpoint_every=0)
    _in_process(cfg)
    out = Path(cfg["pretrain"]["out"])
    attention = LongformerForMaskedLM.from_pretrained(out).longformer.encoder.layer[0].attention
    for name in ("query", "key", "value"):
        local, glob = getattr(attention.self, name), getattr(attention.self, f"{name}_global")
        assert local.bias.any()  # trained (a fresh bias is all zero)
        assert torch.equal(glob.weight, local.weight) and torch.equal(glob.bias, local.bias)
    assert MaskedLM.from_checkpoint(out, device="cpu").global_projections == "copied from local"


def test_the_mlm_training_loss_has_transformers_gradients(shards):
    """The trainer's MLM path (dynamic masking, labelled-positions-only head, summed loss) gives
    the gradients of transformers' LongformerForMaskedLM with a plain loss on the same weights
    and batch (a float64 model; the trainer's float32 loss limits the agreement): the slow start
    of pretraining from scratch is not our model's or trainer's doing."""

    import torch
    import transformers

    from longdoc.components.modeling.model import LongformerForMaskedLM, make_config
    from longdoc.components.training.pretrain import MaskedLM, PackedRows

    tokenizer = tok.load_tokenizer(shards)
    params = ModelParams(**{**MODEL, "dropout": 0.0})
    config = make_config(params, vocab_size=len(tokenizer), pad_token_id=1, bos_token_id=0,
                         eos_token_id=2)  # fmt: skip
    torch.manual_seed(0)
    ours = LongformerForMaskedLM(config).double()
    hf_fields = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "dtype")}
    hf = transformers.LongformerForMaskedLM(transformers.LongformerConfig(**hf_fields)).double()
    hf.load_state_dict(ours.state_dict())
    objective = MaskedLM(tokenizer, len(tokenizer), probability=0.3)
    batch = objective.batch(PackedRows(shards), first=0, count=4, seed=0)
    count = objective.targets(batch)
    assert count > 0
    (objective.loss_sum(ours, batch, torch.device("cpu")) / count).backward()
    hf(input_ids=batch[0], labels=batch[1]).loss.backward()
    theirs = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        if p.grad is None or name.endswith("key.bias"):  # softmax ignores it: gradient ~0 noise
            continue
        # the trainer takes the loss in float32 (`loss_sum`): agreement to float32 rounding
        scale = float(theirs[name].grad.abs().max())
        torch.testing.assert_close(p.grad, theirs[name].grad, rtol=0, atol=1e-6 * scale, msg=name)


def test_piece_training_resumes_and_publishes_tiled_positions(shards, tmp_path):
    """`piece_len`: training on 8-token pieces of the 32-token rows (4 a row: batch_size 1 row
    is a step of 4 pieces) resumes to the same losses after an interruption, and the published
    long model's positions beyond the first 8 are copies of them (Longformer's copy rule)."""
    import torch

    from longdoc.components.modeling.model import LongformerForMaskedLM
    from longdoc.components.training.pretrain import PackedRows, PiecedRows

    rows = PackedRows(shards)
    pieces = PiecedRows(rows, 8)
    assert pieces.seq_len == 8 and pieces.n_rows == 4 * rows.n_rows
    # piece 6 is row 1's third quarter; the stream wraps around like the rows'
    assert torch.equal(pieces.rows(6, 1)[0], rows.rows(1, 1)[0, 16:24])
    assert torch.equal(pieces.rows(pieces.n_rows - 1, 2), pieces.rows(-1 % pieces.n_rows, 2))
    assert torch.equal(pieces.rows(pieces.n_rows, 1), pieces.rows(0, 1))

    whole = _cfg(shards, tmp_path, "pieces", piece_len=8, batch_size=1)
    stopped = _cfg(shards, tmp_path, "pieces_stopped", piece_len=8, batch_size=1)

    def interrupt(step, loss):
        if step == 5:  # after the step-3 checkpoint: the rerun resumes from there
            raise KeyboardInterrupt

    _in_process(whole)
    with pytest.raises(KeyboardInterrupt):
        pretrain(
            PretrainParams(**stopped["pretrain"]),
            ModelParams(**stopped["model"]),
            TrackingParams(**stopped["tracking"]),
            on_step=interrupt,
        )
    assert not Path(stopped["pretrain"]["out"]).exists()
    _in_process(stopped)
    a, b = _losses(whole), _losses(stopped)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step
    metrics = json.loads(Path(whole["pretrain"]["metrics"]).read_text())
    assert metrics["tokens_seen"] == 8 * 4 * 8  # steps x pieces (1 row's) x piece_len

    model = LongformerForMaskedLM.from_pretrained(Path(whole["pretrain"]["out"]))
    table = model.longformer.embeddings.position_embeddings.weight
    offset = model.config.pad_token_id + 1
    learned = table[offset : offset + 8]
    fresh = LongformerForMaskedLM(model.config).longformer.embeddings.position_embeddings.weight
    assert not torch.allclose(learned, fresh[offset : offset + 8])  # trained
    for k in range(offset + 8, len(table), 8):
        n = min(8, len(table) - k)
        assert torch.equal(table[k : k + n], learned[:n]), k


def test_piece_len_steps_aside_where_it_does_not_apply(tmp_path, caplog):
    """One params.yaml serves every run: pieces for MLM from a fresh init with rows longer than
    a piece; whole rows, with a line saying why, for a base, for denoising, for short rows."""
    import logging

    from longdoc.components.training.pretrain import _piece_len

    caplog.set_level(logging.INFO, logger="longdoc.components.training.pretrain")
    assert _piece_len(PretrainParams(piece_len=32), 128) == 32
    assert _piece_len(PretrainParams(piece_len=None), 128) is None
    assert caplog.messages == []
    assert _piece_len(PretrainParams(piece_len=32, base=tmp_path), 128) is None
    assert f"does not apply to base {tmp_path}" in caplog.messages[-1]
    assert _piece_len(PretrainParams(piece_len=32, objective="denoise", base=tmp_path), 128) is None
    assert _piece_len(PretrainParams(piece_len=32, objective="denoise"), 128) is None
    assert "does not apply to objective denoise" in caplog.messages[-1]
    assert _piece_len(PretrainParams(piece_len=32), 32) is None
    assert "rows are 32 tokens already" in caplog.messages[-1]
