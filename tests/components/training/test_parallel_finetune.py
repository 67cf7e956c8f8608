"""Fine-tuning under torchrun: 2 CPU processes (gloo) in ddp mode, in tp mode (one head per
rank) and in fsdp mode (FSDP2: parameters sharded over both ranks, gathered to rank 0 to save)
train what 1 process trains at the same global batch (same step losses, dev predictions and
weights), with MLflow runs, metrics and the checkpoint written by rank 0 only; the fsdp run's
checkpoint is a full HF checkpoint that transformers' own class loads.

One torchrun launch runs the three modes one after the other (the ranks join the process group
once): starting Python and torch on each rank costs more than these tiny runs.

The batch (3 examples) does not split evenly over 2 ranks, and every review is longer than
max_len, so ranks run different numbers of examples and windows per step. Dropout is off so
only float summation order differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from longdoc.components.core.config import FinetuneParams, FinetuneTask, TrackingParams
from longdoc.components.modeling.model import LongformerForSequenceClassification
from longdoc.components.training.finetune import finetune
from tests.components.tiny import tiny_checkpoint

REPO = Path(__file__).resolve().parents[3]
FILL = "the cat sat on the mat near the old mill. "
CUES = ("a dreadful awful film.", "a brilliant superb film.")

RUNNER = """
import json, os, sys
import torch.distributed as dist
from longdoc.components.core.config import FinetuneParams, TrackingParams
from longdoc.components.training.finetune import finetune
dist.init_process_group("gloo")  # once for every run (finetune then leaves it to us)
for cfg in map(json.loads, sys.argv[1:]):
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # MLflow exported the last run's store
    finetune(FinetuneParams.model_validate(cfg["finetune"]), TrackingParams(**cfg["tracking"]))
dist.destroy_process_group()
"""


def _write_imdb(root: Path) -> None:
    """aclImdb layout: 5 train and 3 test reviews, the verdict after ~100 tokens of filler."""
    for split, n in (("train", 5), ("test", 3)):
        for i in range(n):
            label = i % 2
            folder = root / split / ("pos" if label else "neg")
            folder.mkdir(parents=True, exist_ok=True)
            text = FILL * (8 + i) + CUES[label]
            (folder / f"{i}_{8 if label else 2}.txt").write_text(text)


def _config(tmp: Path, base: Path, data: Path, name: str, mode: str = "ddp") -> dict:
    entry = FinetuneTask(
        data=data, out=tmp / name / "ckpt", metrics=tmp / name / "metrics.json", epochs=2
    )
    params = FinetuneParams(
        task="imdb", tasks={"imdb": entry}, base=base, max_len=48, window_overlap=8,
        baseline_max_len=None, register_model=False, batch_size=3, lr=3e-3, warmup_ratio=0.0,
        parallel=mode,
    )  # fmt: skip
    tracking = {"uri": f"sqlite:///{tmp / name}.db", "experiment": "t"}
    return {"finetune": params.model_dump(mode="json"), "tracking": tracking}


def _result(cfg: dict) -> tuple[list[float], dict, dict]:
    """Per-step losses (MLflow, the long run), dev predictions and the saved weights."""
    metrics = json.loads(Path(cfg["finetune"]["metrics"]).read_text())
    client = MlflowClient(cfg["tracking"]["uri"])
    history = client.get_metric_history(metrics["long"]["run_id"], "loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    preds = Path(cfg["finetune"]["metrics"]).with_name("metrics.predictions.json")
    weights = load_file(str(Path(cfg["finetune"]["out"]) / "model.safetensors"))
    return losses, json.loads(preds.read_text()), weights


@pytest.fixture(autouse=True)
def _no_env_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_two_ranks_in_ddp_tp_and_fsdp_fine_tune_as_one_process(tmp_path):
    base = tmp_path / "base"
    texts = [FILL * 3, *CUES]
    # dropout off (the config fields win over the model section's defaults)
    tiny_checkpoint(base, texts, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    data = tmp_path / "aclImdb"
    _write_imdb(data)
    one = _config(tmp_path, base, data, "one")
    ddp = _config(tmp_path, base, data, "ddp", "ddp")
    tp = _config(tmp_path, base, data, "tp", "tp")
    fsdp = _config(tmp_path, base, data, "fsdp", "fsdp")
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.Popen(
        [*cmd, str(script), *(json.dumps(cfg) for cfg in (ddp, tp, fsdp))],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    summary = finetune(  # meanwhile
        FinetuneParams.model_validate(one["finetune"]), TrackingParams(**one["tracking"])
    )
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()[-4000:]

    losses, preds, weights = _result(one)
    assert len(losses) == 4  # 2 epochs x 2 steps (5 examples, batches of 3)
    assert summary["long"]["train_windows"] > 5  # longer than max_len: several windows each
    for cfg in (ddp, tp, fsdp):
        got_losses, got_preds, got_weights = _result(cfg)
        assert got_losses == pytest.approx(losses, rel=1e-4), cfg["finetune"]["parallel"]
        assert got_preds == preds
        assert got_weights.keys() == weights.keys()
        for name, tensor in weights.items():
            torch.testing.assert_close(got_weights[name], tensor, rtol=1e-3, atol=1e-5, msg=name)
        # rank 0 alone tracked: one parent run and one nested run in the store
        runs = MlflowClient(cfg["tracking"]["uri"]).search_runs(["1"])
        assert len(runs) == 2, [r.info.run_name for r in runs]

    # fsdp's checkpoint is whole (gathered from the shards): transformers' class computes with it
    # what ours computes with the 1-process checkpoint
    ids = torch.randint(5, 40, (2, 40), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 0
    theirs = transformers.LongformerForSequenceClassification.from_pretrained(
        fsdp["finetune"]["out"], attn_implementation="eager"
    ).eval()
    ours = LongformerForSequenceClassification.from_pretrained(one["finetune"]["out"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            theirs(input_ids=ids).logits, ours(input_ids=ids).logits, rtol=1e-3, atol=1e-4
        )
