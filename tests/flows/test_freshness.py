"""One freshness truth: dvc.yaml is generated from the stage specs the pipeline skips by, and
the pipeline's fingerprint moves with exactly what DVC tracks (the slow e2e test checks the two
agree on a real run)."""

from pathlib import Path

from longdoc.components.core.config import load_params
from longdoc.flows import freshness

REPO = Path(__file__).resolve().parents[2]


def test_committed_dvc_yaml_is_the_generated_one():
    params = load_params(REPO / "params.yaml")
    assert (REPO / "dvc.yaml").read_text() == freshness.dvc_yaml(params, REPO / "params.yaml")


def test_every_stage_lists_its_code_and_the_score_stage_follows_the_model_it_uses():
    params = load_params(REPO / "params.yaml")
    specs = {s.name: s for s in freshness.pipeline_specs(params)}
    assert list(specs)[:5] == ["sample", "ingest", "tokenize", "build_kernels", "pretrain"]
    assert {n for n in specs if n.startswith("finetune_")} == {
        f"finetune_{t}" for t in params.finetune.tasks
    }
    for s in specs.values():
        assert s.code and all((REPO / c).exists() for c in s.code), s.name
    assert params.finetune.tasks["imdb"].out / "manifest.json" in specs["score"].inputs
    other = load_params(REPO / "params.yaml", ["score.model_uri=models:/longdoc-hyperpartisan/2"])
    score = freshness.spec("score", other)
    assert other.finetune.tasks["hyperpartisan"].out / "manifest.json" in score.inputs
    assert params.finetune.tasks["imdb"].out / "manifest.json" not in score.inputs
    tok = load_params(REPO / "params.yaml", ["tokenize.base_tokenizer=some/tokenizer"])
    assert Path("some/tokenizer") in freshness.spec("tokenize", tok).inputs
    assert "- some/tokenizer" in freshness.dvc_yaml(tok, REPO / "params.yaml")


def test_fingerprint_follows_params_inputs_and_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("sample:\n  out: s\n")
    params = load_params("params.yaml")
    s = freshness.spec("sample", params)
    Path("s").mkdir()
    Path("s/manifest.json").write_text("{}")
    assert not freshness.is_fresh(s)
    freshness.mark_done(s)
    assert freshness.is_fresh(s)
    assert not freshness.is_fresh(freshness.spec("sample", load_params(None, ["sample.seed=3"])))
    # an ingest input changed
    Path("docs").mkdir()
    Path("docs/a.txt").write_text("one")
    ingest = freshness.spec("ingest", load_params(None, ["ingest.sources=[docs]", "ingest.out=c"]))
    Path("c").mkdir()
    Path("c/manifest.json").write_text("{}")
    freshness.mark_done(ingest)
    assert freshness.is_fresh(ingest)
    Path("docs/a.txt").write_text("two")
    assert not freshness.is_fresh(ingest)
    # the generator's source changed: stale, as DVC's code dependency would say
    code = tmp_path / "repo"
    (code / "longdoc/components/synthetic").mkdir(parents=True)
    (code / "longdoc/components/synthetic/generator.py").write_text("# another generator\n")
    monkeypatch.setattr(freshness, "REPO", code)
    assert not freshness.is_fresh(s)


def test_waves_group_the_stages_that_may_run_side_by_side():
    """After pretrain, probe and every fine-tuning task read only earlier outputs; score reads
    the IMDB model, and build-kernels reads nothing tokenize writes."""
    params = load_params(REPO / "params.yaml")
    waves = [[s.name for s in w] for w in freshness.waves(freshness.pipeline_specs(params))]
    tasks = [f"finetune_{t}" for t in params.finetune.tasks]
    assert waves == [
        ["sample"],
        ["ingest"],
        ["tokenize", "build_kernels"],
        ["pretrain"],
        ["probe", *tasks],
        ["score"],
    ]
    # a task reading another task's output starts a new wave
    chained = load_params(
        REPO / "params.yaml", ["finetune.tasks.imdb.data=data/checkpoints/wikihop/x"]
    )
    names = [[s.name for s in w] for w in freshness.waves(freshness.pipeline_specs(chained))]
    assert names[4] == ["probe", "finetune_wikihop", "finetune_triviaqa", "finetune_hotpotqa"]
    assert names[5][0] == "finetune_imdb"


def test_input_bytes_counts_what_a_stage_reads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a").write_bytes(b"x" * 10)
    (tmp_path / "d" / "sub" / "b").write_bytes(b"x" * 5)
    (tmp_path / "f").write_bytes(b"x" * 3)
    s = freshness.StageSpec("x", "probe", "", Path("o"), {}, (Path("d"), Path("f"), Path("no")), ())
    assert freshness.input_bytes(s) == 18
