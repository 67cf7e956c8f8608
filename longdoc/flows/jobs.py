"""Independent stages side by side in worker processes (`pipeline.jobs`).

Why processes: torch's thread count, its random generator and OpenMP's pool are per process, so
two stages in threads of one process would share cores badly and draw from one random stream
(their results would depend on timing). Each worker is a fresh interpreter (`spawn`) given its
share of the cores (`OMP_NUM_THREADS` and friends, `torch.set_num_threads`). It runs one
stage's flow after another, each a flow run of its own on the same Prefect server (via
`PREFECT_API_URL`); the next stage goes to whichever worker is free, in the order given (the
caller puts the longest first).

A failure lets the running stages finish (their outputs are complete and fresh on the rerun),
starts nothing new and raises the first error. A worker does not outlive the process that
started it (`PR_SET_PDEATHSIG`): after `kill -9` of the pipeline no stage goes on running, and
the rerun starts each unfinished stage once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Thread pools a worker's libraries size from the environment as they start: torch/MKL, the
# compiled kernels where they use TVM's own pool, the Rust tokenizer's.
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TVM_NUM_THREADS", "RAYON_NUM_THREADS")


@dataclass(frozen=True)
class Job:
    """One stage to run: `fn(*args)` in a worker (`fn` module-level, so it pickles by name)."""

    name: str
    fn: Callable[..., Any]
    args: tuple = ()


class JobFailed(RuntimeError):
    """A worker died under a stage (killed, out of memory, a crash in native code)."""


def resolve_jobs(jobs: int | str) -> int:
    """`pipeline.jobs`: a count as given; auto = 1 with a CUDA device, else min(2, cores)."""
    if jobs != "auto":
        return int(jobs)
    import torch

    return 1 if torch.cuda.is_available() else min(2, torch.get_num_threads())


def run_side_by_side(jobs: list[Job], workers: int) -> dict[str, Any]:
    """Run every job, `workers` at a time in worker processes, each with an equal share of the
    threads this process's torch uses; return each job's result by name."""
    import torch

    threads = max(1, torch.get_num_threads() // workers)
    log.info("%d worker processes of %d threads", workers, threads)
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_settle,
        initargs=(threads, os.getpid()),
    )
    pending, running = list(jobs), {}
    results: dict[str, Any] = {}
    failure: BaseException | None = None
    lost: list[str] = []
    with pool:
        while pending or running:
            # handed over one at a time, so that after a failure nothing new starts
            while pending and failure is None and not lost and len(running) < workers:
                job = pending.pop(0)
                running[pool.submit(job.fn, *job.args)] = job.name
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                try:
                    results[name] = future.result()
                except BrokenProcessPool:  # the pool stops every worker when one dies
                    lost.append(name)
                except BaseException as exc:
                    log.error("%s: failed: %s", name, exc)
                    failure = failure or exc
    if lost and failure is None:
        names = ", ".join(lost)
        failure = JobFailed(f"a worker process died (killed, or out of memory) running {names}")
    if failure is not None:
        if pending:
            log.warning("not started: %s", ", ".join(job.name for job in pending))
        raise failure
    return {job.name: results[job.name] for job in jobs}


def _settle(threads: int, parent: int) -> None:
    """A worker's first act: die with the parent, and take its share of the threads."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
