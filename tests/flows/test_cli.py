"""The CLI's contract: every option documented, and user errors as one line with a non-zero exit
(no traceback). These run the real console script in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from longdoc.flows.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    return subprocess.run(
        [sys.executable, "-m", "longdoc", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_subcommand_has_help():
    parser = build_parser()
    names = {c[0] for c in COMMANDS}
    assert names == {
        "sample",
        "ingest",
        "tokenize",
        "build-kernels",
        "pretrain",
        "convert",
        "finetune",
        "score",
        "pipeline",
    }
    for name in names:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([name, "--help"])
        assert exit_.value.code == 0


def test_bad_config_value_is_one_line(tmp_path):
    res = run_cli("pretrain", "--set", "pretrain.lr=-3", cwd=tmp_path, home=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "longdoc: config error: defaults + --set: pretrain.lr: Input should be greater than 0"
    )
    assert "Traceback" not in res.stdout + res.stderr


def test_missing_input_path_is_one_line(tmp_path):
    res = run_cli("ingest", "--source", str(tmp_path / "missing"), cwd=tmp_path, home=tmp_path)
    assert res.returncode == 1
    assert "Traceback" not in res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("longdoc: error:")]
    assert errors == [f"longdoc: error: source not found: {tmp_path / 'missing'}"]


def test_empty_corpus_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("   \n")
    res = run_cli("ingest", "--source", str(empty), cwd=tmp_path, home=tmp_path)
    assert res.returncode == 1
    assert "Traceback" not in res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("longdoc: error:")]
    assert len(errors) == 1 and "no documents ingested" in errors[0]


def test_score_runs_openmp_passive_unless_told_otherwise(monkeypatch):
    """`longdoc score` is inference on the TVM kernels: torch's OpenMP threads must not spin on
    their cores. Other commands keep libgomp's default, and an explicit setting always wins."""
    from longdoc.flows import cli

    # setenv first so that teardown restores whatever the process had (delenv alone of an
    # unset variable records nothing, and PASSIVE would leak into later tests' subprocesses)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.delenv("OMP_WAIT_POLICY")
    defaults = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
    for key, value in defaults.items():  # what _prepare_environment would set: undone after
        monkeypatch.setenv(key, os.environ.get(key, value))
    cli._prepare_environment("pretrain")
    assert "OMP_WAIT_POLICY" not in os.environ
    cli._prepare_environment("score")
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cli._prepare_environment("score")
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
