"""MLflow plumbing: where runs go, and the model registry conventions (`longdoc-<task>`,
alias `champion`).

Why a SQLite backend by default: the registry needs a database store, and a single file at the
repo root works on a laptop and in CI with no server. Artifacts go beside it in `mlartifacts/`.

MLflow is imported where it is used, not with this module: it takes 5-6 s to import on a slow
2-core machine, and every torchrun rank imports the training modules, which import this one,
though only the main rank tracks (importing `training.pretrain` is 1.5x faster without it on a
2-core EPYC: benchmarks/imports.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from longdoc.components.core import config
from longdoc.components.core.config import TrackingParams

CHAMPION = "champion"


def tracking_uri(params: TrackingParams) -> str:
    return params.resolved_uri()


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside a SQLite database file; other stores keep their own default."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


def set_store(uri: str) -> None:
    """``mlflow.set_tracking_uri``, which also exports MLFLOW_TRACKING_URI (for child
    processes), recording the export as this process's own unless the variable was the user's,
    so that a later stage's `tracking.uri` still counts (``TrackingParams.resolved_uri``)."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    config.note_tracking_export(before, os.environ.get("MLFLOW_TRACKING_URI"))


def setup(params: TrackingParams) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(params)
    set_store(uri)
    with _store_lock(uri):
        client = MlflowClient()
        exp = client.get_experiment_by_name(params.experiment)
        if exp is None:
            exp_id = client.create_experiment(
                params.experiment, artifact_location=_artifact_root(uri)
            )
        else:
            exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@contextlib.contextmanager
def _store_lock(uri: str):
    """Processes setting up one SQLite store take turns (an exclusive ``flock`` on the database's
    directory, released when the holder exits, even by kill -9). Started together on a new store
    (side-by-side stages, two commands), each would run MLflow's table migrations over the
    others': "table runs already exists", "duplicate column name", alembic's "expected to match
    one row", and two creating the experiment."""
    db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    directory = None if db is None else db.resolve().parent
    if directory is None or not directory.is_dir():
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def start_run(**kwargs):
    """``mlflow.start_run`` (for modules that import MLflow only on the rank that tracks)."""
    import mlflow

    return mlflow.start_run(**kwargs)


def registered_name(task: str) -> str:
    return f"longdoc-{task}"


def champion_metric(name: str, metric: str) -> float | None:
    """The `metric` of the run behind `name@champion`, or None when there is no champion."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    if not version.run_id:
        return None
    return client.get_run(version.run_id).data.metrics.get(metric)


def resolve_model_version(model_uri: str) -> str:
    """`models:/name@alias` or `models:/name/N` → the concrete version number, as a string."""
    if not model_uri.startswith("models:/"):
        return model_uri
    from mlflow.tracking import MlflowClient

    ref = model_uri.removeprefix("models:/")
    client = MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = ref.partition("/")
    return version or str(
        max(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    )
