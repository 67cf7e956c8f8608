"""Who runs the data stages' work units (`runner:` in params.yaml): orchestration only.

The stages (`components.data.ingest`, `components.data.tokenize`, `components.inference.score`)
cut their work into coarse units and hand each to a `UnitRunner` (`components.core.units`).
Here each unit becomes one Prefect task run (named after the stage's unit: `score-chunk`, ...)
on the runner `params.runner` chooses:

- `kind: local`: the unit task is called in the stage's own process, one unit at a time (the
  stage behaves exactly as a plain function call, with one task run per unit in the UI);
- `kind: dask`: the unit task is submitted to prefect-dask's `DaskTaskRunner`: a
  `distributed.LocalCluster` of `n_workers` processes started for the stage (and closed after
  it), or the running cluster at `address`. About twice as many units as the cluster has worker
  threads are kept in flight.

Why units and not documents: a Prefect task run per document costs more than the document
(API calls, state events), and Prefect's own issues show that such runs do not scale; a unit
is a chunk of hundreds of documents.

A worker killed mid-unit: Dask notices the lost worker and runs the unit again on another
(up to `distributed.scheduler.allowed-failures` times, 3 by default). The Prefect task run keeps
its id, goes Running again and ends Completed once; the stage's output is the same because the
stage commits units in order in its own process. A unit that keeps killing workers (a document
that exhausts memory) stops the stage with an error naming the stage's unit; the rerun resumes.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import ValidationError

from longdoc.components.core.config import ConfigError, Params, RunnerParams
from longdoc.components.core.units import UnitRunner, inline

__all__ = ["unit_runner", "with_runner"]

log = logging.getLogger(__name__)

# The environment of each LocalCluster worker (README: set the same on a cluster of your own):
# one core per unit (Dask itself sets OMP_NUM_THREADS=1 for workers, which the compiled kernels
# follow; TVM_NUM_THREADS for the case they fall back to TVM's own pool), and the Rust tokenizer
# not spreading one unit over every core.
_WORKER_ENV = {
    "TVM_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


_QUIET_WORKERS = "DASK_LOGGING__DISTRIBUTED"  # read by workers as they import distributed

# Dask's nanny starts each worker with MALLOC_TRIM_THRESHOLD_=65536, which fixes glibc's
# thresholds: every large tensor is then mapped and zeroed anew, and scoring took ~1.2-1.4x the
# CPU seconds of the same work in a plain process (RESULTS.md, "Data stages on Dask"). The
# LocalClusters started here leave glibc's adaptive default (None unsets a pre-spawn variable).
_NANNY_ENV = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


_worker_settled = False


@task(cache_policy=NO_CACHE, persist_result=False)
def _unit(fn: Any, args: tuple) -> Any:
    """One work unit: `fn(*args)`, a module-level function of the stage (pickled by name)."""
    global _worker_settled
    result = fn(*args)
    if not _worker_settled and _in_dask_worker():
        # After its first unit a worker holds what it keeps for life (torch, the stage's
        # modules, a model): freezing them keeps the garbage collector from walking them again,
        # and lets the worker exit within the nanny's few seconds when the cluster closes
        # (interpreter shutdown otherwise collects them all, and a loaded machine then misses
        # that deadline and the nanny kills it with a warning).
        gc.freeze()
        _worker_settled = True
    return result


def _in_dask_worker() -> bool:
    if "distributed" not in sys.modules:  # (a local run never imports it)
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def with_runner(params: Params, runner: str | dict | None) -> Params:
    """`params` with the runner a deployment run asked for: `local`, `dask` (a LocalCluster),
    a scheduler address (`tcp://host:8786`: dask on that cluster), or a dict of `runner` keys
    (`{"kind": "dask", "n_workers": 4}`); None keeps params.yaml's."""
    if runner is None:
        return params
    if isinstance(runner, str):
        runner = {"kind": "dask", "address": runner} if "://" in runner else {"kind": runner}
    try:
        chosen = RunnerParams.model_validate({**params.runner.model_dump(), **runner})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "runner"
        raise ConfigError(f"runner {runner!r}: {key}: {first['msg']}") from None
    return params.model_copy(update={"runner": chosen})


@contextmanager
def unit_runner(params: RunnerParams, unit_name: str) -> Iterator[UnitRunner]:
    """A UnitRunner whose units are task runs named `unit_name`, on the chosen task runner."""
    unit = _unit.with_options(name=unit_name)
    if params.kind == "local":
        yield UnitRunner(submit=lambda fn, *args: inline(unit, fn, args), name="local")
        return
    task_runner = _dask_task_runner(params)  # imports distributed, which sets its log levels
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # cluster start/stop chatter; warnings still show
    try:
        with ExitStack() as stack:
            stack.enter_context(_environ_restored())
            # LocalCluster workers configure their logging on import, from the environment
            # they inherit: the same setting for them
            os.environ[_QUIET_WORKERS] = "warning"
            if not params.address:  # a cluster of the user's keeps the user's settings
                import dask  # (distributed is imported above: its defaults are in place)

                stack.enter_context(dask.config.set(_NANNY_ENV))
            stack.enter_context(task_runner)
            stack.enter_context(_context_serialized_once())
            yield _dask_units(task_runner, unit, unit_name, stack)
    finally:
        quiet.setLevel(level)


@contextmanager
def _environ_restored() -> Iterator[None]:
    """`os.environ` as it was before, afterwards. Dask's nanny writes its pre-spawn variables
    (`OMP_NUM_THREADS=1` and the others) into this process's environment and leaves them there,
    where every subprocess the stage starts later would inherit them."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


@contextmanager
def _context_serialized_once() -> Iterator[None]:
    """prefect-dask serialises the caller's whole Prefect context (the settings, the flow run
    and its parameters) for every task it submits, in the stage's process (~80% of a unit's
    hand-over), and each worker rebuilds the settings from it for every task (~75% of the
    worker's own per-unit cost): on a 2-core machine, CPU taken from the units. Within one
    stage that context does not change, so it is serialised once here, without the settings:
    a worker keeps its own, read once from its environment (a LocalCluster's workers inherit
    this process's, PREFECT_API_URL included; a cluster of your own sets PREFECT_API_URL on
    its workers, README). Only the per-task part (the asset context of the new task run) is
    built per submission, as prefect does."""
    import prefect.context
    import prefect_dask.client

    real = prefect_dask.client.serialize_context
    if real is not prefect.context.serialize_context:  # another version's wiring: leave it
        yield
        return
    fixed = {**real(), "settings_context": {}}

    def serialize_context(asset_ctx_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        per_task = {}
        if asset_ctx_kwargs:
            per_task = prefect.context.AssetContext.from_task_and_inputs(**asset_ctx_kwargs)
            per_task = per_task.serialize()
        return {**fixed, "asset_context": per_task}

    prefect_dask.client.serialize_context = serialize_context
    try:
        yield
    finally:
        prefect_dask.client.serialize_context = real


def _dask_task_runner(params: RunnerParams):
    from prefect_dask import DaskTaskRunner

    if params.address:
        return DaskTaskRunner(address=params.address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": params.n_workers,
            "threads_per_worker": params.threads_per_worker,
            "processes": True,
            "env": dict(_WORKER_ENV),
            "dashboard_address": ":0",  # a free port: several clusters may run side by side
        }
    )


def _dask_units(task_runner: Any, unit: Any, unit_name: str, stack: ExitStack) -> UnitRunner:
    """Submit units to the started `task_runner`; a helper thread per unit in flight waits for
    its task run, so the stage sees plain `concurrent.futures` futures."""
    from distributed import KilledWorker
    from prefect_dask.task_runners import PrefectDaskFuture

    slots = max(sum(task_runner.client.nthreads().values()), 1)
    in_flight = 2 * slots
    waiters = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix=unit_name)
    stack.callback(waiters.shutdown, wait=False, cancel_futures=True)  # before the cluster goes

    def result(future: Any) -> Any:
        try:
            return future.result()
        except KilledWorker as exc:
            raise RuntimeError(
                f"{unit_name}: a unit killed every Dask worker that ran it ({exc}); out of "
                "memory? The rerun resumes after the last unit committed"
            ) from exc

    def submit(fn: Any, *args: Any) -> Future:
        # DaskTaskRunner.submit, with pure=False: Dask would otherwise name each task by hashing
        # all its arguments (a unit's texts, megabytes) in this process. Units never share a
        # name anyway: each is a new task run.
        parameters = {"fn": fn, "args": args}
        task = task_runner.client.submit(
            unit, parameters=parameters, wait_for=None, dependencies=None,
            return_type="state", pure=False,
        )  # fmt: skip
        future = PrefectDaskFuture(wrapped_future=task, task_run_id=task.task_run_id)
        return waiters.submit(result, future)

    where = task_runner.address or f"LocalCluster, {slots} worker threads"
    log.info("%s units run on Dask (%s), %d in flight", unit_name, where, in_flight)
    return UnitRunner(submit=submit, in_flight=in_flight, name=f"dask ({where})", remote=True)
