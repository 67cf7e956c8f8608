"""The README's deployment walk-through, for real, on 127.0.0.1: a Prefect server with its own
PREFECT_HOME, the `longdoc` process pool, `prefect deploy`, a worker, and
`prefect deployment run 'batch-score/default' --param input=... --watch` on a tiny archive with
a tiny classifier registered in the test's own MLflow store, and again with a tiny summarizer
(an LED) as the model; then the archive-landed trigger
(switched on in the test's copy) runs it again from a `prefect event emit`. Every process the test
starts is stopped by its PID (its process group: the server and the worker start children), also
on failure."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest
import yaml

from longdoc.components.core import tracking
from longdoc.components.core.config import TrackingParams
from longdoc.components.inference.serving import log_longdoc_model
from tests.components.test_score import TEXTS, register
from tests.components.test_score_summarization import tiny_led
from tests.e2e.conftest import BIN, cli_env, copy_repo

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Processes started in their own session, so one killpg(pid) stops each with its children."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], cwd: Path, env: dict) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started.append((name, proc))
        return proc

    def tail(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop_all(self) -> None:
        for _name, proc in reversed(self.started):
            stop_group(proc)
            if proc.stdout:
                proc.stdout.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group `proc` leads (its PID), SIGKILL whatever is left after
    `grace` seconds, and return only once every process of the group is gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(proc.pid):
                break
            time.sleep(0.1)
        if not _group_alive(proc.pid):
            break
    proc.wait(timeout=10)
    assert not _group_alive(proc.pid), f"process group {proc.pid} survived SIGKILL"


def wait_healthy(url: str, procs: Processes, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"prefect server exited {server.returncode}\n{procs.tail('server')}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {timeout} s\n{procs.tail('server')}")


def prefect(args: list[str], cwd: Path, env: dict, timeout: int = 300) -> str:
    res = subprocess.run(
        [str(BIN / "prefect"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if res.returncode != 0:
        pytest.fail(f"prefect {' '.join(args)} exited {res.returncode}\n{res.stdout[-3000:]}")
    return res.stdout + res.stderr


def test_batch_score_deployment_end_to_end(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    copy_repo(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["score"]["chunk_docs"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    # the archive-landed trigger, as the README says to switch it on
    deploy_yaml = (repo / "prefect.yaml").read_text()
    assert deploy_yaml.count("        enabled: false") == 1
    (repo / "prefect.yaml").write_text(deploy_yaml.replace("enabled: false", "enabled: true"))
    store = TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="e2e")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    tracking.setup(store)
    version = register(tmp_path, "longdoc-imdb")  # the deployment's default model_uri

    archive = tmp_path / "inbox.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in [
            ("a.txt", TEXTS[0].encode()),
            ("b.txt", TEXTS[1].encode()),
            ("empty.txt", b"  "),
            ("c.txt", TEXTS[2].encode()),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out, summaries = tmp_path / "predictions", tmp_path / "summaries"
    with mlflow.start_run():
        led = log_longdoc_model(tiny_led(tmp_path / "led"), "longdoc-summarization")
    summarizer = str(led.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(
        "longdoc-summarization", "champion", summarizer
    )

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = cli_env(tmp_path)
    env.update(
        PREFECT_API_URL=api,
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_UI_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        MLFLOW_TRACKING_URI=store.uri,
        # prefect.yaml's pull step is `set_working_directory: {{ $PWD }}`: the copy, not the
        # directory pytest was started from (a child's cwd does not update PWD by itself).
        PWD=str(repo),
    )
    (tmp_path / "logs").mkdir()
    procs = Processes(tmp_path / "logs")
    try:
        server = procs.start(
            "server",
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            repo,
            env,
        )
        wait_healthy(api, procs, server, timeout=180)
        prefect(["work-pool", "create", "longdoc", "--type", "process"], repo, env)
        prefect(["--no-prompt", "deploy", "--name", "default"], repo, env)
        listed = prefect(["deployment", "ls"], repo, env)
        assert "batch-score/default" in listed
        worker = procs.start(
            "worker",
            [str(BIN / "prefect"), "worker", "start", "--pool", "longdoc", "--limit", "1"],
            repo,
            env,
        )
        for model_uri, where in (
            ("models:/longdoc-imdb@champion", out),
            ("models:/longdoc-summarization@champion", summaries),
        ):
            res = subprocess.run(
                [
                    str(BIN / "prefect"),
                    "deployment",
                    "run",
                    "batch-score/default",
                    "--param",
                    f"input={archive}",
                    "--param",
                    f"model_uri={model_uri}",
                    "--param",
                    f"output={where}",
                    "--watch",
                    "--watch-timeout",
                    "400",
                ],
                cwd=repo,
                env=env,
                capture_output=True,
                text=True,
                timeout=450,
            )
            detail = f"{res.stdout[-3000:]}\n--- worker log ---\n{procs.tail('worker')}"
            assert res.returncode == 0, detail
            assert "Completed" in res.stdout, detail
            assert worker.poll() is None, detail

        # An archive lands: the event runs batch-score on its path, into data/predictions/<id>
        # of the deployed copy (the trigger's parameters are templated from the event).
        landed = tmp_path / "landed.tar.gz"
        landed.write_bytes(archive.read_bytes())
        payload = json.dumps({"path": str(landed)})
        emit = ["event", "emit", "longdoc.archive.landed", "--resource-id", "longdoc.inbox"]
        prefect([*emit, "--payload", payload], repo, env)
        deadline = time.monotonic() + 300
        while not (triggered := list((repo / "data/predictions").glob("*/manifest.json"))):
            assert time.monotonic() < deadline, f"no triggered run\n{procs.tail('worker')}"
            assert worker.poll() is None, procs.tail("worker")
            time.sleep(1)
    finally:
        procs.stop_all()
    (trig,) = triggered
    trig_manifest = json.loads(trig.read_text())
    assert trig_manifest["inputs"][0]["path"] == str(landed)
    assert trig_manifest["counts"] == {"inputs": 4, "scored": 3, "errors": 1}

    rows = pq.read_table(out / "predictions.parquet").to_pylist()
    assert sorted(r["member"] for r in rows) == ["a.txt", "b.txt", "c.txt"]
    assert {r["model_name"] for r in rows} == {"longdoc-imdb"}
    assert {r["model_version"] for r in rows} == {version}
    assert all(r["label"] in {"neg", "pos"} for r in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"inputs": 4, "scored": 3, "errors": 1}
    errors = (out / "errors.jsonl").read_text().splitlines()
    assert [json.loads(e)["member"] for e in errors] == ["empty.txt"]
    summarized = pq.read_table(summaries / "predictions.parquet").to_pylist()
    assert sorted(r["member"] for r in summarized) == ["a.txt", "b.txt", "c.txt"]
    assert {(r["model_name"], r["model_version"]) for r in summarized} == {
        ("longdoc-summarization", summarizer)
    }
    assert all(isinstance(r["summary"], str) and "label" not in r for r in summarized)
    assert json.loads((summaries / "manifest.json").read_text())["counts"] == manifest["counts"]
    # the flow ran in the deployed copy: the rest of the score section came from its params.yaml
    assert manifest["params"]["chunk_docs"] == 2 and len(manifest["parts"]) == 2
