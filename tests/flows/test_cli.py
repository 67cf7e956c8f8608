"""The CLI's contract: every option documented, and user errors as one line with a non-zero exit
(no traceback). These run the real console script in a subprocess."""

import os
import subprocess
import sys
import time
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
    names = {c.name for c in COMMANDS}
    assert names == {
        "sample",
        "ingest",
        "tokenize",
        "build-kernels",
        "pretrain",
        "probe",
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


def _errors(res: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in res.stdout + res.stderr
    return [line for line in res.stderr.splitlines() if line.startswith("longdoc: error:")]


def test_missing_input_is_one_line_before_prefect_starts(tmp_path):
    res = run_cli("ingest", "--input", str(tmp_path / "missing"), cwd=tmp_path, home=tmp_path)
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        f"longdoc: error: not found: {tmp_path / 'missing'} (ingest.sources)"
    ]
    assert not (tmp_path / "longdoc-server.json").exists()  # no Prefect server was needed


@pytest.mark.parametrize("command", ["ingest", "score", "sample", "tokenize"])
def test_output_that_is_a_file_is_one_line(tmp_path, command):
    (tmp_path / "afile").write_text("mine\n")
    src = tmp_path / "in.txt"
    src.write_text("a document\n")
    extra = {"ingest": ["--input", str(src)], "score": ["--input", str(src)]}.get(command, [])
    if command == "tokenize":
        extra = ["--corpus", str(tmp_path)]
    res = run_cli(command, *extra, "--out", "afile", cwd=tmp_path, home=tmp_path)
    assert res.returncode == 1
    assert _errors(res) == [f"longdoc: error: {command}.out: afile exists and is not a directory"]
    assert len(res.stderr.splitlines()) == 1
    assert (tmp_path / "afile").read_text() == "mine\n"


def test_unwritable_output_is_refused_before_anything_runs(tmp_path, monkeypatch):
    from longdoc.components.core.config import load_params
    from longdoc.components.core.io import InputError
    from longdoc.flows import cli

    params = load_params(None, [f"sample.out={tmp_path / 'ro' / 'sample'}"])
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)  # as a read-only mount
    with pytest.raises(InputError, match=r"sample.out: cannot write to .*ro.*read-only"):
        (tmp_path / "ro").mkdir()
        cli.check_paths(cli.BY_NAME["sample"], params)


def test_params_yaml_syntax_error_keeps_line_and_column(tmp_path):
    (tmp_path / "params.yaml").write_text("sample:\n  seed: [1, 2\ningest:\n  out: x\n")
    res = run_cli("sample", cwd=tmp_path, home=tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith("longdoc: config error: params.yaml: not valid YAML: line 3,")


@pytest.mark.slow  # two commands, the first starts the Prefect server: ~40 s
def test_empty_corpus_is_one_line_saying_what_was_found(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("   \n")
    (empty / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    res = run_cli("ingest", "--input", str(empty), cwd=tmp_path, home=tmp_path)
    assert res.returncode == 3  # ran, produced nothing
    errors = _errors(res)
    assert len(errors) == 1 and "no documents ingested" in errors[0], res.stderr
    assert "2 inputs" in errors[0]
    assert "1 empty or whitespace-only document" in errors[0]
    assert "1 unsupported file type" in errors[0]

    nothing = tmp_path / "nothing"
    nothing.mkdir()
    res = run_cli("ingest", "--input", str(nothing), "--out", "c2", cwd=tmp_path, home=tmp_path)
    assert res.returncode == 3
    assert _errors(res) == [f"longdoc: error: no documents ingested from {nothing}: no files found"]


@pytest.mark.slow  # the Prefect server's start, then 3 commands: ~35 s
def test_a_command_prints_one_summary_line_and_reuses_the_local_server(tmp_path):
    """No 70 lines of manifest JSON; the second command finds the first one's Prefect server
    instead of starting its own; `longdoc server stop` stops it."""
    import json

    args = ("sample", "--out", "s", "--set", "sample.corpus_docs=4", "--set", "sample.imdb_train=4")
    first = run_cli(*args, cwd=tmp_path, home=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "sample: written to s"
    state = json.loads((tmp_path / "longdoc-server.json").read_text())
    os.kill(state["pid"], 0)  # alive after the command ended

    second = run_cli(*args, "--set", "sample.seed=1", cwd=tmp_path, home=tmp_path)
    assert second.returncode == 0, second.stderr
    assert json.loads((tmp_path / "longdoc-server.json").read_text())["pid"] == state["pid"]
    assert "Starting temporary server" not in second.stdout + second.stderr

    status = run_cli("server", "status", cwd=tmp_path, home=tmp_path)
    assert state["url"] in status.stdout
    stop = run_cli("server", "stop", cwd=tmp_path, home=tmp_path)
    assert f"pid {state['pid']}" in stop.stdout
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(state["pid"], 0)
            time.sleep(0.05)
    assert not (tmp_path / "longdoc-server.json").exists()


def test_version_help_defaults_and_hidden_aliases():
    from longdoc import __version__

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--version"])
    assert __version__ != "0+unknown"
    ingest = parser._subparsers._group_actions[0].choices["ingest"].format_help()
    assert "[ingest.out; default: data/corpus]" in ingest
    assert "--set ingest." in ingest
    assert "--source" not in ingest  # the old name still works, unadvertised
    args = parser.parse_args(["ingest", "--source", "a", "--input", "b"])
    assert vars(args)["opt:ingest.sources"] == ["a", "b"]
    score = parser._subparsers._group_actions[0].choices["score"].format_help()
    assert "--model-uri" not in score and "--model MODEL" in score
    for cmd in COMMANDS:
        assert f"--set {cmd.example}" in " ".join(
            parser._subparsers._group_actions[0].choices[cmd.name].format_help().split()
        )


@pytest.mark.slow  # a command that starts the Prefect server and loads a model: ~45 s
def test_score_that_scores_nothing_exits_3(tmp_path, monkeypatch):
    """Every input an error: the summary line, then one error line, and exit code 3."""
    from tests.components.test_score import own_store, register

    own_store(tmp_path, monkeypatch)
    register(tmp_path, "longdoc-test")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.txt").write_text("   \n")
    (inbox / "b.txt").write_text("\n")
    res = run_cli(
        "score", "--input", str(inbox), "--model", "models:/longdoc-test@champion",
        "--out", "preds", cwd=tmp_path, home=tmp_path,
    )  # fmt: skip
    assert res.returncode == 3, res.stderr
    assert res.stdout.strip().startswith("score: 0 of 2 documents scored")
    assert _errors(res) == [
        f"longdoc: error: nothing scored (reasons in {Path('preds') / 'errors.jsonl'})"
    ]


def _processes_with_home(home: Path) -> set[int]:
    """PIDs of live processes whose environment has PREFECT_HOME=home (ours, in this test)."""
    needle = f"PREFECT_HOME={home}".encode()
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    pids.add(int(proc.name))
            except OSError:
                continue
    return pids


def test_kill_9_of_a_command_leaves_nothing_running_but_the_shared_server(tmp_path):
    import json
    import signal

    env = {**os.environ, "PREFECT_HOME": str(tmp_path), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "longdoc", "sample", "--out", "s"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proc.stdout:  # killed while the stage works
        if "Beginning flow run" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    server = json.loads((tmp_path / "longdoc-server.json").read_text())["pid"]
    time.sleep(1)
    assert _processes_with_home(tmp_path) - {os.getpid()} == {server}
