"""`mlflow models serve -m models:/<name>@champion --env-manager local` on 127.0.0.1 answers
/invocations with the model's predictions; the server is stopped by its PID (its process group:
MLflow starts a uvicorn child)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request

import mlflow
import pandas as pd
import pytest

from tests.components.test_score import TEXTS, own_store, register
from tests.e2e.conftest import BIN
from tests.e2e.test_deployment import free_port, stop_group

pytestmark = pytest.mark.slow


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def test_mlflow_models_serve_answers_invocations(tmp_path, monkeypatch):
    store = own_store(tmp_path, monkeypatch)
    register(tmp_path, "longdoc-imdb")
    expected = mlflow.pyfunc.load_model("models:/longdoc-imdb@champion").predict(
        pd.DataFrame({"text": TEXTS})
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=store.uri, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (closed in finally)
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/longdoc-imdb@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if _get(f"{base}/ping") == 200:
                    break
            except OSError:
                time.sleep(0.5)
        body = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}
        preds = _post(f"{base}/invocations", body)["predictions"]
        assert [p["label"] for p in preds] == list(expected["label"])
        for p, ref in zip(preds, expected["probabilities"], strict=True):
            assert max(abs(a - b) for a, b in zip(p["probabilities"], ref, strict=True)) < 1e-5
        # params from the signature go through too
        body["params"] = {"max_len": 16}
        assert len(_post(f"{base}/invocations", body)["predictions"]) == len(TEXTS)
    finally:
        stop_group(server)
        log.close()
