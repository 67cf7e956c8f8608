"""Prefect flows: one per stage, and `pipeline` chaining them. Orchestration only: each flow
calls one component function inside a task and records the stage as done.

Flows take the whole validated `Params` so every stage sees one consistent configuration; without
one (a deployment run with no parameters) they read `params.yaml` from the working directory.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from longdoc.components import convert as convert_mod
from longdoc.components import finetune as finetune_mod
from longdoc.components import ingest as ingest_mod
from longdoc.components import kernel_cache, stages
from longdoc.components import pretrain as pretrain_mod
from longdoc.components import sample as sample_mod
from longdoc.components import score as score_mod
from longdoc.components import tokenize as tokenize_mod
from longdoc.components.config import ConfigError, Params, load_params
from longdoc.components.io import InputError


def _transient(task, task_run, state) -> bool:
    """Retry I/O hiccups, not user errors: a missing path stays missing on the second try."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, InputError | ConfigError)


IO_RETRIES = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": _transient}


def _finish(stage: str, params: Params, result: dict) -> dict:
    stages.mark_done(stages.spec(stage, params))
    return result


@task(name="write-sample", **IO_RETRIES)
def _sample(params: Params) -> dict:
    return sample_mod.write_sample(params.sample)


@task(name="ingest-archives", **IO_RETRIES)
def _ingest(params: Params) -> dict:
    return ingest_mod.ingest(params.ingest)


@task(name="tokenize-corpus", **IO_RETRIES)
def _tokenize(params: Params) -> dict:
    return tokenize_mod.tokenize(params.tokenize)


@task(name="compile-kernels")
def _build_kernels(params: Params) -> dict:
    return kernel_cache.build(params.kernels)


@task(name="mlm-pretrain")
def _pretrain(params: Params) -> dict:
    kernel_cache.use(params.kernels)
    return pretrain_mod.pretrain(params.pretrain, params.model, params.tracking)


def pretrain_ranks(params: Params) -> dict:
    """Under torchrun: every rank trains (DDP) without a Prefect run per rank (N ephemeral
    servers would race for one database); rank 0 records the stage as done."""
    kernel_cache.use(params.kernels)
    result = pretrain_mod.pretrain(params.pretrain, params.model, params.tracking)
    if "rank" not in result:
        stages.mark_done(stages.spec("pretrain", params))
    return result


@task(name="convert-checkpoint")
def _convert(params: Params) -> dict:
    return convert_mod.convert(params.convert)


@task(name="finetune-task")
def _finetune(params: Params) -> dict:
    kernel_cache.use(params.kernels)
    return finetune_mod.finetune(params.finetune, params.tracking)


@task(name="score-documents", **IO_RETRIES)
def _score(params: Params) -> dict:
    kernel_cache.use(params.kernels)
    return score_mod.score(params.score, params.tracking)


@flow(name="sample")
def sample_flow(params: Params | None = None) -> dict:
    params = params or load_params()
    return _finish("sample", params, _sample(params))


@flow(name="ingest")
def ingest_flow(params: Params | None = None) -> dict:
    params = params or load_params()
    return _finish("ingest", params, _ingest(params))


@flow(name="tokenize")
def tokenize_flow(params: Params | None = None) -> dict:
    params = params or load_params()
    return _finish("tokenize", params, _tokenize(params))


@flow(name="build-kernels")
def build_kernels_flow(params: Params | None = None) -> dict:
    params = params or load_params()
    return _finish("build_kernels", params, _build_kernels(params))


@flow(name="pretrain")
def pretrain_flow(params: Params | None = None) -> dict:
    params = params or load_params()
    return _finish("pretrain", params, _pretrain(params))


@flow(name="convert")
def convert_flow(params: Params | None = None) -> dict:
    """Not a pipeline stage (it runs once per base model): no freshness marker."""
    params = params or load_params()
    return _convert(params)


@flow(name="finetune")
def finetune_flow(params: Params | None = None) -> dict:
    """One task: `finetune.task` (the CLI's --task)."""
    params = params or load_params()
    return _finish("finetune", params, _finetune(params))


def _for_task(params: Params, task: str) -> Params:
    return params.model_copy(update={"finetune": params.finetune.for_task(task)})


def finetune_tasks(params: Params, force: bool = False) -> dict | str:
    """The pipeline's finetune step: every task in `finetune.tasks`, each skipped when its own
    inputs and parameters are unchanged; "skipped" when all were."""
    logger = get_run_logger()
    results: dict[str, dict | str] = {}
    for name in params.finetune.tasks:
        task_params = _for_task(params, name)
        if not force and stages.is_fresh(stages.spec("finetune", task_params)):
            logger.info("finetune %s: inputs and parameters unchanged, skipped", name)
            results[name] = "skipped"
            continue
        results[name] = finetune_flow(task_params)
    return "skipped" if all(r == "skipped" for r in results.values()) else results


@flow(name="score")
def score_flow(params: Params | None = None) -> dict:
    params = params or load_params()
    return _finish("score", params, _score(params))


@flow(name="batch-score")
def batch_score_flow(
    input: str | list[str],  # noqa: A002 (the deployment parameter's documented name)
    model_uri: str | None = None,
    output: str | None = None,
) -> dict:
    """Score archives with a registered model: the `batch-score` deployment's entry point.

    Takes plain parameters (paths, a model URI) so a deployment run, schedule or trigger can
    pass them; everything else comes from the score section of params.yaml. Not a pipeline
    stage: no freshness marker (the output directory's own state makes reruns resume)."""
    params = load_params()
    params.score.inputs = [input] if isinstance(input, str) else list(input)
    if model_uri:
        params.score.model_uri = model_uri
    if output:
        params.score.out = output
    return _score(params)


STAGE_FLOWS = {
    "sample": sample_flow,
    "ingest": ingest_flow,
    "tokenize": tokenize_flow,
    "build_kernels": build_kernels_flow,
    "pretrain": pretrain_flow,
    "convert": convert_flow,
    "finetune": finetune_flow,
    "score": score_flow,
}


@flow(name="pipeline")
def pipeline_flow(params: Params | None = None, force: bool = False) -> dict:
    """Every stage in order; a stage whose parameters and inputs are unchanged is skipped."""
    params = params or load_params()
    logger = get_run_logger()
    results: dict[str, dict | str] = {}
    for name in stages.STAGES:
        if name == "finetune":  # one run per task listed in params.yaml
            results[name] = finetune_tasks(params, force)
            continue
        if not force and stages.is_fresh(stages.spec(name, params)):
            logger.info("%s: inputs and parameters unchanged, skipped", name)
            results[name] = "skipped"
            continue
        results[name] = STAGE_FLOWS[name](params)
    return results
