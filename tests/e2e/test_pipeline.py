"""The whole pipeline through Prefect on a tiny configuration in a copy of the repository: every
stage's outputs, a rerun that skips it all, and DVC sharing its freshness truth
(flows/freshness.py, from which dvc.yaml is generated): after the pipeline, `dvc status` is clean
and `dvc repro` has nothing to do; per stage, a changed parameter or source file makes the same
stages stale for both; and the outputs travel through a DVC remote (`dvc push`, then `dvc pull`
in a fresh clone restores them with nothing left to recompute). One test, so that the tiny
pipeline (about two minutes on 2 cores) runs once for all of it."""

import json
import shutil
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from longdoc.components.core.config import load_params
from longdoc.components.tasks import imdb
from longdoc.flows import freshness
from tests.e2e.conftest import BIN, TINY, copy_repo, run

pytestmark = pytest.mark.slow
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def dvc_stale(repo) -> set[str]:
    """The stages `dvc status` calls stale, through DVC's API (what the command prints with
    --json): in this process, 0.7 s a call instead of a 2.7 s command start each time."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        return {name.split(":")[-1] for name in dvc.status()}


def our_stale(repo, monkeypatch) -> set[str]:
    monkeypatch.chdir(repo)
    specs = freshness.pipeline_specs(load_params(repo / "params.yaml"))
    return {s.name for s in specs if not freshness.is_fresh(s)}


def check_outputs(repo, stdout: str) -> None:
    """What the pipeline wrote, and what it said."""
    assert "longdoc pipeline finished" in stdout
    assert "dev metric: long model" in stdout
    for task in ("wikihop", "triviaqa", "hotpotqa", "imdb", "hyperpartisan", "summarization"):
        assert f"  {task} " in stdout
    corpus = json.loads((repo / "data/corpus/manifest.json").read_text())["counts"]
    assert corpus["written"] > 0
    assert corpus["inputs"] == (
        corpus["written"] + corpus["duplicates"] + corpus["near_duplicates"] + corpus["quarantined"]
    )
    assert (repo / "data/shards/tokenizer/tokenizer.json").exists()
    assert (repo / "data/kernels").is_dir()
    assert (repo / "data/checkpoints/pretrain/config.json").exists()
    assert list((repo / "data/checkpoints/pretrain").glob("*.safetensors"))
    assert (repo / "data/checkpoints/imdb/config.json").exists()
    metrics = json.loads((repo / "data/metrics/finetune_imdb.json").read_text())
    # the reported accuracy is the fraction of the written dev predictions that match the gold
    # labels (recomputed here from the files, not trusted from the metrics)
    dev = imdb.load(repo / "data/sample/aclImdb", "dev").examples
    gold = {e.id: imdb.LABELS[e.label] for e in dev}
    for name in ("long", "baseline"):
        written = imdb.load_predictions(repo / metrics[name]["predictions"])
        assert set(written) == set(gold)
        correct = sum(written[k] == label for k, label in gold.items())
        assert metrics[name]["accuracy"] == pytest.approx(correct / len(gold))
    for task in ("wikihop", "triviaqa", "hotpotqa", "hyperpartisan"):
        m = json.loads((repo / f"data/metrics/finetune_{task}.json").read_text())
        assert m["primary_metric"] in m["long"] and m["primary_metric"] in m["baseline"]
        assert json.loads((repo / m["long"]["predictions"]).read_text())
        assert (repo / f"data/checkpoints/{task}/config.json").exists()

    preds = pq.read_table(repo / "data/predictions/predictions.parquet").to_pylist()
    score = json.loads((repo / "data/predictions/manifest.json").read_text())
    assert len(preds) == score["counts"]["scored"] > 0
    assert score["counts"]["inputs"] == score["counts"]["scored"] + score["counts"]["errors"]
    assert {p["model_version"] for p in preds} == {"1"}
    for p in preds:
        assert p["label"] in {"pos", "neg"}
        assert abs(sum(p["probabilities"]) - 1) < 1e-4


def test_pipeline_end_to_end_then_skips_and_agrees_with_dvc_through_a_remote(tmp_path, monkeypatch):
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
    params_file = str(repo / "params.yaml")  # named explicitly: the option's path, checked too
    first = run([sys.executable, "-m", "longdoc", "pipeline", "--params", params_file], cwd=repo)
    check_outputs(repo, first.stdout)
    assert "side by side, 2 at a time: " in first.stdout + first.stderr
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
    # ... and the pipeline run again skips every stage
    again = run([sys.executable, "-m", "longdoc", "pipeline"], cwd=repo)
    tasks = [f"finetune_{t}" for t in params["finetune"]["tasks"]]
    for stage in ("sample", "ingest", "tokenize", "build_kernels", "pretrain", *tasks, "score"):
        assert f"{stage} skipped" in again.stdout, again.stdout

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
