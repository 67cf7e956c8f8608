"""The data stages on a real 2-worker Dask LocalCluster through prefect-dask (`runner.kind:
dask`): the same output as the local runner, a `kill -9` of the flow process mid-run leaves no
worker behind and the rerun reuses every finished unit, and a `kill -9` of a Dask worker
mid-unit still gives every document exactly once, with every unit's Prefect task run Completed.

A driver process runs the flow (with the Prefect server of the test's own PREFECT_HOME); the
test kills it or one of its workers with SIGKILL. Runner selection from params and deployment
parameters is checked without a cluster (`with_runner`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from longdoc.components.core.config import ConfigError, Params, RunnerParams, load_params
from longdoc.flows.runner import with_runner
from tests.components.test_score import REPO, TEXTS, _tar, champion  # noqa: F401 (fixture)

# Modes: `pause` scores on Dask and stops reading at item PAUSE (the test kills it there);
# `finish` scores a reference with the local runner, then resumes the paused run on Dask while
# a thread kills the worker running the first unit mid-unit (the unit sleeps once so the kill
# lands inside it), and reports the Prefect task runs of its score-chunk units.
_DRIVER = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    from pathlib import Path

    if __name__ == "__main__":  # not in the Dask workers, which run this file's top level too
        from longdoc.flows.server import start_api

        # before Prefect is imported, as the CLI does: the shared local server (the one the
        # `pause` run started serves the `finish` run, as it would serve the next command)
        api_ready = start_api()

    from prefect import flow
    from prefect.context import FlowRunContext

    from longdoc.components.core.config import RunnerParams, ScoreParams, TrackingParams
    from longdoc.components.inference import score as score_mod
    from longdoc.flows.runner import unit_runner

    mode, src, work, uri = sys.argv[1:5]
    WORK = Path(work)
    PAUSE = 9
    real_unit, real_stream = score_mod.score_unit, score_mod._stream

    def slow_first_unit(*args):  # runs on a worker (pickled by value from __main__)
        marker = WORK / "unit-started"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(2)  # the kill lands here, mid-unit
        return real_unit(*args)

    def paused(params, sources, *args):
        for i, item in enumerate(real_stream(params, sources, *args)):
            if i == PAUSE:
                (WORK / "paused").write_text("")
                time.sleep(600)
            yield item

    def kill_first_worker():
        marker = WORK / "unit-started"
        while not marker.exists() or not marker.read_text():
            time.sleep(0.05)
        pid = int(marker.read_text())
        os.kill(pid, signal.SIGKILL)
        (WORK / "killed").write_text(str(pid))

    def params(out, chunk_docs=2):
        return ScoreParams(inputs=[src], model_uri="models:/longdoc-test@champion", out=out,
                           chunk_docs=chunk_docs, max_len=32)

    def unit_states(flow_run_id, prefix):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        only_this = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        with get_client(sync_client=True) as client:
            for _ in range(300):  # states arrive as events: give the (maybe loaded) server time
                runs = [r for r in client.read_task_runs(flow_run_filter=only_this)
                        if r.name.startswith(prefix)]
                if runs and all(r.state and r.state.is_final() for r in runs):
                    break
                time.sleep(0.2)
        return [r.state.type.value for r in runs]

    @flow
    def drive():
        tracking = TrackingParams(uri=uri, experiment="t")
        dask = RunnerParams(kind="dask", n_workers=2)
        if mode == "pause":
            score_mod._stream = paused
            with unit_runner(dask, "score-chunk") as runner:
                score_mod.score(params(WORK / "pred"), tracking, runner=runner)
            return
        with unit_runner(RunnerParams(), "reference-chunk") as runner:
            reference = score_mod.score(params(WORK / "reference"), tracking, runner=runner)
        score_mod.score_unit = slow_first_unit
        threading.Thread(target=kill_first_worker, daemon=True).start()
        with unit_runner(dask, "unit") as runner:  # one cluster for the three stages
            manifest = score_mod.score(params(WORK / "pred"), tracking, runner=runner)
            data = {"dask": data_stages(runner, "dask")}
        with unit_runner(RunnerParams(), "local-unit") as runner:
            data["local"] = data_stages(runner, "local")
        run_id = FlowRunContext.get().flow_run.id
        report = {"reference": reference, "manifest": manifest, "data": data,
                  "states": unit_states(run_id, "unit")}
        (WORK / "report.json").write_text(json.dumps(report, default=str))

    def data_stages(runner, name):
        from longdoc.components.core.config import IngestParams, TokenizeParams
        from longdoc.components.data import ingest as ingest_mod
        from longdoc.components.data.tokenize import tokenize

        ingest_mod._SENT_BATCH_DOCS = 2  # units of 8 documents: several on a small corpus
        corpus, shards = WORK / f"corpus-{name}", WORK / f"shards-{name}"
        ingested = ingest_mod.ingest(
            IngestParams(sources=[WORK / "docs"], out=corpus, shard_max_docs=7), runner=runner
        )
        tokenized = tokenize(
            TokenizeParams(corpus=corpus, out=shards, vocab_size=320, seq_len=64), runner=runner
        )
        return {"ingest": ingested, "tokenize": tokenized}

    if __name__ == "__main__":
        api_ready()
        drive()
    """
)


def _corpus(root: Path) -> None:
    """30 documents of a few sentences, 2 exact duplicates, 1 binary file (quarantined)."""
    root.mkdir()
    words = " ".join(TEXTS).split()
    for i in range(30):
        sentences = [
            " ".join(words[(i * 7 + j * 3 + k) % len(words)] for k in range(5 + (i + j) % 9))
            for j in range(3 + i % 5)
        ]
        (root / f"doc{i:02d}.txt").write_text(". ".join(s.capitalize() for s in sentences) + ".")
    for i in (3, 11):
        (root / f"copy-of-{i:02d}.txt").write_text((root / f"doc{i:02d}.txt").read_text())
    (root / "broken.txt").write_bytes(b"\x00\x01\x02binary\x00" * 20)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _driver(tmp_path: Path, mode: str, src: Path, uri: str) -> subprocess.Popen:
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env.update(PREFECT_HOME=str(tmp_path / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log = open(tmp_path / f"driver-{mode}.log", "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, str(script), mode, str(src), str(tmp_path), uri],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _log(tmp_path: Path, mode: str) -> str:
    return (tmp_path / f"driver-{mode}.log").read_text(errors="replace")[-4000:]


def _wait_for(what, proc: subprocess.Popen, tmp_path: Path, mode: str, limit: float = 240):
    deadline = time.monotonic() + limit
    while not (found := what()):
        assert proc.poll() is None, _log(tmp_path, mode)
        assert time.monotonic() < deadline, f"timed out\n{_log(tmp_path, mode)}"
        time.sleep(0.1)
    return found


def _all_units_named(state_file: Path) -> dict | None:
    """The state once it names all four units before the pause (committed parts + parts
    written ahead of an unfinished unit)."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    return state if len(state["parts"]) + len(state.get("ahead", {})) == 4 else None


@pytest.mark.slow  # two driver processes, each with a 2-worker LocalCluster: ~40 s idle
def test_score_on_dask_is_the_local_output_and_survives_kill_9_of_flow_and_worker(
    tmp_path,
    champion,  # noqa: F811
):
    src = tmp_path / "inbox.tar.gz"
    members = [(f"doc{i:02d}.txt", f"{TEXTS[i % 3]} number {i}".encode()) for i in range(20)]
    members.insert(3, ("bad.txt", b"\x00\x01binary\x00"))
    _tar(src, members)
    _corpus(tmp_path / "docs")

    # kill -9 of the flow process with units on the cluster: the workers go with it (the shared
    # Prefect server is not its child and stays, as after a killed command)
    proc = _driver(tmp_path, "pause", src, champion.uri)
    try:
        _wait_for(lambda: (tmp_path / "paused").exists(), proc, tmp_path, "pause")
        _wait_for(
            lambda: _all_units_named(tmp_path / "pred/.score-state.json"), proc, tmp_path, "pause"
        )
        workers = [k for k in _children(proc.pid) if "multiprocessing" in _cmdline(k)]
        assert len(workers) >= 2, _log(tmp_path, "pause")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    # the state the rerun finds: read after the kill, since units may commit (and the state
    # advance) between the wait above and the kill landing
    state = _all_units_named(tmp_path / "pred/.score-state.json")
    assert state is not None
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers):
        assert time.monotonic() < deadline, "Dask workers outlived the killed flow process"
        time.sleep(0.2)

    # the rerun on Dask reuses those units; a worker killed mid-unit costs nothing
    proc = _driver(tmp_path, "finish", src, champion.uri)
    try:
        assert proc.wait(timeout=400) == 0, _log(tmp_path, "finish")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    report = json.loads((tmp_path / "report.json").read_text())
    manifest, reference = report["manifest"], report["reference"]
    assert not _alive(int((tmp_path / "killed").read_text()))  # a worker died mid-unit
    this_run, total_units = manifest["this_run"], len(reference["parts"])
    assert total_units == 10  # 20 documents in chunks of 2
    assert this_run["resumed_after_items"] == state["consumed"]
    assert this_run["units_reused"] == len(state["ahead"])
    named = len(state["parts"]) + len(state["ahead"])
    assert this_run["units_scored"] == total_units - named
    assert manifest["counts"] == reference["counts"] == {"inputs": 21, "scored": 20, "errors": 1}
    assert manifest["parts"] == reference["parts"]
    # every unit is one Prefect task run, Completed (the killed one included): the chunks this
    # run scored, then the ingest and tokenize units
    states = report["states"]
    assert set(states) == {"COMPLETED"} and len(states) > total_units - named

    def rows(where: str) -> list[dict]:
        table = pq.read_table(tmp_path / where / "predictions.parquet")
        return table.drop(["scored_at"]).to_pylist()

    assert rows("pred") == rows("reference")  # every document once, the same predictions
    errors = (tmp_path / "pred/errors.jsonl").read_text()
    assert errors == (tmp_path / "reference/errors.jsonl").read_text()
    _same_data_outputs(tmp_path, report["data"])


def _same_data_outputs(tmp_path: Path, data: dict) -> None:
    """Ingest and tokenize on Dask wrote what the local runner wrote, byte for byte (manifests
    aside: they carry timings)."""
    local, dask = data["local"], data["dask"]
    assert dask["ingest"]["counts"] == local["ingest"]["counts"]
    assert local["ingest"]["counts"]["quarantined"] == 1
    assert local["ingest"]["counts"]["duplicates"] == 2
    assert dask["ingest"]["timings"]["units_ran_on"].startswith("dask")
    for name in ("quarantine.jsonl", "duplicates.jsonl"):
        assert (tmp_path / "corpus-dask" / name).read_text() == (
            tmp_path / "corpus-local" / name
        ).read_text()
    assert dask["ingest"]["shards"] == local["ingest"]["shards"]  # names, rows and sha256
    assert len(local["ingest"]["shards"]) >= 4
    assert dask["tokenize"]["files"] == local["tokenize"]["files"]  # docs + packed sha256
    assert dask["tokenize"]["counts"] == local["tokenize"]["counts"]
    assert len(local["tokenize"]["files"]["docs"]) >= 4


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_runner_comes_from_params_set_and_deployment_parameters(tmp_path):
    params = load_params(None, ["runner.kind=dask", "runner.n_workers=3"])
    assert params.runner == RunnerParams(kind="dask", n_workers=3)
    with pytest.raises(ConfigError, match="runner: Value error, address is a Dask scheduler"):
        load_params(None, ["runner.address=tcp://10.0.0.5:8786"])
    base = Params()
    assert with_runner(base, None) is base
    assert with_runner(base, "dask").runner == RunnerParams(kind="dask")
    joined = with_runner(base, "tcp://10.0.0.5:8786").runner
    assert joined == RunnerParams(kind="dask", address="tcp://10.0.0.5:8786")
    assert with_runner(base, {"kind": "dask", "n_workers": 4}).runner.n_workers == 4
    with pytest.raises(ConfigError, match="n_workers"):
        with_runner(base, {"kind": "dask", "n_workers": 0})
    with pytest.raises(ConfigError, match="kind"):
        with_runner(base, "spark")


def test_data_stage_deployments_take_a_runner_parameter():
    from prefect.utilities.callables import parameter_schema

    from longdoc.flows import stages

    for flow in (stages.score_flow, stages.batch_score_flow):
        assert "runner" in parameter_schema(flow.fn).properties


def _malloc_trim_in_worker() -> str | None:
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    with cluster, Client(cluster) as client:
        [value] = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()
    return value


def test_our_clusters_start_workers_without_the_nannys_malloc_trim_threshold():
    """Dask's nanny would start workers with MALLOC_TRIM_THRESHOLD_=65536 (glibc then maps and
    zeroes every large tensor anew); the clusters `unit_runner` starts unset it. The nanny also
    leaves its variables in this process's environment, which `unit_runner` puts back."""
    import dask
    import distributed  # noqa: F401  (its defaults, before the setting overrides one)

    from longdoc.flows.runner import _NANNY_ENV, _environ_restored

    before = dict(os.environ)
    with _environ_restored():
        with dask.config.set(_NANNY_ENV):
            assert _malloc_trim_in_worker() is None
        assert _malloc_trim_in_worker() == "65536"  # Dask's default, which the setting undoes
        assert os.environ.get("OMP_NUM_THREADS") == "1"  # the nanny's, left in this process
    assert dict(os.environ) == before
