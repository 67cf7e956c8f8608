"""Where runs go when several stages share one process: MLflow's set_tracking_uri exports
MLFLOW_TRACKING_URI, and that export must not override a later stage's own `tracking.uri`."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from longdoc.components.core import config, tracking
from longdoc.components.core.config import TrackingParams


@pytest.fixture
def stores(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(config, "_exported_tracking_uri", None)
    uri = mlflow.get_tracking_uri()
    yield [TrackingParams(uri=f"sqlite:///{tmp_path / f'{n}.db'}") for n in "abc"]
    mlflow.set_tracking_uri(uri)


def _log_one(params: TrackingParams) -> None:
    tracking.setup(params)
    with mlflow.start_run():
        mlflow.log_param("store", params.uri)


def _runs(uri: str) -> list[str]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("longdoc")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return sorted(r.data.params["store"] for r in runs)


def test_each_stage_logs_to_its_own_store(stores):
    a, b, _ = stores
    _log_one(a)
    assert os.environ["MLFLOW_TRACKING_URI"] == a.uri  # still exported for child processes
    assert b.resolved_uri() == b.uri  # ... but it is our export, not the user's choice
    _log_one(b)
    _log_one(a)
    assert _runs(a.uri) == [a.uri, a.uri]
    assert _runs(b.uri) == [b.uri]


def test_the_users_environment_variable_wins_over_every_stage(stores, monkeypatch):
    a, b, c = stores
    monkeypatch.setenv("MLFLOW_TRACKING_URI", c.uri)
    _log_one(a)
    _log_one(b)
    assert _runs(c.uri) == [a.uri, b.uri]
    assert not _runs(a.uri) and not _runs(b.uri)


def test_the_training_modules_leave_mlflow_to_the_rank_that_tracks():
    """Every torchrun rank imports the training modules; only the main rank tracks, so MLflow
    (5-6 s to import on 2 slow cores) must not come with them."""
    code = (
        "import sys\n"
        "import longdoc.components.training.finetune, longdoc.components.training.pretrain\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def _set_up_together(uri: str, barrier, results) -> None:
    """One of several processes that set up the same store at the same moment."""
    import mlflow  # noqa: F401  (imported before the barrier: the race is in the setup)

    barrier.wait()
    try:
        results.put(("ok", tracking.setup(TrackingParams(uri=uri))))
    except Exception as exc:  # reported to the test, which names it
        results.put(("failed", repr(exc)))


def test_processes_setting_up_one_new_store_at_once_take_turns(tmp_path, monkeypatch):
    """Side-by-side stages (or two commands) starting on a new SQLite store: without turns, each
    runs MLflow's table migrations over the others' ("table runs already exists", alembic's
    "expected to match one row"), three of three tries with three processes."""
    import multiprocessing

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [ctx.Process(target=_set_up_together, args=(uri, barrier, results)) for _ in range(3)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    assert [o for o, _ in outcomes] == ["ok"] * 3, outcomes
    assert len({exp_id for _, exp_id in outcomes}) == 1  # one experiment, made once
