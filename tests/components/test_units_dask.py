"""Running data stages' units (components.core.units): units commit in order whatever order
they finish in, a failed unit surfaces after the units before it are committed, a scoring run
killed with units in flight reuses every unit that was scored (its part was written as soon as
it finished), ingest's deduplication stays exact when its units (cleaning, hashing, MinHash,
splitting) run elsewhere and finish out of order, and ingest and tokenize on a real 2-worker
Dask LocalCluster survive `kill -9` of their process (the rerun splits / encodes none of what
was finished) and of a worker mid-unit (every document once). The same through Prefect's
DaskTaskRunner, for score, is tests/flows/test_dask.py."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longdoc.components.core.config import IngestParams, ScoreParams, TokenizeParams
from longdoc.components.core.units import INLINE, UnitRunner, run_units
from longdoc.components.data.ingest import ingest
from longdoc.components.data.tokenize import tokenize
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


# The data stages on a 2-worker LocalCluster (distributed's own executor as the runner: the
# Prefect wrapping is tests/flows/test_dask.py's), driven by a child process the tests kill.
# `_KILLS`, shared by the drivers: `slow_once(real)` wraps a stage's unit function so that the
# first unit to start anywhere sleeps 3 s (a worker runs it: pickled by value from __main__) and
# `kill_first_worker` SIGKILLs the worker running it, mid-unit; `on_cluster(stage, **kw)` runs
# `stage(params, runner=...)` on the cluster and writes its manifest to WORK.
_KILLS = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    from pathlib import Path

    from distributed import Client, LocalCluster

    from longdoc.components.core.units import UnitRunner

    mode, src, out, work = sys.argv[1:5]
    WORK = Path(work)

    def slow_once(real):
        def slow_first_unit(*args):
            marker = WORK / "unit-started"
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                time.sleep(3)  # the kill lands here, mid-unit
            return real(*args)

        return slow_first_unit

    def kill_first_worker():
        marker = WORK / "unit-started"
        while not marker.exists() or not marker.read_text():
            time.sleep(0.05)
        os.kill(int(marker.read_text()), signal.SIGKILL)
        (WORK / "killed").write_text(marker.read_text())

    def on_cluster(stage, params):
        if mode == "finish":
            threading.Thread(target=kill_first_worker, daemon=True).start()
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
        with cluster, Client(cluster) as client:
            runner = UnitRunner(client.get_executor(pure=False).submit, 4, "dask", remote=True)
            manifest = stage(params, runner=runner)
        (WORK / "manifest.json").write_text(json.dumps(manifest))
    """
)

# Ingest. `pause`: the reader stops at item PAUSE, with units of 8 documents split and shards of
# 10 closed before it; the test kills this process there. `finish`: the rerun, whose first unit
# on a worker is killed.
_INGEST_DRIVER = _KILLS + textwrap.dedent(
    """
    from longdoc.components.core.config import IngestParams
    from longdoc.components.data import ingest as m

    PAUSE = 30
    m._SENT_BATCH_DOCS = 2  # x4 on a parallel runner: units of 8 documents
    real_iter = m._iter_all

    def paused(*args):
        for i, item in enumerate(real_iter(*args)):
            if i == PAUSE:
                (WORK / "paused").touch()
                time.sleep(600)
            yield item

    if __name__ == "__main__":
        if mode == "pause":
            m._iter_all = paused
        else:
            m.prepare_unit = slow_once(m.prepare_unit)
        on_cluster(m.ingest, IngestParams(sources=[src], out=out, shard_max_docs=10))
    """
)

# Tokenize (`src` is the corpus). Every unit logs the docs shard it encodes. `pause`: the unit of
# docs shard 1 never finishes, so the other units finish ahead of it; the test kills this
# process then. `finish`: the rerun, whose first unit on a worker is killed.
_TOKENIZE_DRIVER = _KILLS + textwrap.dedent(
    """
    from longdoc.components.core.config import TokenizeParams
    from longdoc.components.data import tokenize as m

    def logged(real):
        def logged_unit(spec, shard, dest, val_ids):
            with open(WORK / f"{mode}-units.log", "a") as log:
                log.write(f"{os.getpid()} {Path(dest).name}\\n")
            if mode == "pause" and Path(dest).name == "part-00001.arrow":
                time.sleep(600)  # held until the kill
            return real(spec, shard, dest, val_ids)

        return logged_unit

    if __name__ == "__main__":
        real = m.encode_unit if mode == "pause" else slow_once(m.encode_unit)
        m.encode_unit = logged(real)  # logged first: the killed run is in the log too
        on_cluster(m.tokenize, TokenizeParams(corpus=src, out=out, vocab_size=320, seq_len=64))
    """
)


def _ingest_source(src: Path) -> None:
    """40 documents of a few sentences, 2 exact duplicates and an empty file among them."""
    src.mkdir()
    words = " ".join(TEXTS).split()
    for i in range(40):
        sentences = [
            " ".join(words[(i * 7 + j * 3 + k) % len(words)] for k in range(4 + (i + j) % 7))
            for j in range(2 + i % 4)
        ]
        (src / f"d{i:02d}.txt").write_text(". ".join(s.capitalize() for s in sentences) + f" {i}.")
    for i in (4, 25):
        (src / f"d{i:02d}-copy.txt").write_text((src / f"d{i:02d}.txt").read_text())
    (src / "d13-empty.txt").write_text(" \n")


def _driver(tmp_path: Path, script: str, mode: str, src: Path, out: Path) -> subprocess.Popen:
    """A driver script (above) in its own session; its output goes to `<mode>.log`."""
    path = tmp_path / "driver.py"
    path.write_text(script)
    log = open(tmp_path / f"{mode}.log", "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, str(path), mode, str(src), str(out), str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its cluster's processes can be stopped with it
    )


def _ingest_driver(tmp_path: Path, mode: str) -> subprocess.Popen:
    return _driver(tmp_path, _INGEST_DRIVER, mode, tmp_path / "src", tmp_path / "corpus")


def _stop(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's process group (it, its nannies and workers), if still there."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _paused_with_a_unit_past_the_checkpoint(tmp_path: Path) -> dict | None:
    """The state once the reader is paused, two shards are closed and only the unit that
    reaches past them is kept (the earlier ones were pruned as their shards closed)."""
    corpus = tmp_path / "corpus"
    try:
        state = json.loads((corpus / ".ingest-state.json").read_text())
    except (OSError, ValueError):
        return None
    units = list((corpus / ".ingest-units").glob("unit-*.arrow"))
    paused = (tmp_path / "paused").exists()
    return state if paused and len(state["shards"]) == 2 and len(units) == 1 else None


@pytest.mark.slow  # two driver processes with a LocalCluster each: ~45 s
def test_ingest_on_dask_survives_kill_9_of_its_process_and_of_a_worker(tmp_path):
    _ingest_source(tmp_path / "src")
    reference = tmp_path / "reference"  # one uninterrupted run, in this process, unit by unit
    expected = ingest(IngestParams(sources=[tmp_path / "src"], out=reference, shard_max_docs=10))
    proc = _ingest_driver(tmp_path, "pause")
    try:
        deadline = time.monotonic() + 120
        while (state := _paused_with_a_unit_past_the_checkpoint(tmp_path)) is None:
            log = (tmp_path / "pause.log").read_text(errors="replace")[-3000:]
            assert proc.poll() is None, log
            assert time.monotonic() < deadline, f"never paused with a unit split ahead\n{log}"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)  # the stage's process only, as a crash would
        proc.wait(timeout=30)
    finally:
        _stop(proc)
    (unit,) = (tmp_path / "corpus/.ingest-units").glob("unit-*.arrow")
    split = pa.ipc.open_file(pa.OSFile(str(unit))).read_all()
    closed = {d for s in state["shards"] for d in _doc_ids(tmp_path / "corpus" / s["name"])}
    items = split.column("item").to_pylist()
    reusable = [i for i in items if i >= state["consumed"]]
    assert set(split.column("doc_id").to_pylist()) & closed and reusable  # it straddles

    proc = _ingest_driver(tmp_path, "finish")
    try:
        assert proc.wait(timeout=180) == 0, (tmp_path / "finish.log").read_text()[-3000:]
    finally:
        _stop(proc)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert not _alive(int((tmp_path / "killed").read_text()))  # a worker died mid-unit
    assert manifest["timings"]["resumed_after_inputs"] == state["consumed"]
    assert manifest["timings"]["split_docs_reused"] == len(reusable)
    assert manifest["counts"] == expected["counts"]
    assert expected["counts"]["duplicates"] == 2 and expected["counts"]["quarantined"] == 1
    assert manifest["shards"] == expected["shards"]  # names, rows and sha256: byte for byte
    for name in ("quarantine.jsonl", "duplicates.jsonl"):
        assert (tmp_path / "corpus" / name).read_text() == (reference / name).read_text()
    ids = [d for s in manifest["shards"] for d in _doc_ids(tmp_path / "corpus" / s["name"])]
    assert len(ids) == len(set(ids)) == 40  # every document exactly once
    assert not (tmp_path / "corpus/.ingest-units").exists()


def test_ingest_dedup_stays_exact_when_units_run_elsewhere_and_out_of_order(tmp_path, monkeypatch):
    """Units that clean, hash and sign their documents where they run (their arguments and
    results pickled, as for a worker) and finish out of order: exact and near duplicates across
    units are found as in one run unit by unit, with the same corpus and records."""
    import pickle

    from longdoc.components.data import ingest as ingest_mod

    src = tmp_path / "src"
    _ingest_source(src)
    for i in (3, 17, 30):  # near-duplicates (one shingle more) in later units than their originals
        (src / f"d{i:02d}-near.txt").write_text((src / f"d{i:02d}.txt").read_text() + " extra")
    params = {"sources": [src], "near_dup_threshold": 0.8, "shard_max_docs": 10}
    reference = ingest(IngestParams(out=tmp_path / "reference", **params))
    monkeypatch.setattr(ingest_mod, "_SENT_BATCH_DOCS", 2)  # x4 in flight: units of 8 documents
    started = []

    def submit(fn, *args):
        args, first = pickle.loads(pickle.dumps(args)), not started
        started.append(1)

        def run():
            if first:
                time.sleep(0.5)  # the first unit finishes after the ones behind it
            return pickle.loads(pickle.dumps(fn(*args)))

        return pool.submit(run)

    with ThreadPoolExecutor(2) as pool:
        runner = UnitRunner(submit, 4, "elsewhere", remote=True)
        moved = ingest(IngestParams(out=tmp_path / "moved", **params), runner=runner)
    assert len(started) >= 5
    assert reference["counts"]["near_duplicates"] == 3 and reference["counts"]["duplicates"] == 2
    assert moved["counts"] == reference["counts"]
    assert moved["shards"] == reference["shards"]  # names, rows and sha256
    for name in ("quarantine.jsonl", "duplicates.jsonl"):
        assert (tmp_path / "moved" / name).read_text() == (
            tmp_path / "reference" / name
        ).read_text()


def _tokenize_state_with_all_but_part_1(out: Path, n_parts: int) -> dict | None:
    try:
        state = json.loads((out / ".tokenize-state.json").read_text())
    except (OSError, ValueError):
        return None
    parts = state.get("parts", {})
    return state if len(parts) == n_parts - 1 and "part-00001.arrow" not in parts else None


@pytest.mark.slow  # two driver processes with a LocalCluster each: ~50 s
def test_tokenize_on_dask_survives_kill_9_of_its_process_and_of_a_worker(tmp_path):
    """Docs shards finished ahead of an unfinished one are kept through `kill -9` of the flow's
    process and encoded by no rerun; a worker killed mid-unit has its unit run again; the
    output is the local run's, byte for byte."""
    _ingest_source(tmp_path / "src")
    corpus, out = tmp_path / "corpus", tmp_path / "tokens"
    ingest(IngestParams(sources=[tmp_path / "src"], out=corpus, shard_max_docs=8))
    n_parts = len(json.loads((corpus / "manifest.json").read_text())["shards"])
    assert n_parts == 5  # 40 documents
    reference = TokenizeParams(
        corpus=corpus, out=tmp_path / "reference", vocab_size=320, seq_len=64
    )
    expected = tokenize(reference)  # one uninterrupted run, in this process, unit by unit
    proc = _driver(tmp_path, _TOKENIZE_DRIVER, "pause", corpus, out)
    try:
        deadline = time.monotonic() + 120
        while (state := _tokenize_state_with_all_but_part_1(out, n_parts)) is None:
            log = (tmp_path / "pause.log").read_text(errors="replace")[-3000:]
            assert proc.poll() is None, log
            assert time.monotonic() < deadline, f"the parts after part 1 never finished\n{log}"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)  # the stage's process only, as a crash would
        proc.wait(timeout=30)
    finally:
        _stop(proc)
    kept = {name: (out / "docs" / name).stat().st_mtime_ns for name in state["parts"]}

    proc = _driver(tmp_path, _TOKENIZE_DRIVER, "finish", corpus, out)
    try:
        assert proc.wait(timeout=180) == 0, (tmp_path / "finish.log").read_text()[-3000:]
    finally:
        _stop(proc)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    killed = int((tmp_path / "killed").read_text())
    assert not _alive(killed)  # a worker died mid-unit
    runs = [line.split() for line in (tmp_path / "finish-units.log").read_text().splitlines()]
    assert {name for _, name in runs} == {"part-00001.arrow"}  # no finished part encoded again
    assert [int(pid) for pid, _ in runs].count(killed) == 1 and len(runs) == 2  # ran again
    assert {n: (out / "docs" / n).stat().st_mtime_ns for n in kept} == kept  # reused as they were
    assert manifest["counts"] == expected["counts"]
    assert manifest["files"] == expected["files"]  # docs and packed shards: sha256 of each
    assert not list((out / "docs").glob(".*.tmp"))  # the killed unit's torn part is gone


def _doc_ids(shard: Path) -> list[str]:
    return pq.read_table(shard, columns=["doc_id"]).column("doc_id").to_pylist()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_score_on_a_remote_runner_loads_the_model_only_where_units_run(
    tmp_path,
    champion,  # noqa: F811
    monkeypatch,
):
    """Workers load the model for their units; the stage's process learns its kind and how it
    reads texts from the first of them and loads nothing (before: a second copy in memory)."""
    import threading

    from longdoc.components.inference import score as score_mod

    loads = []
    real_load = score_mod._load_pinned

    def counted_load(*args):
        loads.append(threading.current_thread() is threading.main_thread())
        return real_load(*args)

    monkeypatch.setattr(score_mod, "_load_pinned", counted_load)
    src = tmp_path / "inbox.tar.gz"
    _tar(src, [(f"doc{i}.txt", f"{TEXTS[i % 3]} number {i}".encode()) for i in range(7)])

    def run(out, runner=INLINE):
        uri = "models:/longdoc-test@champion"
        params = ScoreParams(inputs=[src], model_uri=uri, out=out, chunk_docs=2, max_len=32)
        return score_mod.score(params, champion, runner=runner)

    local = run(tmp_path / "local")
    assert loads == [True]
    with ThreadPoolExecutor(2) as pool:  # stands in for the workers: they share one engine
        remote = run(tmp_path / "remote", UnitRunner(pool.submit, 4, "threads", remote=True))
    assert loads == [True, False]  # one more load, by a worker, none by the stage
    assert remote["counts"] == local["counts"] == {"inputs": 7, "scored": 7, "errors": 0}
    assert remote["model"] == local["model"]

    def rows(where):
        return pq.read_table(where / "predictions.parquet").drop(["scored_at"]).to_pylist()

    assert rows(tmp_path / "remote") == rows(tmp_path / "local")
