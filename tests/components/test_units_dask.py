"""The runner-independent half of running data stages on Dask (components.core.units): units
commit in order whatever order they finish in, a failed unit surfaces after the units before it
are committed, and a scoring run killed with units in flight reuses every unit that was scored
(its part was written as soon as it finished). The Dask half is tests/flows/test_dask.py."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import pytest

from longdoc.components.core.config import ScoreParams
from longdoc.components.core.units import INLINE, UnitRunner, run_units
from tests.components.test_score import REPO, TEXTS, _tar, champion  # noqa: F401 (fixture)


def _threads(delays: dict[int, float], in_flight: int) -> tuple[UnitRunner, ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(in_flight)

    def submit(fn, *args):
        def run():
            time.sleep(delays.get(args[0], 0.0))
            return fn(*args)

        return pool.submit(run)

    return UnitRunner(submit=submit, in_flight=in_flight), pool


def test_units_commit_in_order_whatever_order_they_finish_in():
    runner, pool = _threads({0: 0.3, 1: 0.2}, in_flight=3)
    finished, committed, uncommitted = [], [], []
    live = set()

    def work(u):
        live.add(u)
        uncommitted.append(len(live))
        return None if u % 4 == 3 else (lambda x: x * x, (u,))  # every 4th: nothing to run

    def commit(u):
        live.discard(u)
        committed.append(u)

    with pool:
        run_units(runner, range(10), work, lambda u, r: finished.append((u, r)), commit)
    assert committed == list(range(10))
    assert sorted(finished) == [(u, u * u) for u in range(10) if u % 4 != 3]
    assert [u for u, _ in finished][:2] != [0, 1]  # 0 and 1 were slow: others finished first
    assert max(uncommitted) <= 3  # never more than in_flight units read ahead of the commits


def test_a_failed_unit_is_raised_after_the_units_before_it_are_committed():
    runner, pool = _threads({0: 0.3}, in_flight=4)
    committed = []

    def fn(u):
        if u == 2:
            raise ValueError("unit 2 is bad")
        return u

    with pool, pytest.raises(ValueError, match="unit 2 is bad"):
        run_units(runner, range(6), lambda u: (fn, (u,)), lambda u, r: None, committed.append)
    assert committed == [0, 1]


def test_inline_runs_each_unit_before_reading_far_ahead():
    read, ran = [], []

    def units():
        for u in range(4):
            read.append(u)
            yield u

    def work(u):
        assert read[-1] <= u + 1  # the reader is at most one unit ahead
        return (ran.append, (u,))

    run_units(INLINE, units(), work, lambda u, r: None, lambda u: None)
    assert ran == [0, 1, 2, 3]


# The driver scores with a runner of threads whose first unit never finishes, so the units after
# it are scored and written ahead of it (the state names them in `ahead`); the test then kills
# the driver with SIGKILL: every unit that was scored must be reused by the rerun.
_DRIVER = textwrap.dedent(
    """
    import sys, threading
    from concurrent.futures import ThreadPoolExecutor
    from longdoc.components.core.config import ScoreParams, TrackingParams
    from longdoc.components.core.units import UnitRunner
    from longdoc.components.inference.score import score

    src, out, uri = sys.argv[1:4]
    pool, calls = ThreadPoolExecutor(4), []
    never, one_at_a_time = threading.Event(), threading.Lock()

    def submit(fn, *args):
        first = not calls
        calls.append(1)

        def run():
            if first:
                never.wait()  # the head unit never finishes
            with one_at_a_time:  # one model call at a time, as one worker would
                return fn(*args)

        return pool.submit(run)

    params = ScoreParams(inputs=[src], model_uri="models:/longdoc-test@champion", out=out,
                         chunk_docs=2, max_len=32)
    score(params, TrackingParams(uri=uri, experiment="t"), runner=UnitRunner(submit, 4))
    """
)


@pytest.mark.slow  # a child process that loads torch + MLflow, then two scoring runs: ~20 s
def test_kill_9_with_units_in_flight_reuses_every_scored_unit(tmp_path, champion):  # noqa: F811
    src = tmp_path / "inbox.tar.gz"
    members = [(f"doc{i:02d}.txt", f"{TEXTS[i % 3]} number {i}".encode()) for i in range(13)]
    members.insert(3, ("bad.txt", b"\x00\x01binary\x00"))
    _tar(src, members)
    out = tmp_path / "pred"
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(src), str(out), champion.uri],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    state_file = out / ".score-state.json"
    try:
        deadline = time.monotonic() + 120
        ahead: dict = {}
        while len(ahead) < 3:  # units 1-3 scored; unit 0 holds back every commit
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the units after the first were never scored"
            time.sleep(0.05)
            try:
                ahead = json.loads(state_file.read_text()).get("ahead", {})
            except (OSError, ValueError):
                pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    state = json.loads(state_file.read_text())
    assert state["consumed"] == 0 and state["parts"] == []
    assert sorted(state["ahead"]) == [f"part-0000{k}.parquet" for k in (1, 2, 3)]

    from longdoc.components.inference.score import score

    def params(to):
        uri = "models:/longdoc-test@champion"
        return ScoreParams(inputs=[src], model_uri=uri, out=to, chunk_docs=2, max_len=32)

    manifest = score(params(out), champion)
    assert manifest["this_run"]["units_reused"] == 3
    assert manifest["this_run"]["units_scored"] == 7 - 3  # 13 documents in chunks of 2
    reference = score(params(tmp_path / "reference"), champion)  # one uninterrupted run
    assert manifest["counts"] == reference["counts"] == {"inputs": 14, "scored": 13, "errors": 1}
    assert manifest["parts"] == reference["parts"]

    def rows(where):
        return pq.read_table(where / "predictions.parquet").drop(["scored_at"]).to_pylist()

    assert rows(out) == rows(tmp_path / "reference")  # every document once, same predictions
    assert (out / "errors.jsonl").read_text() == (tmp_path / "reference/errors.jsonl").read_text()
    with tarfile.open(src) as tar:
        assert len(rows(out)) == len(tar.getmembers()) - 1
