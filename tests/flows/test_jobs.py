"""Independent stages side by side in worker processes (flows/jobs.py): results, thread shares,
failures, dead workers, and workers that do not outlive a killed pipeline."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from longdoc.components.core.io import InputError
from longdoc.flows import jobs
from longdoc.flows.jobs import Job, JobFailed, run_side_by_side


def where_am_i(tag: str) -> dict:
    return {
        "tag": tag,
        "pid": os.getpid(),
        "threads": torch.get_num_threads(),
        "omp": os.environ["OMP_NUM_THREADS"],
    }


def sleep_then_touch(path: str, seconds: float) -> str:
    time.sleep(seconds)
    Path(path).write_text("done")
    return path


def fail(message: str) -> None:
    raise InputError(message)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_each_job_runs_in_a_worker_with_a_share_of_the_threads():
    found = run_side_by_side([Job(f"j{i}", where_am_i, (f"t{i}",)) for i in range(3)], workers=2)
    assert list(found) == ["j0", "j1", "j2"]
    assert [r["tag"] for r in found.values()] == ["t0", "t1", "t2"]
    share = max(1, torch.get_num_threads() // 2)
    for r in found.values():
        assert r["pid"] != os.getpid()
        assert r["threads"] == share and r["omp"] == str(share)
    assert len({r["pid"] for r in found.values()}) <= 2  # two workers, reused


def test_a_failure_lets_the_running_job_finish_and_starts_nothing_new(tmp_path):
    slow, never = tmp_path / "slow", tmp_path / "never"
    batch = [
        Job("bad", fail, ("data/x.json: record 3: no label",)),
        Job("slow", sleep_then_touch, (str(slow), 3)),
        Job("never", sleep_then_touch, (str(never), 0)),
    ]
    with pytest.raises(InputError, match="record 3: no label"):
        run_side_by_side(batch, workers=2)
    assert slow.read_text() == "done"  # it was running: it finished
    assert not never.exists()


def test_a_worker_that_dies_is_an_error_naming_the_job():
    with pytest.raises(JobFailed, match="worker process died.*doomed"):
        run_side_by_side([Job("doomed", die)], workers=2)


def test_auto_jobs():
    assert jobs.resolve_jobs(3) == 3
    assert jobs.resolve_jobs("auto") == min(2, torch.get_num_threads())


def test_workers_do_not_outlive_a_killed_pipeline(tmp_path):
    """kill -9 of the process running the jobs: its workers go too (no stage goes on writing
    beside the rerun)."""
    pid_file = tmp_path / "worker.pid"
    driver = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from longdoc.flows.jobs import Job, run_side_by_side
        from tests.flows.test_jobs import write_pid_then_sleep
        run_side_by_side([Job("long", write_pid_then_sleep, ({str(pid_file)!r},))], workers=2)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", driver])
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline:
            assert parent.poll() is None, "the driver exited early"
            time.sleep(0.2)
        worker = int(pid_file.read_text())
        assert _alive(worker)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker), "the worker outlived the killed driver"
    finally:
        parent.kill()


def write_pid_then_sleep(path: str) -> None:
    Path(path + ".tmp").write_text(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(600)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child of an exited parent is reaped by init; a zombie still answers kill(0)
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()
