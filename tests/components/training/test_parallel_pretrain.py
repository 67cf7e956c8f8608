"""Pretraining in the sharded modes (training.parallel) on 2 CPU processes (torchrun, gloo):
FSDP2 and tensor parallelism follow the 1-process losses step for step; a run killed with
SIGKILL after a checkpoint resumes, in the other mode and in one plain process, and continues
the same losses; the published checkpoint loads into transformers' own class. On 4 ranks, tp
and data parallelism combine on a 2-D mesh (tp_size 2 x dp 2) with the same losses.

The tiny model and shards are test_pretrain's (hidden 32, 2 heads: tp gives each rank one
head); dropout is off so only float summation order differs between layouts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import transformers

from longdoc.components.core.config import ModelParams, params_dict
from longdoc.components.modeling.model import LongformerForMaskedLM
from tests.components.test_pretrain import MODEL, REPO, RUNNER, _cfg, _in_process, _losses

STEPS = 8
PLAIN = {**MODEL, "dropout": 0.0}


def _config(shards: Path, tmp: Path, name: str, mode: str | None, **pretrain) -> dict:
    """Global batch 8 rows in micro-batches of 2, for `mode` on 2 ranks (None: one process).
    tp on 2 ranks is one data-parallel replica, so it accumulates as one process does."""
    accum = 2 if mode in ("ddp", "fsdp") else 4
    cfg = _cfg(shards, tmp, name, batch_size=2, grad_accum=accum, checkpoint_every=2, **pretrain)
    cfg["pretrain"]["parallel"] = mode or "ddp"
    cfg["model"] = params_dict(ModelParams(**PLAIN))
    return cfg


def _torchrun(cfg: dict, pause: float = 0.0, ranks: int = 2) -> subprocess.Popen:
    """`ranks` ranks under one launcher."""
    script = Path(cfg["pretrain"]["out"]).parent / "runner.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={ranks}", str(script), json.dumps(cfg), str(pause)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _kill_after_checkpoint(proc: subprocess.Popen, root: Path, step: int) -> None:
    deadline = time.monotonic() + 180
    while not (root / f"step-{step:08d}" / "state.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.communicate()[0].decode()
            pytest.fail(f"no checkpoint at step {step}:\n{out[-4000:]}")
        time.sleep(0.05)
    # the launcher and both ranks (they run in sessions of their own), like kill -9 of the job
    job = psutil.Process(proc.pid)
    for p in [job, *job.children(recursive=True)]:
        p.send_signal(signal.SIGKILL)
    proc.communicate()


def _finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()[-4000:]


@pytest.mark.slow  # three rank groups started in turn, one killed: ~100 s on 2 cores
def test_a_run_killed_in_one_mode_resumes_in_another_with_the_same_losses(shards, tmp_path):
    """ddp (killed after step 2) -> tp (killed after 4) -> fsdp to the end, and the step-4
    checkpoint also in one plain process to the end: each resumes the previous mode's
    checkpoint (whole-model safetensors from ddp, torch.distributed.checkpoint shards from tp)
    and every step's loss is the uninterrupted 1-process run's."""
    ref = _config(shards, tmp_path, "ref", None, steps=STEPS)
    chain = _config(shards, tmp_path, "chain", "ddp", steps=STEPS)
    root = Path(chain["pretrain"]["out"]).with_name("ckpt.ckpt")
    proc = _torchrun(chain, pause=1.5)
    _in_process(ref)  # meanwhile
    _kill_after_checkpoint(proc, root, 2)
    assert (root / "step-00000002" / "model.safetensors").exists()
    chain = _config(shards, tmp_path, "chain", "tp", steps=STEPS)
    _kill_after_checkpoint(_torchrun(chain, pause=1.5), root, 4)
    assert (root / "step-00000004" / "shards").is_dir()
    assert not (root / "step-00000004" / "model.safetensors").exists()
    assert not Path(chain["pretrain"]["out"]).exists()  # nothing published yet
    plain = _config(shards, tmp_path, "plain", None, steps=STEPS)
    shutil.copytree(root, Path(plain["pretrain"]["out"]).with_name("ckpt.ckpt"))
    chain = _config(shards, tmp_path, "chain", "fsdp", steps=STEPS)
    proc = _torchrun(chain)
    _in_process(plain)  # meanwhile
    _finish(proc)

    expected = _losses(ref)
    assert sorted(expected) == list(range(1, STEPS + 1))
    for got in (_losses(chain), _losses(plain)):
        assert sorted(got) == sorted(expected)
        for step in expected:
            assert got[step] == pytest.approx(expected[step], rel=1e-4), step
    assert not root.exists()

    # fsdp published a plain HF checkpoint (gathered to rank 0): transformers' class loads it
    # and computes what ours computes, and it holds the weights the 1-process run ended with
    out = Path(chain["pretrain"]["out"])
    ours = LongformerForMaskedLM.from_pretrained(out).eval()
    theirs = transformers.LongformerForMaskedLM.from_pretrained(out, attn_implementation="eager")
    ids = torch.randint(
        5, ours.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0)
    )
    ids[:, 0] = 0
    with torch.no_grad():
        a = ours(input_ids=ids).logits
        b = theirs.eval()(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    ref_weights = LongformerForMaskedLM.from_pretrained(ref["pretrain"]["out"]).state_dict()
    for name, tensor in ours.state_dict().items():
        torch.testing.assert_close(tensor, ref_weights[name], rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.slow  # 4 ranks starting torch on 2 cores + the reference run: ~50 s when loaded
def test_four_ranks_on_a_2d_mesh_tp_2_by_dp_2_pretrain_as_one_process(shards, tmp_path):
    """tp_size 2 (one head per rank) x 2 data-parallel replicas: each tp pair reads its half of
    the global batch (8 rows: micro-batches of 2, accumulated twice), gradients all-reduced
    over "dp"; the losses are the 1-process run's."""
    steps = 3
    ref = _config(shards, tmp_path, "ref", None, steps=steps)
    mesh = _config(shards, tmp_path, "mesh", "tp", steps=steps, tp_size=2)
    mesh["pretrain"]["grad_accum"] = 2  # 2 rows x 2 micro-batches x 2 replicas = 8 rows
    for cfg in (ref, mesh):
        cfg["pretrain"]["checkpoint_every"] = steps  # no mid-run checkpoint: not this test's
    proc = _torchrun(mesh, ranks=4)
    _in_process(ref)  # meanwhile
    _finish(proc)
    expected, got = _losses(ref), _losses(mesh)
    assert sorted(got) == sorted(expected) == list(range(1, steps + 1))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), step
    ours = LongformerForMaskedLM.from_pretrained(mesh["pretrain"]["out"]).state_dict()
    ref_weights = LongformerForMaskedLM.from_pretrained(ref["pretrain"]["out"]).state_dict()
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, ref_weights[name], rtol=1e-3, atol=1e-4, msg=name)
