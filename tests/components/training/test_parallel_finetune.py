"""Fine-tuning under torchrun: 2 CPU processes (gloo) in ddp mode, in tp mode (one head per
rank) and in fsdp mode (FSDP2: parameters sharded over both ranks, gathered to rank 0 to save)
train what 1 process trains at the same global batch (same step losses, dev predictions and
weights), with MLflow runs, metrics and the checkpoint written by rank 0 only; the fsdp run's
checkpoint is a full HF checkpoint that transformers' own class loads.

One torchrun launch runs the three modes for both tasks one after the other, then generates from
the fsdp summarizer (the ranks join the process group once): starting Python, torch and
transformers on each rank costs more than these tiny runs.

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
from longdoc.components.modeling.led import LEDForConditionalGeneration
from longdoc.components.modeling.model import LongformerForSequenceClassification
from longdoc.components.training.adapters import generate_text, seq2seq_encoded
from longdoc.components.training.finetune import finetune
from tests.components.tiny import tiny_checkpoint

REPO = Path(__file__).resolve().parents[3]
FILL = "the cat sat on the mat near the old mill. "
CUES = ("a dreadful awful film.", "a brilliant superb film.")

#: argv: the configs to fine-tune in turn (JSON), then the LED checkpoint to generate from on 2
#: fsdp ranks, rank 0's outputs ending first (it may write fewer tokens), and where to write them.
RUNNER = """
import json, sys
from pathlib import Path
import torch.distributed as dist
from transformers import AutoTokenizer
from longdoc.components.core.config import FinetuneParams, TrackingParams
from longdoc.components.modeling.led import LEDForConditionalGeneration
from longdoc.components.training import parallel
from longdoc.components.training.adapters import generate_text, seq2seq_encoded
from longdoc.components.training.finetune import finetune
*configs, path, out = sys.argv[1:]
dist.init_process_group("gloo")  # once for every run (finetune then leaves it to us)
for cfg in map(json.loads, configs):
    finetune(FinetuneParams.model_validate(cfg["finetune"]), TrackingParams(**cfg["tracking"]))
env = parallel.DistEnv("fsdp")
model = LEDForConditionalGeneration.from_pretrained(path).eval()
tokenizer = AutoTokenizer.from_pretrained(path)
parallel.prepare(model, env)
model.generation_config.update(max_new_tokens=2 + 6 * env.rank, min_new_tokens=0)
texts = [f"the cat sat on the mat {n} times ." for n in ("one", "two", "three")]
encoded = [seq2seq_encoded(str(i), tokenizer(t, add_special_tokens=False)["input_ids"],
           tokenizer.bos_token_id, tokenizer.eos_token_id, 64) for i, t in enumerate(texts)]
summaries = [generate_text(model, tokenizer, e, tokenizer.pad_token_id) for e in encoded]
Path(out, f"rank{env.rank}.json").write_text(json.dumps(summaries))
env.close()
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


def _write_summaries(root: Path) -> None:
    """Cohan et al.'s layout: 5 train and 3 val articles, the finding after the filler."""
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.txt", 5), ("val.txt", 3)):
        records = []
        for i in range(n):
            cue = CUES[i % 2].split()[1]
            article = [FILL.strip()] * (2 + i) + [f"we find it {cue} ."]
            abstract = [f"<S> it is {cue} . </S>"]
            records.append({"article_id": i, "article_text": article, "abstract_text": abstract})
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in records))


def _config(
    tmp: Path, base: Path, data: Path, name: str, mode: str = "ddp", task: str = "imdb", **entry
) -> dict:
    entry = FinetuneTask(
        data=data, out=tmp / name / "ckpt", metrics=tmp / name / "metrics.json", epochs=2, **entry
    )
    params = FinetuneParams(
        task=task, tasks={task: entry}, base=base, max_len=48, window_overlap=8,
        baseline_max_len=None, register_model=False, batch_size=3, lr=3e-3, warmup_ratio=0.0,
        parallel=mode,
    )  # fmt: skip
    tracking = {"uri": f"sqlite:///{tmp / name}.db", "experiment": "t"}
    return {"finetune": params.model_dump(mode="json"), "tracking": tracking}


def _result(cfg: dict) -> tuple[list[float], object, dict]:
    """Per-step losses (MLflow, the long run), dev predictions and the saved weights."""
    metrics = json.loads(Path(cfg["finetune"]["metrics"]).read_text())
    client = MlflowClient(cfg["tracking"]["uri"])
    history = client.get_metric_history(metrics["long"]["run_id"], "loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    (preds,) = Path(cfg["finetune"]["metrics"]).parent.glob("metrics.predictions.*")
    written = json.loads(preds.read_text()) if preds.suffix == ".json" else preds.read_text()
    weights = load_file(str(Path(cfg["finetune"]["out"]) / "model.safetensors"))
    return losses, written, weights


def _launch(tmp: Path, *configs: dict, generate_from: Path) -> subprocess.Popen:
    """One 2-rank torchrun launch fine-tuning `configs` in turn, then generating from the LED
    at `generate_from` (written by one of them) into `tmp`/rank<r>.json."""
    script = tmp / "runner.py"
    script.write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.Popen(
        [*cmd, str(script), *map(json.dumps, configs), str(generate_from), str(tmp)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _assert_as_one_process(one: dict, *configs: dict, steps: int) -> None:
    """Each of `configs` trained what `one` trained: step losses, dev predictions, weights, and
    rank 0 alone tracked (one parent run and one nested run in its store)."""
    losses, preds, weights = _result(one)
    assert len(losses) == steps
    for cfg in configs:
        got_losses, got_preds, got_weights = _result(cfg)
        assert got_losses == pytest.approx(losses, rel=1e-4), cfg["finetune"]["parallel"]
        assert got_preds == preds
        assert got_weights.keys() == weights.keys()
        for name, tensor in weights.items():
            torch.testing.assert_close(got_weights[name], tensor, rtol=1e-3, atol=1e-5, msg=name)
        runs = MlflowClient(cfg["tracking"]["uri"]).search_runs(["1"])
        assert len(runs) == 2, [r.info.run_name for r in runs]


@pytest.fixture(autouse=True)
def _no_env_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.mark.slow  # six 2-rank runs and generation in one launch, two references: ~2 min
def test_two_ranks_in_ddp_tp_and_fsdp_fine_tune_a_classifier_and_a_summarizer_as_one_process(
    tmp_path,
):
    """A Longformer classifier, then an LED summarizer (a decoder warm-started from the long
    encoder), in each mode. The LED's encoder and decoder blocks shard like the Longformer's
    (tp: one head per rank in every attention, the cross-attention included), the frozen encoder
    runs outside the model's forward (fsdp gathers the shared embeddings around it too), and
    beam search on a rank whose share of dev is done keeps stepping while the other rank's is
    not (fsdp's forwards are collective)."""
    imdb, arxiv = tmp_path / "imdb", tmp_path / "arxiv"
    # dropout off (the config fields win over the model section's defaults)
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    tiny_checkpoint(imdb / "base", [FILL * 3, *CUES], **no_dropout)
    _write_imdb(imdb / "aclImdb")
    classify = [
        _config(imdb, imdb / "base", imdb / "aclImdb", name, mode)
        for name, mode in (("one", "ddp"), ("ddp", "ddp"), ("tp", "tp"), ("fsdp", "fsdp"))
    ]
    texts = [FILL * 3, *CUES, "we find it brilliant . it is dreadful ."]
    tiny_checkpoint(arxiv / "base", texts, **no_dropout)
    _write_summaries(arxiv / "data")
    entry = {"freeze_encoder": True, "generation": {"num_beams": 2, "max_new_tokens": 6}}
    summarize = [
        _config(arxiv, arxiv / "base", arxiv / "data", name, mode, task="summarization", **entry)
        for name, mode in (("one", "ddp"), ("ddp", "ddp"), ("tp", "tp"), ("fsdp", "fsdp"))
    ]
    led = Path(summarize[3]["finetune"]["tasks"]["summarization"]["out"])  # fsdp's, gathered
    proc = _launch(tmp_path, *classify[1:], *summarize[1:], generate_from=led)
    summary, _ = (  # meanwhile, one process
        finetune(FinetuneParams.model_validate(c["finetune"]), TrackingParams(**c["tracking"]))
        for c in (classify[0], summarize[0])
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out.decode()[-4000:]
    assert summary["long"]["train_windows"] > 5  # longer than max_len: several windows each
    _assert_as_one_process(*classify, steps=4)  # 2 epochs x 2 steps (batches of 3)
    _assert_as_one_process(*summarize, steps=4)

    # fsdp's checkpoint is whole (gathered from the shards): transformers' class computes with it
    # what ours computes with the 1-process checkpoint
    ids = torch.randint(5, 40, (2, 40), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 0
    theirs = transformers.LongformerForSequenceClassification.from_pretrained(
        classify[3]["finetune"]["out"], attn_implementation="eager"
    ).eval()
    ours = LongformerForSequenceClassification.from_pretrained(classify[0]["finetune"]["out"])
    with torch.no_grad():
        torch.testing.assert_close(
            theirs(input_ids=ids).logits, ours.eval()(input_ids=ids).logits, rtol=1e-3, atol=1e-4
        )

    # generation on fsdp ranks whose outputs end at different steps: each rank's summaries are
    # what the plain model writes with that rank's settings
    model = LEDForConditionalGeneration.from_pretrained(led).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(led)
    texts = [f"the cat sat on the mat {n} times ." for n in ("one", "two", "three")]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    for rank in (0, 1):
        model.generation_config.update(max_new_tokens=2 + 6 * rank, min_new_tokens=0)
        special = tokenizer.bos_token_id, tokenizer.eos_token_id
        encoded = [seq2seq_encoded(str(i), x, *special, 64) for i, x in enumerate(ids)]
        want = [generate_text(model, tokenizer, e, tokenizer.pad_token_id) for e in encoded]
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == want, rank
