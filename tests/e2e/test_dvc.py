"""DVC and `longdoc pipeline` share one freshness truth (flows/freshness.py, from which dvc.yaml
is generated): after the pipeline, `dvc status` is clean and `dvc repro` has nothing to do; per
stage, a changed parameter or source file makes the same stages stale for both; and the outputs
travel through a DVC remote (`dvc push`, then `dvc pull` in a fresh clone restores them with
nothing left to recompute)."""

import json
import shutil
import sys

import pytest
import yaml

from longdoc.components.core.config import load_params
from longdoc.flows import freshness
from tests.e2e.conftest import BIN, TINY, copy_repo, run

pytestmark = pytest.mark.slow
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def dvc_stale(repo) -> set[str]:
    out = run([str(BIN / "dvc"), "status", "--json"], cwd=repo).stdout
    return {name.split(":")[-1] for name in json.loads(out or "{}")}


def our_stale(repo, monkeypatch) -> set[str]:
    monkeypatch.chdir(repo)
    specs = freshness.pipeline_specs(load_params(repo / "params.yaml"))
    return {s.name for s in specs if not freshness.is_fresh(s)}


def test_pipeline_and_dvc_agree_and_outputs_travel_through_a_remote(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    for task in params["finetune"]["tasks"].values():
        task["epochs"] = 1  # wiring, not accuracy
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The committed dvc.yaml is the generated one (tests/flows/test_freshness.py checks that);
    # the tiny params keep every path and key, so it still describes this copy.
    run([sys.executable, "-m", "longdoc", "dvc-yaml", "--check"], cwd=repo)
    run(["git", "init", "-q"], cwd=repo)
    run([*GIT, "add", "-A"], cwd=repo)
    run([*GIT, "commit", "-qm", "copy"], cwd=repo)

    # The pipeline records its outputs in dvc.lock: DVC then agrees nothing is left to do.
    first = run([sys.executable, "-m", "longdoc", "pipeline"], cwd=repo)
    assert "longdoc pipeline finished" in first.stdout
    assert (repo / "dvc.lock").exists()
    assert dvc_stale(repo) == set() == our_stale(repo, monkeypatch)
    repro = run([str(BIN / "dvc"), "repro"], cwd=repo)
    assert "Running stage" not in repro.stdout, repro.stdout

    # One parameter per stage: both call exactly that stage stale.
    changes = {
        "sample": ("sample", "score_docs", 5),
        "ingest": ("ingest", "min_chars", 2),
        "tokenize": ("tokenize", "min_frequency", 3),
        "build_kernels": ("kernels", "targets", ["llvm", "llvm"]),
        "pretrain": ("pretrain", "eval_batches", 2),
        "score": ("score", "batch_tokens", 9999),
    }
    original = (repo / "params.yaml").read_text()
    for stage, (section, key, value) in changes.items():
        changed = yaml.safe_load(original)
        changed[section][key] = value
        (repo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
        assert dvc_stale(repo) == {stage} == our_stale(repo, monkeypatch), stage
    # A shared fine-tuning key makes every task stale; a task's own entry only that task.
    changed = yaml.safe_load(original)
    changed["finetune"]["lr"] = 0.002
    (repo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    every_task = {f"finetune_{t}" for t in params["finetune"]["tasks"]}
    assert dvc_stale(repo) == every_task == our_stale(repo, monkeypatch)
    changed = yaml.safe_load(original)
    changed["finetune"]["tasks"]["imdb"]["epochs"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    assert dvc_stale(repo) == {"finetune_imdb"} == our_stale(repo, monkeypatch)
    (repo / "params.yaml").write_text(original)
    # A source file the stage runs (the pipeline hashes the installed package's copy).
    monkeypatch.setattr(freshness, "REPO", repo)
    (repo / "longdoc/components/data/tokenize.py").open("a").write("\n# changed\n")
    assert dvc_stale(repo) == {"tokenize"} == our_stale(repo, monkeypatch)
    run(["git", "checkout", "--", "longdoc/components/data/tokenize.py"], cwd=repo)
    assert dvc_stale(repo) == set()

    # Versioned for real: push to a remote, and a fresh clone pulls instead of recomputing.
    remote = tmp_path / "dvc-remote"
    run([str(BIN / "dvc"), "remote", "add", "-d", "store", str(remote)], cwd=repo)
    run([str(BIN / "dvc"), "push", "-q"], cwd=repo)
    run([*GIT, "add", "dvc.lock", ".dvc/config"], cwd=repo)
    run([*GIT, "commit", "-qm", "outputs"], cwd=repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], cwd=tmp_path)
    run([str(BIN / "dvc"), "pull", "-q"], cwd=clone)
    assert (clone / "data/predictions/manifest.json").exists()
    assert (clone / "data/checkpoints/imdb/config.json").exists()
    again = run([str(BIN / "dvc"), "repro"], cwd=clone)
    assert "Running stage" not in again.stdout, again.stdout
    assert dvc_stale(clone) == set()
    shutil.rmtree(clone)
