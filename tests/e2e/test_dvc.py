"""`dvc repro` on a fresh copy of the repo runs the chain; a second `dvc repro` does nothing."""

import shutil

import pytest
import yaml

from tests.e2e.conftest import BIN, TINY, copy_repo, run

pytestmark = pytest.mark.slow


def test_dvc_repro_twice(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    for task in params["finetune"]["tasks"].values():
        task["epochs"] = 1  # wiring, not accuracy
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    git = shutil.which("git")
    run([git, "init", "-q"], cwd=repo)
    run([git, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], cwd=repo)
    run([git, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], cwd=repo)

    dvc = str(BIN / "dvc")
    first = run([dvc, "repro"], cwd=repo)
    for stage in (
        "sample",
        "ingest",
        "tokenize",
        "build_kernels",
        "pretrain",
        "finetune@wikihop",
        "finetune@triviaqa",
        "finetune@hotpotqa",
        "finetune@imdb",
        "finetune@hyperpartisan",
        "score",
    ):
        assert f"Running stage '{stage}'" in first.stdout, first.stdout
    assert (repo / "data/predictions/predictions.parquet").exists()

    second = run([dvc, "repro"], cwd=repo)
    assert "Running stage" not in second.stdout, second.stdout
    status = run([dvc, "status"], cwd=repo)
    assert "up to date" in status.stdout, status.stdout
