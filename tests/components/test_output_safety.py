"""`--out` never destroys data longdoc did not write (issue 13, section 1).

For every command: an output directory holding a foreign file stops it with one line naming the
directory, and the file survives; a foreign `<out>.old` / `<out>.partial` (and pretrain's
`<out>.ckpt`) survives; a directory longdoc wrote itself is replaced fine on a rerun.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pytest
import torch
import transformers
from pyarrow import ipc

from longdoc import kernels
from longdoc.components.core.config import (
    ConvertParams,
    FinetuneParams,
    IngestParams,
    KernelsParams,
    ModelParams,
    PretrainParams,
    SampleParams,
    ScoreParams,
    TokenizeParams,
    TrackingParams,
    params_dict,
)
from longdoc.components.core.io import (
    OUTPUT_MARKER,
    InputError,
    claim_output_dir,
    is_longdoc_dir,
    publish_dir,
    remove_own_dir,
    staging_dir,
)
from longdoc.components.data import tokenize as tok
from longdoc.components.data.ingest import ingest
from longdoc.components.data.tokenize import tokenize
from longdoc.components.inference.score import score
from longdoc.components.modeling import kernel_cache
from longdoc.components.modeling.convert import convert
from longdoc.components.synthetic.generator import write_sample
from longdoc.components.tasks import ClassificationExample, get_task
from longdoc.components.training.adapters import adapter_for
from longdoc.components.training.finetune import finetune, train_task
from longdoc.components.training.pretrain import pretrain
from tests.components.test_score import own_store, register

REFUSE = r"holds files longdoc did not write; refusing to replace it \(use --force or choose "
REFUSE_SIBLING = r"holds files longdoc did not write; refusing to delete it \(move it away or "
TEXTS = ["long documents need long models and patient readers, not the first lines"] * 20


def foreign(directory: Path, name: str = "precious.txt") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text("the user's own data")
    return directory / name


def survived(path: Path) -> bool:
    return path.read_text() == "the user's own data"


def refused(fn, directory: Path, pattern: str = REFUSE) -> None:
    """`fn()` stops with one line that names `directory`."""
    with pytest.raises(InputError, match=pattern) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(directory)), msg


def marker_stage(directory: Path) -> str:
    return json.loads((directory / OUTPUT_MARKER).read_text())["stage"]


# --- the shared rule (core.io, training.common) ---------------------------------------------


def test_claim_accepts_absent_empty_and_own_dirs_and_refuses_foreign(tmp_path):
    new = claim_output_dir(tmp_path / "new", "ingest")
    assert marker_stage(new) == "ingest"
    (tmp_path / "empty").mkdir()
    claim_output_dir(tmp_path / "empty", "ingest")
    claim_output_dir(new, "tokenize")  # longdoc's, whichever stage wrote it
    assert marker_stage(new) == "tokenize"

    mine = foreign(tmp_path / "mine")
    refused(lambda: claim_output_dir(tmp_path / "mine", "ingest"), tmp_path / "mine")
    assert survived(mine) and not (tmp_path / "mine" / OUTPUT_MARKER).exists()
    claim_output_dir(tmp_path / "mine", "ingest", force=True)  # the user said so
    assert survived(mine) and marker_stage(tmp_path / "mine") == "ingest"

    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        claim_output_dir(tmp_path / "file", "ingest", force=True)


def test_directories_from_before_the_marker(tmp_path):
    legacy_sample = foreign(tmp_path / "s", ".longdoc-sample")
    claim_output_dir(tmp_path / "s", "sample")
    assert not legacy_sample.exists() and marker_stage(tmp_path / "s") == "sample"

    old = tmp_path / "corpus"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"stage": "ingest"}))
    (old / "part-00000.parquet").write_text("x")
    assert is_longdoc_dir(old, "ingest")
    refused(lambda: claim_output_dir(old, "tokenize"), old)  # another stage's: not evidence
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".stage.json").write_text(json.dumps({"stage": "convert"}))
    assert is_longdoc_dir(tmp_path / "run", "convert")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / ".ingest-state.json").write_text("{}")
    assert is_longdoc_dir(tmp_path / "half", "ingest", legacy=(".ingest-state.json",))
    not_ours = foreign(tmp_path / "spark", "part-00000.parquet")
    refused(lambda: claim_output_dir(tmp_path / "spark", "ingest"), tmp_path / "spark")
    assert survived(not_ours)


def test_remove_own_dir_deletes_only_longdoc_dirs(tmp_path):
    backup = foreign(tmp_path / "m.old", "backup.txt")
    refused(lambda: remove_own_dir(tmp_path / "m.old", "convert"), backup.parent, REFUSE_SIBLING)
    assert survived(backup)
    (tmp_path / "empty").mkdir()
    remove_own_dir(tmp_path / "empty", "convert")
    staging = staging_dir(tmp_path / "m", "convert")  # marked: a killed run's leftover is ours
    (staging / "config.json").write_text("{}")
    remove_own_dir(staging, "convert")
    assert not staging.exists() and not (tmp_path / "empty").exists()


def test_publish_dir_replaces_own_dirs_and_keeps_foreign_ones(tmp_path):
    dest = tmp_path / "mymodels"
    for round_ in range(2):  # the second publish replaces the first
        staging = staging_dir(dest, "convert")
        (staging / "weights").write_text(str(round_))
        publish_dir(staging, dest, stage="convert")
    assert (dest / "weights").read_text() == "1" and marker_stage(dest) == "convert"
    assert not (tmp_path / "mymodels.old").exists()
    assert not (tmp_path / "mymodels.partial").exists()

    precious = foreign(tmp_path / "users")
    backup = foreign(tmp_path / "users.old", "backup.txt")
    staging = staging_dir(tmp_path / "other", "convert")
    refused(lambda: publish_dir(staging, tmp_path / "users", stage="convert"), precious.parent)
    refused(
        lambda: publish_dir(staging, tmp_path / "users", stage="convert", force=True),
        backup.parent,
        REFUSE_SIBLING,
    )  # --force is for --out, never for a sibling the user did not name
    assert survived(precious) and survived(backup)
    backup.unlink()
    publish_dir(staging, tmp_path / "users", stage="convert", force=True)
    assert not precious.exists() and marker_stage(tmp_path / "users") == "convert"


# --- convert ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("roberta")
    tokenizer = tok.train_tokenizer(iter(TEXTS), vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    config = transformers.RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=34,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    transformers.RobertaForMaskedLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _convert(base: Path, out: Path, **kw) -> dict:
    params = ConvertParams(
        base=base, out=out, max_positions=64, attention_window=16, attention_backend="torch", **kw
    )
    return convert(params)


def test_convert_never_destroys_foreign_data(roberta_dir, tmp_path):
    # the report: mymodels/ held precious.txt, mymodels.old/ held backup.txt
    out = tmp_path / "mymodels"
    precious = foreign(out)
    backup = foreign(tmp_path / "mymodels.old", "backup.txt")
    refused(lambda: _convert(roberta_dir, out), out)
    assert survived(precious) and survived(backup)

    fresh = tmp_path / "fresh"
    backup2 = foreign(tmp_path / "fresh.old", "backup.txt")
    refused(lambda: _convert(roberta_dir, fresh), backup2.parent, REFUSE_SIBLING)
    partial = foreign(tmp_path / "fresh2.partial", "half.txt")
    refused(lambda: _convert(roberta_dir, tmp_path / "fresh2"), partial.parent, REFUSE_SIBLING)
    assert survived(backup2) and survived(partial)
    assert not fresh.exists() and not (tmp_path / "fresh2").exists()


def test_convert_replaces_its_own_output(roberta_dir, tmp_path):
    out = tmp_path / "long"
    kept = foreign(tmp_path / "long.partial.keep")  # a neighbour with a similar name
    _convert(roberta_dir, out)
    _convert(roberta_dir, out)
    assert marker_stage(out) == "convert" and (out / "config.json").exists()
    assert json.loads((out / "manifest.json").read_text())["stage"] == "convert"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long", "long.partial.keep"]
    assert survived(kept)
    # --force replaces a foreign --out, and only it
    mine = foreign(tmp_path / "mine")
    _convert(roberta_dir, tmp_path / "mine", force=True)
    assert not mine.exists() and (tmp_path / "mine" / "config.json").exists()


# --- pretrain --------------------------------------------------------------------------------

SEQ = 32


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    tokenizer = tok.train_tokenizer(iter(TEXTS), vocab_size=300, min_frequency=1)
    tokenizer.save_pretrained(out / "tokenizer")
    (out / "packed").mkdir()
    rng = np.random.default_rng(0)
    schema = tok.packed_schema(400, SEQ)
    for split, n in (("train", 8), ("validation", 2)):
        rows = rng.integers(5, len(tokenizer), size=(n, SEQ))
        arr = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1), pa.uint16()), SEQ)
        with ipc.new_file(str(out / "packed" / f"{split}.arrow"), schema) as w:
            w.write_batch(pa.record_batch([arr], schema=schema))
    (out / "manifest.json").write_text(json.dumps({"chars_per_token": 4.0}))
    return out


@pytest.fixture
def store(tmp_path, monkeypatch) -> TrackingParams:
    return own_store(tmp_path, monkeypatch)


def _pretrain(shards: Path, out: Path, tracking: TrackingParams, **kw) -> dict:
    params = PretrainParams(
        shards=shards,
        out=out,
        metrics=out.parent / "metrics.json",
        steps=2,
        batch_size=2,
        warmup_steps=0,
        eval_batches=1,
        checkpoint_every=1,
        **kw,
    )
    model = ModelParams(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        attention_window=16,
        max_position_embeddings=64,
        attention_backend="torch",
    )
    return pretrain(params, model, tracking)


def test_pretrain_never_destroys_foreign_data(shards, tmp_path):
    tracking = TrackingParams(uri="sqlite:///unused.db")  # refused before MLflow is touched
    out = tmp_path / "ckpt"
    precious = foreign(out)
    refused(lambda: _pretrain(shards, out, tracking), out)
    assert survived(precious)
    for suffix in (".old", ".partial", ".ckpt"):
        target = tmp_path / f"p{suffix[1:]}"
        sibling = foreign(target.with_name(target.name + suffix), "backup.txt")
        refused(lambda t=target: _pretrain(shards, t, tracking), sibling.parent, REFUSE_SIBLING)
        assert survived(sibling) and not target.exists()


def test_pretrain_replaces_its_own_output(shards, tmp_path, store):
    out = tmp_path / "ckpt"
    _pretrain(shards, out, store)
    _pretrain(shards, out, store)
    assert marker_stage(out) == "pretrain" and (out / "model.safetensors").exists()
    assert not (tmp_path / "ckpt.ckpt").exists()  # its own resumable checkpoints: cleaned up
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ckpt")) == ["ckpt"]


# --- finetune --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from tests.components.tiny import tiny_checkpoint

    path = tmp_path_factory.mktemp("base")
    return path, tiny_checkpoint(path, TEXTS + ["a brilliant film", "a dreadful film"])


def test_finetune_never_destroys_foreign_data(base, tmp_path):
    path, _ = base
    tracking = TrackingParams(uri="sqlite:///unused.db")  # refused before MLflow is touched
    out = tmp_path / "imdb"
    precious = foreign(out)
    params = FinetuneParams(task="imdb", data=tmp_path / "no-data", out=out, base=path)
    refused(lambda: finetune(params, tracking), out)
    assert survived(precious)
    for suffix in (".old", ".partial"):
        target = tmp_path / f"t{suffix[1:]}"
        sibling = foreign(target.with_name(target.name + suffix), "backup.txt")
        p = params.model_copy(update={"out": target})
        refused(lambda p=p: finetune(p, tracking), sibling.parent, REFUSE_SIBLING)
        assert survived(sibling) and not target.exists()


def test_finetune_replaces_its_own_output(base, tmp_path, store):
    path, tokenizer = base
    cues = ("a dreadful film. ", "a brilliant film. ")
    examples = [ClassificationExample(f"c{i}", cues[i % 2] * 3, i % 2) for i in range(2)]
    adapter = adapter_for(get_task("imdb"), tokenizer)
    params = FinetuneParams(
        task="imdb", base=path, epochs=1, batch_size=2, window_overlap=8, out=tmp_path / "x"
    )
    out = tmp_path / "imdb"
    backup = foreign(tmp_path / "imdb.old.d", "backup.txt")  # a neighbour, not the sibling
    with mlflow.start_run():
        for _ in range(2):
            train_task(params, adapter, examples, examples, 32, False, out, "long")
    assert marker_stage(out) == "finetune" and (out / "config.json").exists()
    assert not (tmp_path / "imdb.old").exists() and survived(backup)


# --- ingest, tokenize ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for i in range(4):
        (src / f"d{i}.txt").write_text(f"Document {i}. " + " ".join(TEXTS[:3]))
    return src


def test_ingest_never_destroys_foreign_data(source, tmp_path):
    out = tmp_path / "corpus"
    # a Spark-style part file is exactly what ingest's cleanup deletes by name
    spark = foreign(out, "part-00000.parquet")
    refused(lambda: ingest(IngestParams(sources=[source], out=out)), out)
    assert survived(spark) and not (out / OUTPUT_MARKER).exists()


def test_ingest_replaces_its_own_output(source, tmp_path):
    out = tmp_path / "corpus"
    siblings = [foreign(tmp_path / f"corpus{s}", "backup.txt") for s in (".old", ".partial")]
    ingest(IngestParams(sources=[source], out=out))
    again = ingest(IngestParams(sources=[source], out=out, min_chars=2))
    assert again["counts"]["written"] == 4 and marker_stage(out) == "ingest"
    assert all(survived(s) for s in siblings)


@pytest.fixture(scope="module")
def corpus(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("c") / "corpus"
    ingest(IngestParams(sources=[source], out=out))
    return out


def _tokenize(corpus: Path, out: Path, **kw) -> dict:
    params = TokenizeParams(
        corpus=corpus, out=out, vocab_size=300, min_frequency=1, seq_len=16, val_fraction=0.5, **kw
    )
    return tokenize(params)


def test_tokenize_never_destroys_foreign_data(corpus, tmp_path):
    out = tmp_path / "shards"
    precious = foreign(out / "docs")  # tokenize deletes docs/ wholesale in its own dir
    refused(lambda: _tokenize(corpus, out), out)
    assert survived(precious)


def test_tokenize_replaces_its_own_output(corpus, tmp_path):
    out = tmp_path / "shards"
    siblings = [foreign(tmp_path / f"shards{s}", "backup.txt") for s in (".old", ".partial")]
    _tokenize(corpus, out)
    again = _tokenize(corpus, out, seed=1)
    assert again["counts"]["documents_total"] == 4 and marker_stage(out) == "tokenize"
    assert all(survived(s) for s in siblings)


# --- score -----------------------------------------------------------------------------------


def _inbox(tmp_path: Path) -> Path:
    src = tmp_path / "inbox.tar"
    with tarfile.open(src, "w") as tar:
        for name in ("a.txt", "b.txt"):
            (tmp_path / name).write_text("the film was brilliant and long")
            tar.add(tmp_path / name, arcname=name)
    return src


def test_score_never_destroys_foreign_data(tmp_path):
    out = tmp_path / "pred"
    precious = foreign(out / "predictions.parquet", "part-00000.parquet")
    params = ScoreParams(inputs=[_inbox(tmp_path)], out=out, model_uri="models:/nope@champion")
    tracking = TrackingParams(uri="sqlite:///unused.db")  # refused before MLflow is touched
    refused(lambda: score(params, tracking), out)
    assert survived(precious)


def test_score_replaces_its_own_output(tmp_path, monkeypatch):
    tracking = own_store(tmp_path, monkeypatch)
    register(tmp_path, "longdoc-test")
    out = tmp_path / "pred"
    siblings = [foreign(tmp_path / f"pred{s}", "backup.txt") for s in (".old", ".partial")]
    params = ScoreParams(
        inputs=[_inbox(tmp_path)], out=out, model_uri="models:/longdoc-test@champion", max_len=32
    )
    score(params, tracking)
    again = score(params.model_copy(update={"max_len": 48}), tracking)  # a change: starts over
    assert again["counts"] == {"inputs": 2, "scored": 2, "errors": 0}
    assert marker_stage(out) == "score" and all(survived(s) for s in siblings)


# --- sample, build-kernels -------------------------------------------------------------------

SMALL = dict(
    corpus_docs=12,
    min_words=200,
    max_words=400,
    imdb_train=20,
    imdb_test=10,
    task_train=4,
    task_dev=2,
    score_docs=4,
)  # test_sample's small sample


def test_sample_never_destroys_foreign_data_and_replaces_its_own(tmp_path):
    out = tmp_path / "sample"
    precious = foreign(out / "aclImdb", "README")
    refused(lambda: write_sample(SampleParams(out=out, **SMALL)), out)
    assert survived(precious)

    own = tmp_path / "own"
    siblings = [foreign(tmp_path / f"own{s}", "backup.txt") for s in (".old", ".partial")]
    write_sample(SampleParams(out=own, **SMALL))
    write_sample(SampleParams(out=own, **SMALL))
    assert marker_stage(own) == "sample" and all(survived(s) for s in siblings)

    legacy = tmp_path / "legacy"  # written by an earlier version: its own marker still counts
    write_sample(SampleParams(out=legacy, **SMALL))
    (legacy / OUTPUT_MARKER).rename(legacy / ".longdoc-sample")
    write_sample(SampleParams(out=legacy, **SMALL))
    assert marker_stage(legacy) == "sample" and not (legacy / ".longdoc-sample").exists()


def test_build_kernels_never_destroys_foreign_data(tmp_path, monkeypatch):
    """The refusal comes before TVM is imported; the rerun uses a stand-in compiler."""
    calls = []

    def fake_build(out_dir, **kw):
        (Path(out_dir) / "llvm").mkdir(exist_ok=True)
        calls.append(out_dir)
        return {"variants": {}}

    monkeypatch.setattr(kernels, "build_kernels", fake_build)
    monkeypatch.setattr(kernel_cache, "use", lambda params: None)
    out = tmp_path / "kernels"
    precious = foreign(out, "manifest.json")  # the cache overwrites manifest.json by name
    refused(lambda: kernel_cache.build(KernelsParams(out=out)), out)
    assert survived(precious) and not calls

    own = tmp_path / "own"
    for _ in range(2):
        kernel_cache.build(KernelsParams(out=own))
    assert len(calls) == 2 and marker_stage(own) == "build_kernels"


def test_force_is_not_a_parameter_of_the_result():
    """`force` is about this run, not what it computes: it stays out of fingerprints, manifests
    and MLflow params (all built from `params_dict`), so toggling it never makes a stage stale."""
    sections = (SampleParams, IngestParams, TokenizeParams, KernelsParams, PretrainParams)
    for cls in (*sections, ConvertParams, FinetuneParams, ScoreParams):
        assert cls(force=True).force and "force" not in params_dict(cls(force=True))
