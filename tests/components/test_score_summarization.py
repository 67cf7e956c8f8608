"""Scoring and serving an LED summarizer: `longdoc score` writes one `summary` per document
(the generation settings saved with the checkpoint, or `score.generation`'s), reads a document
whole up to the encoder's positions and marks what is cut, resumes after an interruption with
every document scored exactly once, takes a checkpoint directory as the model; the registered
pyfunc model answers `summary` for `text`, takes generation settings as params and refuses bad
requests naming them."""

import json
from collections import Counter
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.exceptions import MlflowException

from longdoc.components.core.config import GenerationOverrides, ScoreParams
from longdoc.components.data.tokenize import train_tokenizer
from longdoc.components.inference import score as score_mod
from longdoc.components.inference.serving import log_longdoc_model
from longdoc.components.inference.summarize import SummaryEngine
from longdoc.components.modeling.led import LEDForConditionalGeneration, LongdocLEDConfig
from longdoc.components.training.adapters import generate_text
from tests.components.test_score import TEXTS, _errors, _tar, own_store

NAME = "longdoc-summarization"
POSITIONS = 64  # encoder positions: the long document below does not fit
# as fine-tuning saves them (params.yaml's finetune.tasks.summarization.generation)
GENERATION = dict(
    num_beams=2, max_new_tokens=8, min_new_tokens=0, no_repeat_ngram_size=3, length_penalty=2.0
)


def tiny_led(path: Path, seed: int = 0) -> Path:
    """A 1+1-layer LED and its tokenizer at `path`, with fine-tuning's generation config.
    init_std 0.3: wide enough that the generated ids depend on the input."""
    tokenizer = train_tokenizer(iter(TEXTS * 40), vocab_size=300, min_frequency=1)
    config = LongdocLEDConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_encoder_position_embeddings=POSITIONS,
        max_decoder_position_embeddings=32, attention_window=[8], dropout=0.0, init_std=0.3,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LEDForConditionalGeneration(config)
    for key, value in GENERATION.items():  # as training.adapters.Seq2SeqAdapter.build_model
        setattr(model.generation_config, key, value)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_led(tmp_path_factory.mktemp("led"))


@pytest.fixture(scope="module")
def champion(tmp_path_factory, checkpoint):
    """A store of the module's own with the summarizer registered once as champion (logging
    runs the input example through the model: the slowest step here)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        tracking_params = own_store(tmp_path_factory.mktemp("store"), monkeypatch)
        with mlflow.start_run():
            version = str(log_longdoc_model(checkpoint, NAME).registered_model_version)
        mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", version)
        yield tracking_params


def _docs() -> list[tuple[str, str]]:
    docs = [
        (f"doc{i:02d}.txt", f"{TEXTS[i % 3]} {TEXTS[(i + 1) % 3]} number {i}") for i in range(7)
    ]
    docs.append(("long.txt", " ".join(TEXTS * 12)))  # ~70 words: past the 64 positions
    return docs


def _reference(checkpoint: Path, texts: list[str]) -> list[str]:
    """Each text summarized alone, exactly as fine-tuning writes its dev predictions."""
    engine = SummaryEngine.from_checkpoint(checkpoint, device="cpu")
    pad = engine.tokenizer.pad_token_id
    return [generate_text(engine.model, engine.tokenizer, e, pad) for e in engine.encode(texts)]


class Interrupted(BaseException):
    """Stands in for the process dying mid-run (nothing catches it)."""


def test_score_writes_summaries_and_resumes_after_an_interruption(
    tmp_path, champion, checkpoint, monkeypatch
):
    members = _docs()
    src = tmp_path / "inbox.tar.gz"
    _tar(src, [(m, t.encode()) for m, t in members[:3]] + [("blank.txt", b" \n")]
         + [(m, t.encode()) for m, t in members[3:]])  # fmt: skip
    params = ScoreParams(
        inputs=[src], model_uri=f"models:/{NAME}@champion", out=tmp_path / "p", chunk_docs=2,
        batch_tokens=128,
    )  # fmt: skip
    real_unit, calls = score_mod.score_unit, []

    def dies_at_the_third_unit(*args):
        calls.append(1)
        if len(calls) == 3:
            raise Interrupted
        return real_unit(*args)

    monkeypatch.setattr(score_mod, "score_unit", dies_at_the_third_unit)
    with pytest.raises(Interrupted):
        score_mod.score(params, champion)
    assert not (tmp_path / "p/manifest.json").exists()
    state = json.loads((tmp_path / "p/.score-state.json").read_text())
    assert state["consumed"] == 5 and state["parts"] == ["part-00000.parquet", "part-00001.parquet"]
    monkeypatch.setattr(score_mod, "score_unit", real_unit)

    manifest = score_mod.score(params, champion)
    rows = pq.read_table(tmp_path / "p/predictions.parquet").to_pylist()
    assert Counter(r["member"] for r in rows) == Counter(m for m, _ in members)  # each once
    assert [e["member"] for e in _errors(tmp_path / "p")] == ["blank.txt"]
    assert manifest["counts"] == {"inputs": 9, "scored": 8, "errors": 1}
    assert manifest["runs"] == 2 and manifest["this_run"]["resumed_after_items"] == 5
    by_member = {r["member"]: r for r in rows}
    want = _reference(checkpoint, [t for _, t in members])
    assert [by_member[m]["summary"] for m, _ in members] == want
    assert len(set(want)) > 1  # the summaries depend on the document
    assert {r["windows"] for r in rows} == {1} and by_member["long.txt"]["tokens"] == POSITIONS
    assert [m for m, r in by_member.items() if r["truncated"]] == ["long.txt"]
    assert manifest["truncated"] == 1 and manifest["model"]["kind"] == "summarization"
    assert {k: manifest["model"]["generation"][k] for k in GENERATION} == GENERATION
    assert "label" not in rows[0] and "probabilities" not in rows[0]


def test_score_a_checkpoint_directory_with_other_generation_settings(
    tmp_path, champion, checkpoint, monkeypatch
):
    tracking_params = champion  # (a checkpoint directory needs no registry)
    members = _docs()[:3]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(f'{{"text": "{t}"}}\n' for _, t in members))
    params = ScoreParams(inputs=[src], model_uri=str(checkpoint), out=tmp_path / "p")
    first = score_mod.score(params, tracking_params)
    assert first["model"]["name"] == str(checkpoint) and len(first["model"]["version"]) == 16
    assert first["model"]["generation"]["num_beams"] == 2

    greedy = params.model_copy(update={"generation": GenerationOverrides(num_beams=1)})
    second = score_mod.score(greedy, tracking_params)  # other settings: starts over
    assert second["this_run"]["scored"] == 3 and second["model"]["generation"]["num_beams"] == 1
    assert second["model"]["generation"]["max_new_tokens"] == 8  # the rest stays the model's
    rows = pq.read_table(tmp_path / "p/predictions.parquet").to_pylist()
    texts = [t for _, t in members]
    engine = SummaryEngine.from_checkpoint(checkpoint, device="cpu", generation={"num_beams": 1})
    want = [p["summary"] for p in engine.predict_texts(texts)]
    assert [r["summary"] for r in sorted(rows, key=lambda r: r["member"])] == want
    # a worker process (Dask) builds the same engine from the run's spec alone
    monkeypatch.setattr(score_mod, "_ENGINES", {})
    spec = score_mod.engine_spec(greedy, str(checkpoint.resolve()))
    _, scored = score_mod.score_unit(spec, texts, None, greedy.batch_tokens)
    assert [prediction["summary"] for *_, prediction in scored] == want


def test_served_summarizer_answers_summaries_and_refuses_bad_requests(champion, checkpoint):
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    params = model.metadata.get_params_schema().to_dict()
    assert {p["name"]: p["default"] for p in params} == {
        "max_len": POSITIONS, "batch_tokens": 16384, **GENERATION
    }  # fmt: skip
    texts = [t for _, t in _docs()]
    out = model.predict(pd.DataFrame({"text": texts}))
    assert list(out.columns) == ["summary", "tokens", "truncated", "windows"]
    assert out["summary"].tolist() == _reference(checkpoint, texts)
    assert out["truncated"].tolist() == [False] * 7 + [True]

    greedy = model.predict(
        pd.DataFrame({"text": texts[:2]}), params={"num_beams": 1, "max_len": 16}
    )
    engine = SummaryEngine.from_checkpoint(checkpoint, device="cpu", generation={"num_beams": 1})
    assert greedy["summary"].tolist() == [
        p["summary"] for p in engine.predict_texts(texts[:2], max_len=16)
    ]
    with pytest.raises(MlflowException, match=r"num_beams=0(.|\n)*max_new_tokens=40"):
        model.predict(
            pd.DataFrame({"text": texts[:1]}), params={"num_beams": 0, "max_new_tokens": 40}
        )
    with pytest.raises(MlflowException, match="row 1: 'text' is empty"):
        model.predict(pd.DataFrame({"text": [texts[0], "  "]}))


def test_a_summarizer_registered_as_its_checkpoint_directory_still_scores(
    tmp_path, champion, checkpoint
):
    """Versions fine-tuning registered before summarizers had a pyfunc model are the bare
    checkpoint directory; a store whose champion is one of them still scores."""
    from longdoc.components.training.finetune import _register

    with mlflow.start_run():
        _register("longdoc-summarization-old", checkpoint, 1.0, "rouge_mean", servable=False)
    members = _docs()[:2]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(f'{{"text": "{t}"}}\n' for _, t in members))
    params = ScoreParams(
        inputs=[src], model_uri="models:/longdoc-summarization-old@champion", out=tmp_path / "p"
    )
    manifest = score_mod.score(params, champion)
    assert manifest["model"]["version"] == "1" and manifest["counts"]["scored"] == 2
    rows = pq.read_table(tmp_path / "p/predictions.parquet").to_pylist()
    assert [r["summary"] for r in rows] == _reference(checkpoint, [t for _, t in members])
