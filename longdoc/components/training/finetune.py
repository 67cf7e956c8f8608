"""Fine-tuning the long model on a registered task (components.tasks), next to a truncated baseline.

The baseline is the same model, data and recipe with inputs truncated to `baseline_max_len`
tokens: the comparison shows what the long context buys. The long model reads inputs longer than
`max_len` as overlapping windows (training.windows) unless `windows` is off. Both runs write
their dev predictions in the task's official format beside the metrics file, and the long model
is registered as `longdoc-<task>`; it becomes `champion` only when its dev metric (the task's
registered primary metric) beats the current champion's.

Task-specific encoding, heads, losses and window aggregation live in components.training.adapters;
this module is the recipe: load, encode once, train, predict, score, track, register.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoTokenizer

from longdoc.components.core import tracking
from longdoc.components.core.config import FinetuneParams, TrackingParams, params_dict
from longdoc.components.core.io import (
    InputError,
    atomic_write_json,
    check_publish_target,
    publish_dir,
    require_path,
    staging_dir,
    write_manifest,
)
from longdoc.components.tasks import LoadResult, get_task
from longdoc.components.training import parallel
from longdoc.components.training.adapters import (
    EncodeError,
    TaskAdapter,
    adapter_for,
    n_tokens,
    steps_for,
)
from longdoc.components.training.common import (
    StepMetrics,
    Throughput,
    adamw,
    plot_curve,
    seed_everything,
    warmup_linear_decay,
)
from longdoc.components.training.windows import record_window_settings

log = logging.getLogger(__name__)


def _report_skipped(task: str, split: str, result: LoadResult, limit: int = 20) -> None:
    for s in result.skipped[:limit]:
        log.warning("%s %s: skipped %s record %d: %s", task, split, s.file, s.index, s.reason)
    if len(result.skipped) > limit:
        log.warning("%s %s: ... and %d more skipped", task, split, len(result.skipped) - limit)


def _encode_all(
    adapter: TaskAdapter,
    examples: list,
    max_len: int,
    overlap: int,
    max_windows: int | None,
    train: bool,
    skipped: list[dict],
) -> list:
    encoded = []
    for ex in examples:
        try:
            encoded.append(adapter.encode(ex, max_len, overlap, max_windows, train))
        except EncodeError as exc:
            skipped.append({"id": ex.id, "reason": str(exc)})
            log.warning("example %s not encoded: %s", ex.id, exc)
    return encoded


@dataclass
class _Loop:
    """What one fine-tuning run's loop reads and updates (one place, not a dozen arguments)."""

    model: torch.nn.Module
    adapter: TaskAdapter
    train: list
    optimizer: torch.optim.Optimizer
    scheduler: Any
    gen: torch.Generator
    batch_size: int
    batch_tokens: int
    env: parallel.DistEnv
    filler: Any = None  # fsdp: an example with a loss, run at zero weight to keep ranks in step
    speed: Throughput = field(default_factory=Throughput)
    metrics: StepMetrics = field(default_factory=StepMetrics)
    step: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)


def train_task(
    params: FinetuneParams,
    adapter: TaskAdapter,
    train: list,
    dev: list,
    max_len: int,
    windows: bool,
    out: Path | None,
    run_name: str,
    predictions_path: Path | None = None,
    env: parallel.DistEnv | None = None,
) -> dict:
    """One fine-tuning run inside its own (nested) MLflow run: encode, train, predict on dev,
    score with the task's official metric. Returns the metrics and run facts.

    Under torchrun every rank calls this with the same examples (`env`): each trains on its
    share of every batch and predicts its share of dev; rank 0 alone logs, scores and saves, and
    the other ranks return `{"rank": r}`."""
    env = env or parallel.DistEnv()
    loop, dev_enc, skipped = _setup(params, adapter, train, dev, max_len, windows, env)
    epochs = params.task_epochs
    facts = {"max_len": max_len, "windows": windows, "n_train": len(loop.train)}
    facts["lr"] = params.task_lr  # the task entry's, when it sets one (so is batch_size)
    facts["batch_size"] = params.task_batch_size
    facts.update(n_dev=len(dev_enc), train_windows=sum(len(e.windows) for e in loop.train))
    with _main_run(env, run_name) as run:
        if env.main:
            import mlflow  # here, not at the top: only the main rank tracks (core/tracking.py)

            mlflow.log_params({**facts, "epochs_run": epochs, "world_size": env.world})
            # the run's own max_len/windows/lr/batch_size are above; `tasks` is every task's entry
            skip = ("max_len", "windows", "tasks", "lr", "batch_size")
            mlflow.log_params({k: v for k, v in params_dict(params).items() if k not in skip})
        started = time.perf_counter()
        steps = steps_for(len(loop.train), params.task_batch_size, epochs)
        name = f"finetune {params.task} {run_name}"
        with tqdm(total=steps, desc=name, unit="step", mininterval=2, disable=not env.main) as bar:
            for _epoch in range(epochs):
                _train_epoch(loop, bar)
        train_seconds = time.perf_counter() - started
        predictions = _predict_dev(loop, dev_enc)
        model = parallel.full_model(loop.model, env) if out is not None else None
        if not env.main:
            return {"rank": env.rank}
        metrics = _score_dev(loop, dev, predictions, predictions_path, train_seconds)
        _log_curve(loop.curve, run_name)
        if out is not None:
            # serving reads long inputs exactly as the dev predictions were made
            record_window_settings(model.config, max_len, params.window_overlap, windows)
            _save(model, adapter, out, params.force)
    return {
        "run_id": run.info.run_id,
        **{k: facts[k] for k in ("max_len", "windows", "train_windows")},
        "epochs": epochs,
        "epoch_losses": loop.epoch_losses,
        "tokens_per_s": loop.speed.add(0),
        "not_encoded": skipped,
        "predictions": None if predictions_path is None else str(predictions_path),
        **metrics,
    }


def _main_run(env: parallel.DistEnv, run_name: str):
    """The nested MLflow run on rank 0; nothing on the other ranks."""
    if env.main:
        return tracking.start_run(run_name=run_name, nested=True)
    return contextlib.nullcontext()


def _setup(params, adapter, train, dev, max_len, windows, env) -> tuple[_Loop, list, list]:
    """Seed (every rank alike), build and shard the model, encode, make the optimizer."""
    gen = seed_everything(params.seed)
    model = _build(adapter, params.base, max_len, env.device)
    parallel.prepare(model, env)  # fsdp/tp: before the optimizer sees the parameters
    max_windows, overlap, skipped = (None if windows else 1), params.window_overlap, []
    train_enc = _encode_all(adapter, train, max_len, overlap, max_windows, True, skipped)
    dev_enc = _encode_all(adapter, dev, max_len, overlap, max_windows, False, skipped)
    if not train_enc:
        raise InputError(f"finetune {params.task}: no training example could be encoded")
    batch_size = params.task_batch_size
    steps = steps_for(len(train_enc), batch_size, params.task_epochs)
    optimizer = adamw(model, params.task_lr, 0.01)
    scheduler = warmup_linear_decay(optimizer, int(params.warmup_ratio * steps), steps)
    loop = _Loop(
        model, adapter, train_enc, optimizer, scheduler, gen, batch_size, params.batch_tokens, env
    )
    if env.mode == "fsdp":
        loop.filler = next((e for e in train_enc if adapter.learnable(e)), None)
    return loop, dev_enc, skipped


def _build(adapter: TaskAdapter, base: Path, max_len: int, device: torch.device) -> torch.nn.Module:
    model = adapter.build_model(base)
    if max_len > adapter.max_input_tokens(model):
        raise InputError(
            f"finetune.max_len={max_len} exceeds the model's "
            f"{adapter.max_input_tokens(model)} positions"
        )
    return model.to(device)


def _longest(enc) -> int:
    """The tokens of `enc`'s longest window: the width a pass pads it to."""
    return max(len(w.ids) for w in enc.windows)


def micro_batches(encs: list, batch_tokens: int) -> list[list]:
    """`encs` in order, cut into forward passes of at most `batch_tokens` tokens (windows x
    longest window, padding included); an example over the budget goes alone."""
    groups: list[list] = []
    rows = width = 0
    for enc in encs:
        n, longest = len(enc.windows), _longest(enc)
        if groups and (rows + n) * max(width, longest) <= batch_tokens:
            rows, width = rows + n, max(width, longest)
            groups[-1].append(enc)
        else:
            rows, width = n, longest
            groups.append([enc])
    return groups


def _train_epoch(loop: _Loop, bar) -> None:
    """One pass over the training set in a seeded order; logs loss and speed per step."""
    loop.model.train()
    order = torch.randperm(len(loop.train), generator=loop.gen).tolist()
    total, counted = 0.0, 0
    for start in range(0, len(order), loop.batch_size):
        batch = [loop.train[i] for i in order[start : start + loop.batch_size]]
        batch_loss, used, tokens = _step(loop, batch)
        loop.step += 1
        bar.update(1)
        if not used:
            continue
        mean = batch_loss / used
        total, counted = total + batch_loss, counted + used
        tps = loop.speed.add(tokens)
        loop.curve.append((loop.step, mean))
        if loop.env.main:
            loop.metrics.log({"loss": mean, "tokens_per_s": tps}, step=loop.step)
        bar.set_postfix(loss=f"{mean:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
    loop.epoch_losses.append(total / max(1, counted))
    if loop.env.main:
        import mlflow

        loop.metrics.flush()
        mlflow.log_metric("epoch_loss", loop.epoch_losses[-1], step=len(loop.epoch_losses))


def _shares(loop: _Loop, encs: list, batch_tokens: int, keep=None) -> tuple[list[list], int]:
    """This rank's forward passes over its share of `encs` (examples r, r + W, ... of W data
    ranks; only those `keep` accepts), shortest first so that a pass pads little, and how many
    passes each rank must run: under fsdp every forward gathers parameters, so every rank runs as
    many as the busiest one (each rank works the count out alone: all hold every example)."""
    env = loop.env
    passes = []
    for r in range(env.dp_world):
        share = [e for e in encs[r :: env.dp_world] if keep is None or keep(e)]
        share.sort(key=_longest)
        passes.append(micro_batches(share, batch_tokens))
    mine = passes[env.dp_rank]
    return mine, max(map(len, passes)) if env.mode == "fsdp" else len(mine)


def _step(loop: _Loop, batch: list) -> tuple[float, int, int]:
    """One optimizer step over `batch`, of which this rank runs its share in forward passes of
    up to `finetune.batch_tokens` tokens; gradients are averaged as one process averages them
    over the whole batch. Examples with nothing to learn from (e.g. answer not in the evidence)
    are left out. Returns (summed loss, examples learnt from, tokens), summed over the ranks."""
    env, adapter = loop.env, loop.adapter
    mine, slots = _shares(loop, batch, loop.batch_tokens, adapter.learnable)
    stats = torch.zeros(3, dtype=torch.float64)
    for j in range(slots):
        if j >= len(mine):  # fsdp: a zero-weight pass keeps this rank's gathers in step
            if loop.filler is not None:
                (adapter.losses(loop.model, [loop.filler]).sum() * 0.0).backward()
            continue
        loss = adapter.losses(loop.model, mine[j]).sum()
        (loss * env.dp_world / len(batch)).backward()
        tokens = sum(n_tokens(e) for e in mine[j])
        stats += torch.tensor([loss.item(), len(mine[j]), tokens], dtype=torch.float64)
    batch_loss, used, tokens = env.data_sum(stats).tolist()
    if used:
        parallel.sync_gradients(loop.model, env, wrapped=False)
        parallel.clip_grad_norm(loop.model, 1.0)
        loop.optimizer.step()
        loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)
    return batch_loss, int(used), int(tokens)


@torch.no_grad()
def _predict_dev(loop: _Loop, dev_enc: list) -> dict | None:
    """Every dev example's prediction, in dev order, on rank 0 (None elsewhere): each data rank
    predicts its share and rank 0 gathers them."""
    env, model, adapter = loop.env, loop.model, loop.adapter
    model.eval()
    # a generating adapter's predictions run as many (collective) forwards as it has examples:
    # one example a pass keeps the fsdp ranks' counts equal
    mine, slots = _shares(loop, dev_enc, loop.batch_tokens if adapter.predicts_in_passes else 1)
    predictions = {}
    for j in range(slots):
        if j < len(mine):
            for enc, prediction in zip(mine[j], adapter.predictions(model, mine[j]), strict=True):
                predictions[enc.id] = prediction
        else:  # fsdp: a discarded prediction keeps this rank's parameter gathers in step
            adapter.predictions(model, dev_enc[:1])
    gathered = env.gather(predictions)
    if not env.main:
        return None
    merged = {k: v for part in gathered for k, v in part.items()}
    return {enc.id: merged[enc.id] for enc in dev_enc}


def _score_dev(
    loop: _Loop, dev: list, predictions: dict, predictions_path: Path | None, train_seconds: float
) -> dict:
    """Score the dev predictions with the task's official metric, log, write the predictions
    file in the task's official format (rank 0)."""
    import mlflow

    prediction_file = loop.adapter.prediction_file(predictions)
    dev_metrics = loop.adapter.task.evaluate(dev, prediction_file)
    metrics = {
        **{k: float(v) for k, v in dev_metrics.items() if isinstance(v, int | float)},
        "first_epoch_loss": loop.epoch_losses[0],
        "final_epoch_loss": loop.epoch_losses[-1],
        "train_seconds": train_seconds,
    }
    mlflow.log_metrics(metrics)
    if predictions_path is not None:
        loop.adapter.task.write_predictions(predictions_path, prediction_file)
        mlflow.log_artifact(str(predictions_path), "predictions")
    return metrics


def _log_curve(curve: list[tuple[int, float]], run_name: str) -> None:
    import mlflow

    if curve:
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_curve({run_name: curve}, Path(tmp) / "loss_curve.png", "loss")
            mlflow.log_artifact(str(png), "plots")


def _save(model: torch.nn.Module, adapter: TaskAdapter, out: Path, force: bool) -> None:
    staging = staging_dir(out, "finetune")
    model.save_pretrained(staging)
    adapter.tokenizer.save_pretrained(staging)
    publish_dir(staging, out, stage="finetune", force=force)


def prediction_paths(metrics: Path, suffix: str = ".json") -> tuple[Path, Path]:
    """Where the long model's and the baseline's dev predictions go: beside the metrics file
    (`suffix`: the task's prediction file type, TaskAdapter.predictions_suffix)."""
    metrics = Path(metrics)
    return (
        metrics.with_name(f"{metrics.stem}.predictions{suffix}"),
        metrics.with_name(f"{metrics.stem}.baseline_predictions{suffix}"),
    )


def finetune(params: FinetuneParams, tracking_params: TrackingParams) -> dict:
    """Fine-tune the long model and the truncated baseline on `params.task`; register the long
    one. Malformed records are reported (file, index, reason) and skipped.

    Under torchrun every rank calls this (`finetune.parallel` says how they share the work);
    rank 0 alone tracks, registers and writes, and the other ranks return `{"rank": r}`."""
    spec = get_task(params.task)  # its registration: loader, metric, adapter
    require_path(params.base, "base checkpoint")
    check_publish_target(Path(params.out), "finetune", force=params.force)  # not after training
    train_res, dev_res = (spec.load(params.data, split) for split in ("train", "dev"))
    train, dev = _examples(params, train_res, dev_res)
    adapter = adapter_for(spec, AutoTokenizer.from_pretrained(params.base))
    adapter.configure(params)
    env = parallel.DistEnv(params.parallel, params.tp_size)
    try:
        if env.main:
            tracking.setup(tracking_params)
        parent = tracking.start_run(run_name=f"finetune-{params.task}") if env.main else None
        with parent or contextlib.nullcontext():
            long_run, base_run = _train_both(params, adapter, train, dev, env)
            registered = _track_result(params, adapter, long_run, base_run) if env.main else None
        env.barrier()  # no rank leaves the group while rank 0 still works in it
    finally:
        env.close()
    if not env.main:
        return {"rank": env.rank}
    summary = {
        "task": params.task,
        "primary_metric": spec.primary_metric,
        "run_id": parent.info.run_id,
        "long": long_run,
        "baseline": base_run,
        "registered": registered,
        "checkpoint": str(params.out),
        "skipped": {
            "train": len(train_res.skipped),
            "dev": len(dev_res.skipped),
            "records": [vars(s) for s in (train_res.skipped + dev_res.skipped)[:100]],
        },
    }
    _write_results(params, summary)
    return summary


def _train_both(params: FinetuneParams, adapter: TaskAdapter, train, dev, env):
    """The long model (saved to `params.out`) and the truncated baseline (if configured)."""
    long_preds, base_preds = prediction_paths(params.metrics, adapter.predictions_suffix)
    long_run = train_task(
        params, adapter, train, dev, params.max_len, params.windows, Path(params.out), "long",
        long_preds, env,
    )  # fmt: skip
    base_run = None
    if params.task_baseline_max_len is not None:
        base_run = train_task(
            params, adapter, train, dev, params.task_baseline_max_len, False, None, "baseline",
            base_preds, env,
        )  # fmt: skip
    return long_run, base_run


def _track_result(params: FinetuneParams, adapter: TaskAdapter, long_run, base_run):
    """Log the primary metrics in the parent run; register the long model when configured."""
    import mlflow

    mlflow.set_tags({"stage": "finetune", "task": params.task})
    primary = adapter.task.primary_metric
    if base_run is not None:
        mlflow.log_metric(f"baseline_{primary}", base_run[primary])
    if not params.register_model:
        mlflow.log_metric(primary, long_run[primary])
        return None
    # classifiers, TriviaQA's extractive QA model and summarizers are what `longdoc score` serves
    servable = adapter.kind in ("classification", "span", "seq2seq")
    name = tracking.registered_name(params.task)
    return _register(name, Path(params.out), long_run[primary], primary, servable)


def _write_results(params: FinetuneParams, summary: dict) -> None:
    """The DVC metrics file and the checkpoint's manifest."""
    keys = ("task", "primary_metric", "long", "baseline")
    atomic_write_json(params.metrics, {k: summary[k] for k in keys})
    write_manifest(
        params.out,
        stage="finetune",
        inputs={"data": str(params.data), "base": str(params.base)},
        params=params_dict(params),
        results=summary,
    )


def _examples(params: FinetuneParams, train_res: LoadResult, dev_res: LoadResult):
    """The train and dev examples this run uses (debug caps applied); skipped records are
    reported, and an empty split is an error naming the data directory."""
    for split, res in (("train", train_res), ("dev", dev_res)):
        _report_skipped(params.task, split, res)
    train = train_res.examples[: params.max_train_samples]
    dev = dev_res.examples[: params.max_eval_samples]
    if not train or not dev:
        raise InputError(
            f"{params.data}: {params.task} has {len(train)} train and {len(dev)} dev examples; "
            "need at least one of each"
        )
    return train, dev


def _register(
    name: str,
    checkpoint: Path,
    value: float,
    metric: str = "accuracy",
    servable: bool = True,
) -> dict:
    """Log + register the model from the active (parent) run; promote it to champion only when
    its `metric` beats the current champion's.

    Servable checkpoints (classification, extractive QA, summarization) are logged as the pyfunc
    model `score` serves (inference.serving); the HotpotQA and WikiHop models, whose heads no
    pyfunc wrapper serves yet, are registered as their HF checkpoint directory (load it with
    the classes in components.modeling.heads).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    from longdoc.components.inference.serving import log_longdoc_model

    previous = tracking.champion_metric(name, metric)
    mlflow.log_metric(metric, value)
    if servable:
        version = str(log_longdoc_model(checkpoint, name).registered_model_version)
    else:
        # MLflow 3's register_model wants a logged model; a version whose source is the run's
        # checkpoint artifacts is what `mlflow.artifacts.download_artifacts` then fetches.
        mlflow.log_artifacts(str(checkpoint), "checkpoint")
        run = mlflow.active_run()
        client = MlflowClient()
        try:
            client.get_registered_model(name)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(name)
        source = f"{run.info.artifact_uri}/checkpoint"
        version = str(client.create_model_version(name, source, run_id=run.info.run_id).version)
    promoted = previous is None or value > previous
    if promoted:
        MlflowClient().set_registered_model_alias(name, tracking.CHAMPION, version)
    log.info(
        "registered %s version %s (%s %.3f; champion before: %s)%s",
        name,
        version,
        metric,
        value,
        "none" if previous is None else f"{previous:.3f}",
        " -> champion" if promoted else "",
    )
    return {
        "name": name,
        "version": version,
        "metric": metric,
        "value": value,
        "champion": promoted,
        "previous": previous,
    }
