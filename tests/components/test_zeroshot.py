"""Zero-shot classification: windows and prompt layout, the calibrated label scores recomputed
by hand from the masked LM, the registered pyfunc model (a fine-tuned classifier's signature and
output) and batch scoring taking it unchanged."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from longdoc.components.core.config import ScoreParams, ZeroShotClassifier
from longdoc.components.core.io import InputError
from longdoc.components.inference.cloze import ClozeRow, MaskedLM
from longdoc.components.inference.serving import CLASSIFICATION, model_signature
from longdoc.components.inference.zeroshot import (
    ZeroShotEngine,
    register_zero_shot,
    score_zero_shot,
)
from longdoc.components.training.windows import window_starts
from tests.components.test_score import own_store
from tests.components.tiny import tiny_checkpoint

TEXTS = [
    "the film was brilliant and superb",
    "a dreadful and awful plot",
    "the rain fell on the quiet hill",
]


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    path = tmp_path_factory.mktemp("zs") / "mlm"
    tiny_checkpoint(path, TEXTS, vocab_size=330, hidden_size=32, max_positions=66)
    return path


def spec_for(ckpt, **changes) -> ZeroShotClassifier:
    base = {
        "model": str(ckpt),
        "template": "Is it {labels}? It was {mask}.",
        "labels": {
            "neg": {"description": "a dreadful plot", "words": ["dreadful", "awful", "Qzxq"]},
            "pos": {"description": "a brilliant film", "words": ["brilliant", "superb"]},
        },
        "max_len": 40,
        "window_overlap": 4,
    }
    return ZeroShotClassifier.model_validate({**base, **changes})


def test_cloze_forward_gathers_what_the_full_forward_computes(tiny_mlm):
    lm = MaskedLM.from_checkpoint(tiny_mlm, device="cpu")
    ids = lm.tokenizer("the film was <mask> and long")["input_ids"]
    row = ClozeRow(ids, ids.index(lm.tokenizer.mask_token_id), [1])
    short = ClozeRow(ids[:4] + [lm.tokenizer.mask_token_id, 2], 4)
    got = lm.mask_log_probs([row, short], batch_tokens=8)  # one row a batch, padded rows too
    for r, lp in zip((row, short), got, strict=True):
        glob = torch.zeros(1, len(r.ids), dtype=torch.long)
        glob[0, [r.mask, *r.global_positions]] = 1
        with torch.inference_mode():
            logits = lm.model(torch.tensor([r.ids]), global_attention_mask=glob).logits
        ref = torch.log_softmax(logits[0, r.mask].double(), -1)
        assert torch.allclose(lp.double(), ref, atol=1e-5)


def test_windows_prompt_and_calibrated_scores_by_hand(tiny_mlm):
    spec = spec_for(tiny_mlm)
    engine = ZeroShotEngine.from_spec(tiny_mlm, spec, device="cpu")
    tok = engine.tokenizer
    assert [len(v) for v in engine.verbalizers] == [2, 2]  # "Qzxq" is several tokens: left out
    mask = tok.mask_token_id
    assert tok.decode(engine.prompt) == " Is it a dreadful plot or a brilliant film? It was<mask>."
    long_text = " ".join(TEXTS * 5)
    docs = engine.encode([TEXTS[0], long_text])
    n_prompt = len(engine.prompt)
    for doc, text in zip(docs, (TEXTS[0], long_text), strict=True):
        tokens = tok(text, add_special_tokens=False)["input_ids"]
        width = 40 - 2 - n_prompt
        starts = window_starts(len(tokens), width, 4)
        assert len(doc.windows) == len(starts)
        for w, s in zip(doc.windows, starts, strict=True):
            assert w.ids == [tok.cls_token_id, *tokens[s : s + width], *engine.prompt, 2]
            first = len(w.ids) - 1 - n_prompt
            assert w.global_positions == list(range(first, len(w.ids) - 1))
    assert len(docs[1].windows) > 1 and docs[1].truncated is False

    def normalised(windows_ids: list[list[int]]) -> torch.Tensor:
        rows = [ClozeRow(ids, len(ids) - 3, list(range(len(ids) - 1 - n_prompt, len(ids) - 1)))
                for ids in windows_ids]  # fmt: skip
        assert all(r.ids[r.mask] == mask for r in rows)
        lp = engine.lm.mask_log_probs(rows).double()
        verbalizers = (["dreadful", "awful"], ["brilliant", "superb"])
        words = [[tok(" " + w)["input_ids"][1] for w in ws] for ws in verbalizers]
        scores = torch.stack([torch.logsumexp(lp[:, ids], -1) for ids in words], -1)
        return torch.log_softmax(scores, -1)

    empty = normalised([[tok.cls_token_id, *engine.prompt, 2]])[0]
    preds = engine.run(docs)
    uncalibrated = ZeroShotEngine(engine.model, tok, spec_for(tiny_mlm, calibrate=False)).run(docs)
    for doc, pred, raw in zip(docs, preds, uncalibrated, strict=True):
        mean = normalised([w.ids for w in doc.windows]).mean(0)
        expected = torch.softmax(mean - empty, -1)
        assert pred["probabilities"] == pytest.approx(expected.tolist(), abs=1e-5)
        assert pred["label"] == ["neg", "pos"][int(expected.argmax())]
        assert raw["probabilities"] == pytest.approx(torch.softmax(mean, -1).tolist(), abs=1e-5)
    with pytest.raises(InputError, match="none of"):
        ZeroShotEngine.from_spec(
            tiny_mlm,
            spec_for(tiny_mlm, labels={"a": {"description": "x", "words": ["Qzxq"]},
                                       "b": {"description": "y", "words": ["film"]}}),
        )  # fmt: skip


def test_registered_model_serves_like_a_classifier_and_batch_scoring_takes_it(
    tmp_path, monkeypatch, tiny_mlm
):
    store = own_store(tmp_path, monkeypatch)
    spec = spec_for(tiny_mlm)
    uri = register_zero_shot("tiny", spec, store)
    assert uri == "models:/longdoc-zeroshot-tiny/1"
    assert register_zero_shot("tiny", spec, store) == uri  # same definition: same version
    changed = spec_for(tiny_mlm, calibrate=False)
    assert register_zero_shot("tiny", changed, store) == "models:/longdoc-zeroshot-tiny/2"

    model = mlflow.pyfunc.load_model(uri)
    assert model.metadata.signature == model_signature(CLASSIFICATION)
    texts = [TEXTS[0], " ".join(TEXTS * 5)]
    out = model.predict(pd.DataFrame({"text": texts}))
    assert list(out.columns) == ["label", "probabilities", "tokens", "truncated", "windows"]
    engine = ZeroShotEngine.from_spec(tiny_mlm, spec, device="cpu")
    for row, ref in zip(out.to_dict("records"), engine.predict_texts(texts), strict=True):
        assert row["label"] == ref["label"]
        assert row["probabilities"] == pytest.approx(ref["probabilities"], abs=1e-6)
    assert list(out["windows"]) == [1, len(engine.encode(texts)[1].windows)]
    with pytest.raises(mlflow.exceptions.MlflowException, match="row 0: 'text' is null"):
        model.predict(pd.DataFrame({"text": [None]}))

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i, text in enumerate(texts):
        (inbox / f"doc{i}.txt").write_text(text)
    params = ScoreParams(inputs=[inbox], out=tmp_path / "preds", zero_shot="tiny", device="cpu")
    manifest = score_zero_shot(params, spec, store)
    assert manifest["counts"] == {"inputs": 2, "scored": 2, "errors": 0}
    assert manifest["model"]["name"] == "longdoc-zeroshot-tiny"
    rows = pq.read_table(tmp_path / "preds/predictions.parquet").to_pylist()
    by_member = {r["member"]: r for r in rows}
    assert set(by_member) == {"doc0.txt", "doc1.txt"}
    for i, ref in enumerate(out.to_dict("records")):
        got = by_member[f"doc{i}.txt"]
        assert got["label"] == ref["label"] and got["model_version"] == "1"
        assert got["probabilities"] == pytest.approx(ref["probabilities"], abs=1e-6)
    assert json.loads((tmp_path / "preds/manifest.json").read_text())["model_version"] == "1"
