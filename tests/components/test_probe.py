"""`longdoc probe`: LAMA/LPAQA files read as distributed (malformed lines reported and skipped),
ranks and metrics against hand-computed values, ensembles on constructed log-probabilities, the
cloze rows against the tokenizer's own reading of the sentence, and the stage on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
import torch

from longdoc.components.core.config import ProbeParams, TrackingParams
from longdoc.components.core.io import InputError
from longdoc.components.inference import lama
from longdoc.components.inference import probe as P
from longdoc.components.inference.cloze import ClozeRow, MaskedLM
from tests.components.tiny import tiny_checkpoint

# One line of LAMA's data/relations.jsonl and of data/TREx/P19.jsonl, as distributed.
LAMA_RELATION = (
    '{"relation": "P19", "template": "[X] was born in [Y] .", "label": "place of birth", '
    '"description": "most specific known (e.g. city instead of country, or hospital instead of '
    'city) birth location of a person, animal or fictional character", "type": "N-1"}'
)
LAMA_FACT = (
    '{"uuid": "f5d6f8b1-8ae1-4e4a-9c1b-4b8ce20d4c84", "obj_uri": "Q90", "obj_label": "Paris", '
    '"sub_uri": "Q123", "sub_label": "Ann Lee", "predicate_id": "P19", "evidences": [{"sub_uri": '
    '"Q123", "obj_uri": "Q90", "sub_surface": "Ann Lee", "obj_surface": "Paris", '
    '"masked_sentence": "Ann Lee was born in [MASK] in 1900."}]}'
)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_loaders_read_the_distributed_formats_and_skip_malformed_lines(tmp_path):
    rels = write_lines(
        tmp_path / "relations.jsonl",
        [
            LAMA_RELATION,
            "",  # blank lines are allowed
            '{"relation": "P36", "template": "The capital of [X] is [Y] ."}',
            '{"relation": "P1", "template": "[X] is [Y] ."',  # 4: truncated JSON
            '{"relation": "P2", "template": "[X] has no object slot ."}',  # 5
            '["P3", "[X] [Y]"]',  # 6: not an object
            '{"relation": "P19", "template": "[X] , born in [Y] ."}',  # 7: listed twice
        ],
    )
    loaded = lama.load_relations(rels)
    assert [(r.id, r.template, r.label, r.type) for r in loaded.items] == [
        ("P19", "[X] was born in [Y] .", "place of birth", "N-1"),
        ("P36", "The capital of [X] is [Y] .", "", ""),
    ]
    reasons = {s.line: s.reason for s in loaded.skipped}
    assert set(reasons) == {4, 5, 6, 7}
    assert reasons[4].startswith("not valid JSON")
    assert "[Y] exactly once" in reasons[5]
    assert "expected a JSON object, got list" == reasons[6]
    assert "already listed" in reasons[7]
    assert str(loaded.skipped[0]) == f"{rels}:4: {reasons[4]}"

    write_lines(
        tmp_path / "TREx/P19.jsonl",
        [
            LAMA_FACT,
            '{"sub_label": "Bo Ek", "obj_label": "Oslo", "predicate_id": "P19"}',  # no uuid: fine
            '{"sub_label": "Cy Ro", "predicate_id": "P19"}',  # 3: no obj_label
            '{"sub_label": 7, "obj_label": "Rome", "predicate_id": "P19"}',  # 4: not a string
            '{"sub_label": "Di Fo", "obj_label": "Rome", "predicate_id": "P36"}',  # 5: elsewhere
        ],
    )
    facts, skipped = lama.load_fact_dir(tmp_path / "TREx", loaded.items)
    assert facts == {
        "P19": [
            lama.Fact("P19", "Ann Lee", "Paris", "f5d6f8b1-8ae1-4e4a-9c1b-4b8ce20d4c84"),
            lama.Fact("P19", "Bo Ek", "Oslo", ""),
        ]
    }  # P36 has no file: no facts, no error
    assert [(s.line, s.reason) for s in skipped] == [
        (3, "no 'obj_label'"),
        (4, "'sub_label' must be a non-empty string, not 7"),
        (5, "predicate_id 'P36' is not this file's 'P19'"),
    ]

    write_lines(
        tmp_path / "prompts/mine/P19.jsonl",
        ['{"relation": "P19", "template": "[X] , a native of [Y] ,"}', "{nope"],
    )
    write_lines(
        tmp_path / "prompts/paraphrase/P19.jsonl",
        ['{"relation": "P19", "template": "[X] was born at [Y] .", "score": 0.3}'],
    )
    prompts = lama.load_prompts([tmp_path / "prompts"])
    assert [(p.template, p.source) for p in prompts.items] == [
        ("[X] , a native of [Y] ,", "mine"),
        ("[X] was born at [Y] .", "paraphrase"),
    ]
    assert [(Path(s.file).parent.name, s.line) for s in prompts.skipped] == [("mine", 2)]
    with pytest.raises(InputError, match="no such prompt file"):
        lama.load_prompts([tmp_path / "missing.jsonl"])


def test_ranks_and_metrics_by_hand():
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.7, 0.2],  # gold 2: beaten by 1 and 3 -> rank 3
            [0.8, 0.1, 0.3, 0.9, 0.0],  # gold 0: beaten by 3 only -> rank 2
            [0.0, 0.1, 0.2, 0.3, 0.4],  # gold 4: best -> rank 1
        ]
    )
    gold = torch.tensor([2, 0, 4])
    assert P.gold_ranks(scores, gold).tolist() == [3, 2, 1]
    # the other known object of the same subject does not count (LAMA's filtered ranks)
    assert P.gold_ranks(scores, gold, exclude=[[3], [], []]).tolist() == [2, 2, 1]
    # only the candidates compete
    candidates = torch.tensor([True, False, True, True, True])
    assert P.gold_ranks(scores, gold, candidates).tolist() == [2, 2, 1]

    m = P.rank_metrics(torch.tensor([1, 2, 10, 11]))
    assert m["n"] == 4
    assert m["p_at_1"] == 0.25 and m["p_at_10"] == 0.75
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11) / 4)
    assert P.rank_metrics(torch.tensor([], dtype=torch.long)) == {
        "n": 0, "p_at_1": None, "p_at_10": None, "mrr": None,
    }  # fmt: skip
    macro = P.macro_average(
        [m, P.rank_metrics(torch.tensor([1])), P.rank_metrics(torch.tensor([], dtype=torch.long))]
    )
    assert macro["relations"] == 2  # a relation without test facts is not averaged
    assert macro["p_at_1"] == pytest.approx((0.25 + 1) / 2)
    assert macro["mrr"] == pytest.approx((m["mrr"] + 1) / 2)


def constructed_log_probs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(facts, 3 prompts, vocab 20) log-probabilities and gold ids: prompt 0 puts a weak bump on
    the gold id under heavy noise, prompt 1 is pure noise, prompt 2 points at a wrong id; prompt
    3 is another weak, independently noisy view of the gold id."""
    g = torch.Generator().manual_seed(seed)
    gold = torch.randint(0, 20, (n,), generator=g)
    logits = torch.randn((n, 4, 20), generator=g) * 1.5
    rows = torch.arange(n)
    logits[rows, 0, gold] += 2.0
    logits[rows, 2, (gold + 1) % 20] += 4.0
    logits[rows, 3, gold] += 2.0
    return torch.log_softmax(logits, -1), gold


def test_ensembles_beat_the_worst_single_prompt():
    lp_train, g_train = constructed_log_probs(300, 0)
    lp_test, g_test = constructed_log_probs(300, 1)

    def p1(scores: torch.Tensor) -> float:
        return P.rank_metrics(P.gold_ranks(scores, g_test))["p_at_1"]

    singles = [p1(lp_test[:, i]) for i in range(4)]
    train = [P.rank_metrics(P.gold_ranks(lp_train[:, i], g_train)) for i in range(4)]
    order = P.prompt_order(train)
    assert set(order[:2]) == {0, 3} and order[-1] == 2  # the misleading prompt ranks last
    weights = P.optimize_weights(lp_train, g_train)
    assert float(weights.sum()) == pytest.approx(1.0)
    assert weights[2] < 0.05 and weights[1] < weights[0] and weights[1] < weights[3]
    top1 = p1(lp_test[:, order[0]])
    top2 = p1(lp_test[:, order[:2]].mean(1))
    optimized = p1(P.ensemble_scores(lp_test, weights))
    assert min(top1, top2, optimized) > min(singles) + 0.2
    # two independently noisy views of the answer, averaged, beat each of them
    assert top2 > max(singles) and optimized > max(singles)
    # no training facts: uniform weights, nothing fitted
    assert P.optimize_weights(lp_train[:0], g_train[:0]).tolist() == [0.25] * 4


TEXTS = [
    "Ann Lee was born in Paris. Ann Lee, a native of Paris, wrote the book.",
    "Bo Ek was born in Oslo. Bo Ek, a native of Oslo, sang the song.",
    "Cy Ro was born in Rome. The capital of Italy is Rome.",
]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mlm") / "ckpt"
    tiny_checkpoint(path, TEXTS, vocab_size=330, hidden_size=32, max_positions=66)
    return path


def test_cloze_rows_read_as_the_sentence_reads(tiny_lm):
    lm = MaskedLM.from_checkpoint(tiny_lm, device="cpu")
    builder = P.ClozeBuilder(lm)
    tok = lm.tokenizer
    for template, sentence in (
        ("[X] was born in [Y] .", " Ann Lee was born in Paris."),
        (
            "[X] , a native of [Y] , wrote the book .",
            " Ann Lee, a native of Paris, wrote the book.",
        ),
        ("[Y] is where [X] was born .", " Paris is where Ann Lee was born."),
    ):
        row = builder.row(template, "Ann Lee")
        whole = tok(sentence)["input_ids"]
        paris = builder.object_id("Paris")
        assert paris is not None and whole.count(paris) == 1
        assert row.ids == [tok.mask_token_id if i == paris else i for i in whole], template
        assert row.ids[row.mask] == tok.mask_token_id
    assert builder.object_id("Zyxwvut Qq") is None  # several tokens
    assert P.detokenize("[X] ( born 1900 ) isn't [Y] 's .") == "[X] (born 1900) isn't [Y]'s."


def test_the_stage_on_a_tiny_model(tmp_path, tiny_lm):
    write_lines(
        tmp_path / "relations.jsonl",
        [LAMA_RELATION, '{"relation": "P36", "template": "The capital of [X] is [Y] ."}'],
    )
    facts = [
        {"sub_label": s, "obj_label": o, "predicate_id": "P19"}
        for s, o in [("Ann Lee", "Paris"), ("Bo Ek", "Oslo"), ("Cy Ro", "Rome"),
                     ("Di Fo", "Paris"), ("Ed Ma", "Zyxwvut Qq")]
    ]  # fmt: skip
    write_lines(tmp_path / "TREx/P19.jsonl", [json.dumps(f) for f in facts] + ["not json"])
    write_lines(
        tmp_path / "prompts/mine/P19.jsonl",
        ['{"relation": "P19", "template": "[X] , a native of [Y] ,"}'],
    )
    params = ProbeParams(
        model=str(tiny_lm), relations=tmp_path / "relations.jsonl", facts=tmp_path / "TREx",
        prompts=[tmp_path / "prompts"], out=tmp_path / "out", metrics=tmp_path / "m/probe.json",
        top_k=2, device="cpu",
    )  # fmt: skip
    tracking = TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="probe-test")
    summary = P.probe(params, tracking)
    report = json.loads((tmp_path / "out/report.json").read_text())
    p19 = report["relations"]["P19"]
    assert p19["counts"] == {
        "facts": 5, "multi_token": 1, "not_in_vocab": 0, "train": 2, "test": 2, "prompts": 2,
    }  # fmt: skip
    assert [p["source"] for p in p19["prompts"]] == ["manual", "mine"]
    assert set(report["relations"]) == {"P19"}  # P36 has no facts file
    assert report["skipped"] == [
        f"{tmp_path / 'TREx/P19.jsonl'}:6: not valid JSON (Expecting value)"
    ]
    for m in P.METHODS:
        method = p19["methods"][m]
        assert method["n"] == 2 and 0 <= method["p_at_1"] <= method["p_at_10"] <= 1
        assert summary["macro"][m]["p_at_1"] == method["p_at_1"]  # one relation: macro = it
    assert len(p19["methods"]["optimized"]["weights"]) == 2
    assert json.loads(params.metrics.read_text())["macro"] == summary["macro"]
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["stage"] == "probe" and manifest["results"]["counts"]["skipped_lines"] == 1
    run = mlflow.get_run(summary["run_id"])
    assert math.isclose(run.data.metrics["probe_manual_mrr"], summary["macro"]["manual"]["mrr"])
    assert "probe_P19_optimized_p_at_1" in run.data.metrics


def test_never_trained_global_projections_are_read_as_copies_of_the_local_ones(tmp_path, tiny_lm):
    from transformers import AutoTokenizer

    from longdoc.components.modeling.model import LongformerForMaskedLM

    # Pretraining marks no token global: the checkpoint's global projections are still at their
    # initialisation (zero biases) while the local ones trained (here: nudged off it).
    model = LongformerForMaskedLM.from_pretrained(tiny_lm)
    attention = model.longformer.encoder.layer[0].attention.self
    torch.manual_seed(1)
    with torch.no_grad():
        for name in ("query", "key", "value"):
            getattr(attention, name).bias.normal_(0, 0.5)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    for name in ("untrained", "trained"):
        tokenizer.save_pretrained(tmp_path / name)
    model.save_pretrained(tmp_path / "untrained")
    lm = MaskedLM.from_checkpoint(tmp_path / "untrained", device="cpu")
    read = lm.model.longformer.encoder.layer[0].attention.self
    assert lm.global_projections == "copied from local"
    for name in ("query", "key", "value"):
        assert torch.equal(getattr(read, f"{name}_global").weight, getattr(read, name).weight)
        assert torch.equal(getattr(read, f"{name}_global").bias, getattr(read, name).bias)
    # A query inside the window (4 tokens a side) then reads the same globally as locally.
    ids = lm.ids(" Ann Lee was born")[:3]
    row = ClozeRow([lm.tokenizer.bos_token_id, *ids[:1], lm.tokenizer.mask_token_id, *ids[1:]], 2)
    torch.testing.assert_close(
        lm.mask_log_probs([row]), lm.mask_log_probs([row], global_mask=False)
    )

    # Trained global projections (any nonzero bias) are left as they are.
    with torch.no_grad():
        attention.value_global.bias[0] = 0.25
    model.save_pretrained(tmp_path / "trained")
    lm = MaskedLM.from_checkpoint(tmp_path / "trained", device="cpu")
    read = lm.model.longformer.encoder.layer[0].attention.self
    assert lm.global_projections == "trained"
    assert torch.equal(read.query_global.weight, attention.query_global.weight)
    assert not torch.equal(read.query_global.bias, read.query.bias)


def test_the_majority_reference_answers_the_most_frequent_training_object():
    train_gold = torch.tensor([7, 3, 7, 5, 3, 7])  # 7 three times, 3 twice, 5 once
    scores = P.majority_scores(train_gold, rows=4, vocab=10)
    ranks = P.gold_ranks(scores, torch.tensor([7, 3, 5, 9]))
    # 9 never trained: behind the three trained objects and the unseen ids below it (0-2, 4, 6, 8)
    assert ranks.tolist() == [1, 2, 3, 10]
    assert P.rank_metrics(ranks)["p_at_1"] == 0.25
    tie = P.majority_scores(torch.tensor([4, 2]), rows=1, vocab=6)  # equal counts: lower id first
    assert P.gold_ranks(tie, torch.tensor([4])).tolist() == [2]
