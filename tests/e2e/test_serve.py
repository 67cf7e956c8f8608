"""`mlflow models serve -m models:/<name>@champion --env-manager local` on 127.0.0.1 answers
/invocations with the model's predictions (with the tokens read and whether the text was
truncated), and malformed requests with a 400 whose message names each bad row, without a stack
trace; the server is stopped by its PID (its process group: MLflow starts a uvicorn child)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from longdoc.components.core.config import TrackingParams
from longdoc.components.inference.serving import log_longdoc_model
from tests.components.test_score import TEXTS, own_store, register
from tests.components.test_score_summarization import tiny_led
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


def _post_status(url: str, body: dict) -> tuple[int, str]:
    """(HTTP status, body text), for answers that are not 200."""
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _split(rows: list, **params) -> dict:
    body: dict = {"dataframe_split": {"columns": ["text"], "data": rows}}
    if params:
        body["params"] = params
    return body


# (request, what the 400's message must contain)
BAD_REQUESTS = [
    (_split([[TEXTS[0]], [None]]), ["row 1: 'text' is null"]),
    (_split([[12345]]), ["row 0: 'text' must be a string, not int (12345)"]),
    (_split([[TEXTS[0]], [""], ["  \n "]]), ["row 1: 'text' is empty", "row 2: 'text' is empty"]),
    (_split([]), ["the batch is empty"]),
    (_split([[TEXTS[0]]], max_len=-5), ["param max_len=-5: must be at least 8"]),
]


@contextlib.contextmanager
def served(uri: str, store: TrackingParams, tmp_path: Path):
    """`mlflow models serve -m uri` on a free local port, until it answers /ping; yields its base
    URL and stops its process group afterwards (also on failure)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=store.uri, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    log_path = tmp_path / "serve.log"
    log = open(log_path, "wb")  # noqa: SIM115 (closed in finally)
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            try:
                if _get(f"{base}/ping") == 200:
                    break
            except OSError:
                time.sleep(0.5)
        yield base
    finally:
        stop_group(server)
        log.close()


def test_mlflow_models_serve_answers_invocations(tmp_path, monkeypatch):
    store = own_store(tmp_path, monkeypatch)
    register(tmp_path, "longdoc-imdb")
    expected = mlflow.pyfunc.load_model("models:/longdoc-imdb@champion").predict(
        pd.DataFrame({"text": TEXTS})
    )
    with served("models:/longdoc-imdb@champion", store, tmp_path) as base:
        body = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}
        preds = _post(f"{base}/invocations", body)["predictions"]
        assert [p["label"] for p in preds] == list(expected["label"])
        for p, ref in zip(preds, expected["probabilities"], strict=True):
            assert max(abs(a - b) for a, b in zip(p["probabilities"], ref, strict=True)) < 1e-5
        assert all(p["tokens"] > 0 and p["truncated"] is False for p in preds)
        # params from the signature go through too
        body["params"] = {"max_len": 16}
        assert len(_post(f"{base}/invocations", body)["predictions"]) == len(TEXTS)
        (long,) = _post(f"{base}/invocations", _split([[" ".join(TEXTS * 20)]], max_len=16))[
            "predictions"
        ]
        assert long["truncated"] is True and long["tokens"] == 16 and long["label"]
        # malformed requests: a 400 naming each bad row, never a stack trace
        for request, expected in BAD_REQUESTS:
            status, text = _post_status(f"{base}/invocations", request)
            assert status == 400, (request, status, text)
            assert "Traceback" not in text and "stack_trace" not in text, text
            error = json.loads(text)
            assert error["error_code"] == "INVALID_PARAMETER_VALUE", text
            for part in expected:
                assert part in error["message"], (part, error["message"])


def test_mlflow_models_serve_answers_with_the_summarizer(tmp_path, monkeypatch):
    """The registered LED summarizer: `text` in, `summary` out, as the in-process model."""
    store = own_store(tmp_path, monkeypatch)
    with mlflow.start_run():
        log_longdoc_model(tiny_led(tmp_path / "led"), "longdoc-summarization")
    uri = "models:/longdoc-summarization/1"
    expected = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": TEXTS}))
    with served(uri, store, tmp_path) as base:
        preds = _post(f"{base}/invocations", _split([[t] for t in TEXTS]))["predictions"]
        assert [p["summary"] for p in preds] == list(expected["summary"])
        assert all(p["summary"].strip() for p in preds)
        status, text = _post_status(f"{base}/invocations", _split([[TEXTS[0]], [None]]))
        assert status == 400 and "row 1: 'text' is null" in json.loads(text)["message"]
