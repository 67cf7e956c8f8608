"""The registered zero-shot classifier served by `mlflow models serve` exactly like a fine-tuned
one: same request, same answer columns, the same 400 for a bad row; stopped by its PID."""

from __future__ import annotations

import json
import os
import subprocess
import time

import mlflow
import pandas as pd
import pytest

from longdoc.components.inference.zeroshot import register_zero_shot
from tests.components.test_score import own_store
from tests.components.test_zeroshot import TEXTS, spec_for
from tests.components.tiny import tiny_checkpoint
from tests.e2e.conftest import BIN
from tests.e2e.test_deployment import free_port, stop_group
from tests.e2e.test_serve import _get, _post, _post_status, _split

pytestmark = pytest.mark.slow


def test_mlflow_models_serve_answers_with_the_zero_shot_model(tmp_path, monkeypatch):
    store = own_store(tmp_path, monkeypatch)
    ckpt = tmp_path / "mlm"
    tiny_checkpoint(ckpt, TEXTS, vocab_size=330, hidden_size=32, max_positions=66)
    uri = register_zero_shot("served", spec_for(ckpt), store)
    expected = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": TEXTS}))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=store.uri, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (closed in finally)
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
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
        preds = _post(f"{base}/invocations", _split([[t] for t in TEXTS]))["predictions"]
        assert [p["label"] for p in preds] == list(expected["label"])
        for p, ref in zip(preds, expected["probabilities"], strict=True):
            assert max(abs(a - b) for a, b in zip(p["probabilities"], ref, strict=True)) < 1e-5
        assert all(p["windows"] == 1 and p["truncated"] is False for p in preds)
        status, text = _post_status(f"{base}/invocations", _split([[TEXTS[0]], [None]]))
        assert status == 400 and "row 1: 'text' is null" in json.loads(text)["message"]
    finally:
        stop_group(server)
        log.close()
