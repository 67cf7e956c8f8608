"""Prefect flows: one per stage, and `pipeline` chaining them. Orchestration only: each flow
calls one component function inside a task and records the stage as done.

Flows take the whole validated `Params` so every stage sees one consistent configuration; without
one (a deployment run with no parameters) they read `params.yaml` from the working directory.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task

from longdoc.components.core.config import Params, load_params
from longdoc.flows import freshness, jobs
from longdoc.flows.runner import unit_runner, with_runner

# Errors no retry can heal: a missing path stays missing, a full disk stays full.
_PERMANENT = {
    errno.ENOENT, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
    errno.EDQUOT, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG,
}  # fmt: skip


def _transient(task, task_run, state) -> bool:
    """Retry I/O hiccups only (a network filesystem's EIO, a timeout): never user errors (an
    InputError is a ValueError), never bugs, never an OSError that cannot heal."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, OSError) and exc.errno not in _PERMANENT


def _use_kernels(params: Params) -> None:
    """Point the tvm backend at the compiled-kernel cache before a stage that runs the model."""
    from longdoc.components.modeling import kernel_cache

    kernel_cache.use(params.kernels)


IO_RETRIES = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": _transient}


def _finish(stage: str, params: Params, result: dict) -> dict:
    freshness.mark_done(freshness.spec(stage, params))
    return result


@task(name="write-sample", **IO_RETRIES)
def _sample(params: Params) -> dict:
    from longdoc.components.synthetic.generator import write_sample

    return write_sample(params.sample)


@task(name="ingest-archives", **IO_RETRIES)
def _ingest(params: Params) -> dict:
    from longdoc.components.data.ingest import ingest

    with unit_runner(params.runner, "ingest-split") as runner:
        return ingest(params.ingest, runner=runner)


@task(name="tokenize-corpus", **IO_RETRIES)
def _tokenize(params: Params) -> dict:
    from longdoc.components.data.tokenize import tokenize

    with unit_runner(params.runner, "tokenize-part") as runner:
        return tokenize(params.tokenize, runner=runner)


@task(name="compile-kernels")
def _build_kernels(params: Params) -> dict:
    from longdoc.components.modeling import kernel_cache

    return kernel_cache.build(params.kernels)


@task(name="pretrain-steps")
def _pretrain(params: Params) -> dict:
    _use_kernels(params)
    from longdoc.components.training.pretrain import pretrain

    return pretrain(params.pretrain, params.model, params.tracking)


def pretrain_ranks(params: Params) -> dict:
    """Under torchrun: every rank trains (DDP) without a Prefect run per rank (N ephemeral
    servers would race for one database); rank 0 records the stage as done."""
    from longdoc.components.training.pretrain import pretrain

    _use_kernels(params)
    result = pretrain(params.pretrain, params.model, params.tracking)
    if "rank" not in result:
        freshness.mark_done(freshness.spec("pretrain", params))
    return result


def finetune_ranks(params: Params) -> dict:
    """`pretrain_ranks` for fine-tuning one task (`finetune.parallel` says how ranks share it)."""
    from longdoc.components.training.finetune import finetune

    _use_kernels(params)
    result = finetune(params.finetune, params.tracking)
    if "rank" not in result:
        freshness.mark_done(freshness.spec("finetune", params))
    return result


@task(name="probe-knowledge")
def _probe(params: Params) -> dict:
    _use_kernels(params)
    from longdoc.components.inference.probe import probe

    result = probe(params.probe, params.tracking)
    get_run_logger().info("probe results (test facts)\n%s", result["table"])
    return result


@task(name="convert-checkpoint")
def _convert(params: Params) -> dict:
    from longdoc.components.modeling.convert import convert

    return convert(params.convert)


@task(name="finetune-task")
def _finetune(params: Params) -> dict:
    _use_kernels(params)
    from longdoc.components.training.finetune import finetune

    return finetune(params.finetune, params.tracking)


@task(name="score-documents", **IO_RETRIES)
def _score(params: Params) -> dict:
    _use_kernels(params)
    from longdoc.components.inference.score import score

    with unit_runner(params.runner, "score-chunk") as runner:
        if params.score.zero_shot:  # a classifier made of a prompt: registered, then scored
            from longdoc.components.inference.zeroshot import score_zero_shot

            spec = params.zeroshot.classifiers[params.score.zero_shot]
            return score_zero_shot(
                params.score, spec, params.tracking, ingest=params.ingest, runner=runner
            )
        return score(params.score, params.tracking, ingest=params.ingest, runner=runner)


@flow(name="sample")
def sample_flow(params: Params | None = None) -> dict:
    params = params or load_params()
    return _finish("sample", params, _sample(params))


@flow(name="ingest")
def ingest_flow(params: Params | None = None, runner: str | dict | None = None) -> dict:
    """`runner` (deployments: `--param runner=dask`) overrides params.yaml's `runner:`."""
    params = with_runner(params or load_params(), runner)
    return _finish("ingest", params, _ingest(params))


@flow(name="tokenize")
def tokenize_flow(params: Params | None = None, runner: str | dict | None = None) -> dict:
    """`runner` (deployments: `--param runner=dask`) overrides params.yaml's `runner:`."""
    params = with_runner(params or load_params(), runner)
    return _finish("tokenize", params, _tokenize(params))


@flow(name="build-kernels")
def build_kernels_flow(params: Params | None = None) -> dict:
    params = params or load_params()
    return _finish("build_kernels", params, _build_kernels(params))


@flow(name="pretrain")
def pretrain_flow(params: Params | None = None) -> dict:
    params = params or load_params()
    return _finish("pretrain", params, _pretrain(params))


@flow(name="probe")
def probe_flow(params: Params | None = None) -> dict:
    """What the model at `probe.model` knows (LAMA-style probing); after pretrain."""
    params = params or load_params()
    return _finish("probe", params, _probe(params))


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


@flow(name="score")
def score_flow(params: Params | None = None, runner: str | dict | None = None) -> dict:
    """`runner` (deployments: `--param runner=dask`) overrides params.yaml's `runner:`."""
    params = with_runner(params or load_params(), runner)
    return _finish("score", params, _score(params))


@flow(name="batch-score")
def batch_score_flow(
    input: str | list[str],  # noqa: A002 (the deployment parameter's documented name)
    model_uri: str | None = None,
    output: str | None = None,
    runner: str | dict | None = None,
) -> dict:
    """Score archives with a registered model: the `batch-score` deployment's entry point.

    Takes plain parameters (paths, a model URI, where the chunks run: `runner=dask` for a
    LocalCluster, `runner=tcp://host:8786` for a running Dask cluster, or a dict of `runner:`
    keys) so a deployment run, schedule or trigger can pass them; everything else comes from
    params.yaml. Not a pipeline stage: no freshness marker (the output directory's own state
    makes reruns resume)."""
    params = with_runner(load_params(), runner)
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
    "probe": probe_flow,
    "convert": convert_flow,
    "finetune": finetune_flow,
    "score": score_flow,
}


# Stages that run a model in one process: where they do not depend on each other they run side
# by side (`pipeline.jobs`). The data stages spread their own work over the cores (`runner:`).
SIDE_BY_SIDE = {"probe", "finetune"}


@flow(name="pipeline")
def pipeline_flow(params: Params | None = None, force: bool = False) -> dict:
    """Every stage in order (one finetune per task); a stage whose parameters, inputs and code
    are unchanged is skipped (flows/freshness.py, the rules `dvc.yaml` is generated from).
    Model stages that do not depend on each other (probe and the fine-tuning tasks, after
    pretrain) run side by side in `pipeline.jobs` processes (flows/jobs.py)."""
    params = params or load_params()
    logger = get_run_logger()
    workers = jobs.resolve_jobs(params.pipeline.jobs)
    specs = freshness.pipeline_specs(params)
    results: dict[str, dict | str] = {}
    for wave in freshness.waves(specs):
        stale = []
        for s in wave:
            if not force and freshness.is_fresh(s):
                logger.info("%s: parameters, inputs and code unchanged, skipped", s.name)
                results[s.name] = "skipped"
            else:
                stale.append(s)
        if workers > 1 and len(stale) > 1 and all(s.stage in SIDE_BY_SIDE for s in stale):
            stale.sort(key=lambda s: _expected_work(params, s), reverse=True)
            logger.info("side by side, %d at a time: %s", workers, ", ".join(s.name for s in stale))
            results.update(_side_by_side(params, stale, workers))
        else:
            results.update({s.name: run_stage(s.stage, _stage_params(params, s)) for s in stale})
    _record_in_dvc(params, ran=any(r != "skipped" for r in results.values()))
    return {s.name: results[s.name] for s in specs}


def _side_by_side(params: Params, stale: list[freshness.StageSpec], workers: int) -> dict:
    """The stages in worker processes (flows/jobs.py); they take turns setting up MLflow's
    store (``tracking.setup``)."""
    batch = [jobs.Job(s.name, run_stage, (s.stage, _stage_params(params, s))) for s in stale]
    return jobs.run_side_by_side(batch, workers)


def run_stage(stage: str, params: Params) -> dict:
    """One stage's flow (by name, so that a worker process can be told which)."""
    return STAGE_FLOWS[stage](params)


def _expected_work(params: Params, s: freshness.StageSpec) -> int:
    """What a side-by-side stage will cost, to start the longest first (so that no long stage
    starts last and runs alone): the bytes it reads, times its epochs when it trains."""
    epochs = _stage_params(params, s).finetune.task_epochs if s.stage == "finetune" else 1
    return freshness.input_bytes(s) * epochs


def _stage_params(params: Params, s: freshness.StageSpec) -> Params:
    """A finetune stage runs with its task's entry resolved (`finetune.for_task`)."""
    if s.task is None:
        return params
    return params.model_copy(update={"finetune": params.finetune.for_task(s.task)})


def _record_in_dvc(params: Params, ran: bool) -> None:
    """In a DVC project, record what the pipeline produced in dvc.lock (`dvc commit`), so that
    `dvc status` agrees and `dvc repro` has nothing left to do; only when dvc.yaml describes
    exactly these stages (otherwise say how to regenerate it)."""
    import subprocess

    if not Path(".dvc").is_dir() or not Path("dvc.yaml").exists():
        return
    logger = get_run_logger()
    if not freshness.dvc_yaml_is_current(params):
        logger.warning("dvc.yaml does not match params.yaml: run `longdoc dvc-yaml`; not recorded")
        return
    if not ran and Path("dvc.lock").exists():
        return
    res = subprocess.run(
        [sys.executable, "-m", "dvc", "commit", "--force", "--quiet"],
        capture_output=True,
        text=True,
    )
    if res.returncode == 0:
        logger.info("recorded the outputs in dvc.lock (dvc commit)")
    else:
        logger.warning("dvc commit failed: %s", (res.stderr or res.stdout).strip()[-500:])
