"""Continued masked-language-model pretraining of the long model on the tokenize stage's shards.

The data is streamed from the packed Arrow files (never loaded whole); masking is dynamic (drawn
afresh every time a sequence is seen), as in RoBERTa.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import torch
from tqdm import tqdm

from components import tokenize as tok
from components import tracking
from components.config import ModelParams, PretrainParams, TrackingParams, params_dict
from components.io import InputError, atomic_write_json, require_path, write_manifest
from components.model import LongformerForMaskedLM, make_config
from components.training import (
    Throughput,
    adamw,
    bits_per_char,
    plot_curve,
    publish_dir,
    seed_everything,
    staging_dir,
    warmup_linear_decay,
)

log = logging.getLogger(__name__)


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: list[int],
    probability: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick `probability` of the non-special tokens; of those 80% become <mask>,
    10% a random token, 10% stay. Labels are -100 everywhere else."""
    labels = input_ids.clone()
    special = torch.isin(input_ids, torch.tensor(special_ids))
    probs = torch.full(input_ids.shape, probability).masked_fill(special, 0.0)
    picked = torch.bernoulli(probs, generator=generator).bool()
    labels[~picked] = -100
    inputs = input_ids.clone()
    to_mask = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & picked
    inputs[to_mask] = mask_token_id
    to_random = (
        torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool()
        & picked
        & ~to_mask
    )
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    inputs[to_random] = random_ids[to_random]
    return inputs, labels


def _endless(shards: Path, batch_size: int) -> Iterator[np.ndarray]:
    """Cycle over the training sequences, epoch after epoch, streaming each time."""
    while True:
        seen = False
        for batch in tok.iter_packed(shards, "train", batch_size):
            seen = True
            yield batch
        if not seen:
            raise InputError(f"{shards}: no packed training sequences (corpus too small?)")


@torch.no_grad()
def evaluate(model, tokenizer, shards: Path, batch_size: int, max_batches: int, seed: int):
    """Masked-LM loss on held-out sequences with a fixed masking seed, so evaluations compare."""
    model.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    total, count = 0.0, 0
    for i, batch in enumerate(tok.iter_packed(shards, "validation", batch_size)):
        if i >= max_batches:
            break
        inputs, labels = _masked(torch.from_numpy(batch.astype(np.int64)), tokenizer, model, gen)
        out = model(input_ids=inputs, labels=labels)
        n = int((labels != -100).sum())
        total += float(out.loss) * n
        count += n
    model.train()
    return total / count if count else float("nan")


def _masked(ids: torch.Tensor, tokenizer, model, gen: torch.Generator, probability: float = 0.15):
    return mask_tokens(
        ids,
        mask_token_id=tokenizer.mask_token_id,
        vocab_size=model.config.vocab_size,
        special_ids=tokenizer.all_special_ids,
        probability=probability,
        generator=gen,
    )


def build_model(params: PretrainParams, model_params: ModelParams, tokenizer):
    if params.base is not None:
        require_path(params.base, "base checkpoint")
        return LongformerForMaskedLM.from_pretrained(params.base)
    config = make_config(
        model_params,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LongformerForMaskedLM(config)


def pretrain(
    params: PretrainParams, model_params: ModelParams, tracking_params: TrackingParams
) -> dict:
    """Train for `params.steps` optimizer steps; write an HF checkpoint to `params.out`."""
    shards = require_path(params.shards, "token shards")
    manifest = json.loads(require_path(shards / "manifest.json", "shards manifest").read_text())
    chars_per_token = float(manifest.get("chars_per_token") or 1.0)
    tokenizer = tok.load_tokenizer(shards)
    gen = seed_everything(params.seed)
    model = build_model(params, model_params, tokenizer)
    model.train()
    optimizer = adamw(model, params.lr, params.weight_decay)
    scheduler = warmup_linear_decay(optimizer, params.warmup_steps, params.steps)

    tracking.setup(tracking_params)
    curve: dict[str, list[tuple[int, float]]] = {"train": [], "validation": []}
    with mlflow.start_run(run_name="pretrain") as run:
        mlflow.set_tag("stage", "pretrain")
        mlflow.log_params({f"pretrain.{k}": v for k, v in params_dict(params).items()})
        mlflow.log_params({f"model.{k}": v for k, v in params_dict(model_params).items()})
        mlflow.log_param("n_parameters", sum(p.numel() for p in model.parameters()))
        eval_loss = evaluate(model, tokenizer, shards, params.batch_size, params.eval_batches, 0)
        mlflow.log_metrics(_eval_metrics(eval_loss, chars_per_token), step=0)
        curve["validation"].append((0, eval_loss))
        speed = Throughput()
        data = _endless(shards, params.batch_size)
        bar = tqdm(range(1, params.steps + 1), desc="pretrain", unit="step", mininterval=2)
        for step in bar:
            ids = torch.from_numpy(next(data).astype(np.int64))
            inputs, labels = _masked(ids, tokenizer, model, gen, params.mlm_probability)
            loss = model(input_ids=inputs, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tps = speed.add(ids.numel())
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tps:,.0f}", refresh=False)
            curve["train"].append((step, loss.item()))
            mlflow.log_metrics(
                {"loss": loss.item(), "lr": scheduler.get_last_lr()[0], "tokens_per_s": tps},
                step=step,
            )
        eval_loss = evaluate(model, tokenizer, shards, params.batch_size, params.eval_batches, 0)
        final = _eval_metrics(eval_loss, chars_per_token)
        mlflow.log_metrics(final, step=params.steps)
        curve["validation"].append((params.steps, eval_loss))

        staging = staging_dir(Path(params.out))
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(
                str(plot_curve(curve, Path(tmp) / "loss_curve.png", "MLM loss")), "plots"
            )
        mlflow.log_artifacts(str(staging), "checkpoint")
        publish_dir(staging, Path(params.out))
        summary = {
            "run_id": run.info.run_id,
            "steps": params.steps,
            "tokens_seen": speed.tokens,
            "final_train_loss": curve["train"][-1][1],
            **final,
            "checkpoint": str(params.out),
        }
    atomic_write_json(params.metrics, summary)
    write_manifest(
        params.out,
        stage="pretrain",
        inputs={"shards": str(shards), "tokenizer_sha256": manifest.get("tokenizer_sha256")},
        params=params_dict(params),
        model=params_dict(model_params),
        results=summary,
    )
    log.info("pretrain: eval loss %.3f, bpc %.3f", final["eval_loss"], final["eval_bpc"])
    return summary


def _eval_metrics(loss: float, chars_per_token: float) -> dict[str, float]:
    return {
        "eval_loss": loss,
        "eval_perplexity": math.exp(min(loss, 50.0)),
        "eval_bpc": bits_per_char(loss, chars_per_token),
    }
