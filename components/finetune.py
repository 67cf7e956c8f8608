"""Fine-tuning the long model on a document-classification task, next to a 512-token baseline.

The baseline is the same model, data and recipe with inputs truncated to `baseline_max_len`
tokens: the comparison shows what the long context buys. The long model is registered as
`longdoc-<task>` and becomes `champion` when it beats the current champion's accuracy.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient
from tqdm import tqdm
from transformers import AutoTokenizer

from components import tracking
from components.config import FinetuneParams, TrackingParams, params_dict
from components.io import InputError, atomic_write_json, require_path, write_manifest
from components.model import LongformerForSequenceClassification
from components.serving import log_classifier, predict_texts
from components.training import (
    Throughput,
    adamw,
    plot_curve,
    publish_dir,
    quiet_loading,
    seed_everything,
    staging_dir,
    warmup_linear_decay,
)

log = logging.getLogger(__name__)

IMDB_LABELS = ("neg", "pos")
_IMDB_NAME = re.compile(r"^(\d+)_(\d+)\.txt$")


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    label: int


def load_imdb(root: Path, split: str) -> list[Example]:
    """The aclImdb layout: `<split>/{pos,neg}/<id>_<rating>.txt`, `<br />` as line breaks."""
    split_dir = require_path(Path(root) / split, f"IMDB {split} split")
    examples = []
    for label, name in enumerate(IMDB_LABELS):
        for path in sorted((split_dir / name).glob("*.txt")):
            m = _IMDB_NAME.match(path.name)
            if not m:
                raise InputError(f"{path}: expected an IMDB file name <id>_<rating>.txt")
            rating = int(m.group(2))
            if (rating >= 7) != (label == 1) or not 1 <= rating <= 10:
                raise InputError(f"{path}: rating {rating} contradicts the '{name}' folder")
            text = path.read_text(encoding="utf-8").replace("<br />", "\n")
            examples.append(Example(f"{split}/{name}/{m.group(1)}", text, label))
    if not examples:
        raise InputError(f"{split_dir}: no reviews found under pos/ or neg/")
    return examples


def _batches(encoded: list[list[int]], labels: list[int], batch_size: int, gen, pad_id: int):
    order = torch.randperm(len(encoded), generator=gen).tolist()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        yield ids, mask, torch.tensor([labels[i] for i in idx])


def train_classifier(
    params: FinetuneParams,
    train: list[Example],
    test: list[Example],
    max_len: int,
    tokenizer,
    out: Path | None,
    run_name: str,
) -> dict:
    """One fine-tuning run inside its own (nested) MLflow run; returns its metrics."""
    gen = seed_everything(params.seed)
    with quiet_loading():  # the MLM head is dropped and the classifier is new: expected
        model = LongformerForSequenceClassification.from_pretrained(
            params.base,
            num_labels=len(IMDB_LABELS),
            id2label=dict(enumerate(IMDB_LABELS)),
            label2id={n: i for i, n in enumerate(IMDB_LABELS)},
        )
    if max_len > model.config.max_position_embeddings - 2:
        raise InputError(
            f"finetune.max_len={max_len} exceeds the model's "
            f"{model.config.max_position_embeddings - 2} positions"
        )
    encoded = [tokenizer(ex.text, truncation=True, max_length=max_len)["input_ids"] for ex in train]
    labels = [ex.label for ex in train]
    steps = params.epochs * -(-len(train) // params.batch_size)
    optimizer = adamw(model, params.lr, 0.01)
    scheduler = warmup_linear_decay(optimizer, int(params.warmup_ratio * steps), steps)
    curve: list[tuple[int, float]] = []
    with mlflow.start_run(run_name=run_name, nested=True) as run:
        mlflow.log_params({"max_len": max_len, "n_train": len(train), "n_test": len(test)})
        mlflow.log_params({k: v for k, v in params_dict(params).items() if k != "max_len"})
        model.train()
        speed = Throughput()
        step = 0
        bar = tqdm(total=steps, desc=f"finetune {run_name}", unit="step", mininterval=2)
        for _epoch in range(params.epochs):
            for ids, mask, y in _batches(
                encoded, labels, params.batch_size, gen, model.config.pad_token_id
            ):
                loss = model(input_ids=ids, attention_mask=mask, labels=y).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tps = speed.add(int(mask.sum()))
                curve.append((step, loss.item()))
                mlflow.log_metrics({"loss": loss.item(), "tokens_per_s": tps}, step=step)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tps:,.0f}", refresh=False)
        bar.close()
        probs = predict_texts(
            model, tokenizer, [ex.text for ex in test], max_len, params.batch_size
        )
        correct = sum(int(p[1] > p[0]) == ex.label for p, ex in zip(probs, test, strict=True))
        metrics = {"accuracy": correct / len(test), "final_train_loss": curve[-1][1]}
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_curve({run_name: curve}, Path(tmp) / "loss_curve.png", "loss")
            mlflow.log_artifact(str(png), "plots")
        result = {"run_id": run.info.run_id, "max_len": max_len, **metrics}
        if out is not None:
            staging = staging_dir(out)
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            publish_dir(staging, out)
    return result


def finetune(params: FinetuneParams, tracking_params: TrackingParams) -> dict:
    """Fine-tune the long model and the truncated baseline; register the long one."""
    if params.task != "imdb":
        raise InputError(f"finetune.task={params.task!r}: only 'imdb' is available so far")
    require_path(params.base, "base checkpoint")
    train = load_imdb(params.data, "train")[: params.max_train_samples]
    test = load_imdb(params.data, "test")[: params.max_eval_samples]
    tokenizer = AutoTokenizer.from_pretrained(params.base)
    out = Path(params.out)

    tracking.setup(tracking_params)
    name = tracking.registered_name(params.task)
    with mlflow.start_run(run_name=f"finetune-{params.task}") as parent:
        mlflow.set_tag("stage", "finetune")
        mlflow.set_tag("task", params.task)
        long_run = train_classifier(params, train, test, params.max_len, tokenizer, out, "long")
        base_run = train_classifier(
            params, train, test, params.baseline_max_len, tokenizer, None, "baseline"
        )
        mlflow.log_metrics(
            {"accuracy": long_run["accuracy"], "baseline_accuracy": base_run["accuracy"]}
        )
        registered = None
        if params.register_model:
            registered = _register(name, out, long_run["accuracy"])
        summary = {
            "task": params.task,
            "run_id": parent.info.run_id,
            "long": long_run,
            "baseline": base_run,
            "registered": registered,
            "checkpoint": str(out),
        }
    atomic_write_json(params.metrics, {"long": long_run, "baseline": base_run})
    write_manifest(
        out,
        stage="finetune",
        inputs={"data": str(params.data), "base": str(params.base)},
        params=params_dict(params),
        results=summary,
    )
    return summary


def _register(name: str, checkpoint: Path, accuracy: float) -> dict:
    """Log + register the model from the parent run; promote it when it beats the champion."""
    previous = tracking.champion_metric(name, "accuracy")
    mlflow.log_metric("accuracy", accuracy)
    info = log_classifier(checkpoint, name)
    version = str(info.registered_model_version)
    promoted = previous is None or accuracy > previous
    if promoted:
        MlflowClient().set_registered_model_alias(name, tracking.CHAMPION, version)
    log.info(
        "registered %s version %s (accuracy %.3f; champion before: %s)%s",
        name,
        version,
        accuracy,
        "none" if previous is None else f"{previous:.3f}",
        " -> champion" if promoted else "",
    )
    return {"name": name, "version": version, "champion": promoted, "previous": previous}
