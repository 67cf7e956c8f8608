"""Windowing, span mapping and decoding, and the cross-window aggregation of each task head, on
examples built here with a tiny randomly initialised model."""

import pytest
import torch

from longdoc.components.tasks import (
    ChoiceExample,
    ClassificationExample,
    Document,
    HotpotExample,
    SpanExample,
    get_task,
)
from longdoc.components.training.adapters import (
    ClassificationAdapter,
    HotpotQAAdapter,
    TriviaQAAdapter,
    WikiHopAdapter,
    span_text,
)
from longdoc.components.training.windows import (
    best_span,
    char_span_to_tokens,
    find_occurrences,
    marginal_span_loss,
    window_starts,
    word_boundaries,
)
from tests.components.tiny import tiny_checkpoint

FILLER = " ".join(["the cat sat on the mat near the old mill."] * 10)
TEXTS = [
    FILLER,
    "who designed the bridge? it was designed by Ada Lovelace and Lovelace alone",
    "Kalen Dorvash was born in Tessia in 1900. Were they the same? yes no",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    return path, tiny_checkpoint(path, TEXTS, max_positions=258)


# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(("n", "width", "overlap"), [(10, 4, 1), (100, 32, 8), (33, 32, 0)])
def test_windows_cover_everything_with_the_overlap(n, width, overlap):
    starts = window_starts(n, width, overlap)
    assert starts[0] == 0 and starts[-1] + width == n  # flush with both ends
    covered = set()
    for a, b in zip(starts, starts[1:], strict=False):
        assert 0 < b - a <= width - overlap  # neighbours share at least `overlap` tokens
    for s in starts:
        covered.update(range(s, s + width))
    assert covered == set(range(n))


def test_short_input_is_one_window_and_truncation_keeps_the_first():
    assert window_starts(5, 8, 2) == [0]
    assert window_starts(0, 8, 2) == [0]
    assert window_starts(100, 8, 2, max_windows=1) == [0]
    with pytest.raises(ValueError, match="overlap"):
        window_starts(100, 8, 8)


def test_char_spans_map_to_tokens_through_leading_space_offsets():
    offsets = [(0, 3), (3, 7), (7, 11), (11, 12)]  # "The", " big", " cat", "."
    assert char_span_to_tokens(offsets, 4, 11) == (1, 2)  # "big cat"
    assert char_span_to_tokens(offsets, 8, 11) == (2, 2)
    assert char_span_to_tokens(offsets, 20, 25) is None


def test_every_occurrence_of_every_alias_on_word_boundaries():
    text = "Tessik River runs. The tessik river, not Tessikland, meets River Tessik."
    spans = find_occurrences(text, ["Tessik River", "River Tessik", "Tessik"])
    found = sorted(text[a:b] for a, b in spans)
    assert found == ["River Tessik", "Tessik", "Tessik", "Tessik River", "tessik", "tessik river"]
    assert find_occurrences(text, ["", "absent"]) == []


def test_spans_start_and_end_on_word_boundaries():
    text = "Luigi met (Ada) Lovelace."
    offsets = [(0, 3), (3, 5), (5, 9), (9, 11), (11, 14), (14, 15), (15, 20), (20, 24), (24, 25)]
    # "Lui" "gi" " met" " (" "Ada" ")" " Love" "lace" "."
    starts, ends = word_boundaries(text, offsets)
    assert starts == [True, False, True, True, True, True, True, False, True]
    assert ends == [False, True, True, True, True, True, False, True, True]


def test_best_span_respects_length_and_allowed_tokens():
    start = torch.tensor([9.0, 0.0, 5.0, 0.0, 0.0, 0.0])
    end = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 8.0])
    allowed = torch.tensor([False, True, True, True, True, True])  # token 0 is the question
    score, s, e = best_span(start, end, allowed, max_answer_len=4)
    assert (s, e) == (2, 5) and score == pytest.approx(13.0)
    score, s, e = best_span(start, end, allowed, max_answer_len=2)  # 2..5 is now too long
    assert e - s < 2 and allowed[s] and allowed[e]
    assert best_span(start, end, torch.zeros(6, dtype=torch.bool), 4)[0] == float("-inf")
    no_end_at_5 = allowed.clone()
    no_end_at_5[5] = False  # token 5 is mid-word: it may not end a span
    score, s, e = best_span(start, end, allowed, 4, allowed_end=no_end_at_5)
    assert e != 5 and s <= e


def test_marginal_span_loss_is_shared_across_windows():
    allowed = torch.ones(2, 4, dtype=torch.bool)
    gold = torch.zeros(2, 4, dtype=torch.bool)
    gold[1, 2] = True
    flat = torch.zeros(2, 4)
    peaked = flat.clone()
    peaked[1, 2] = 5.0
    assert marginal_span_loss(flat, flat, allowed, gold, gold).item() == pytest.approx(
        torch.log(torch.tensor(8.0)).item()  # uniform over the 8 tokens of both windows
    )
    assert marginal_span_loss(peaked, peaked, allowed, gold, gold) < 0.1
    two = gold.clone()
    two[0, 1] = True  # a second occurrence: more gold mass, lower loss
    assert marginal_span_loss(flat, flat, allowed, two, two) < marginal_span_loss(
        flat, flat, allowed, gold, gold
    )
    nothing = torch.zeros_like(gold)
    assert marginal_span_loss(flat, flat, allowed, nothing, nothing).item() == 0.0


# --------------------------------------------------------------------------- encoders


def test_classification_windows_average_logits(base):
    path, tok = base
    adapter = ClassificationAdapter(get_task("imdb"), tok)
    ex = ClassificationExample("a", FILLER + " brilliant", 1)
    enc = adapter.encode(ex, 32, 8, None, train=True)
    assert len(enc.windows) > 2
    assert all(len(w.ids) <= 32 and w.ids[0] == tok.cls_token_id for w in enc.windows)
    assert all(w.global_positions == [0] for w in enc.windows)
    assert len(adapter.encode(ex, 32, 8, 1, train=True).windows) == 1  # truncation
    model = adapter.build_model(path).eval()
    with torch.no_grad():
        # every window is full (the last one is flush with the end), so each one alone is the
        # same computation as inside the batch
        assert {len(w.ids) for w in enc.windows} == {32}
        per_window = [
            model(
                input_ids=torch.tensor([w.ids]),
                global_attention_mask=torch.tensor([[1] + [0] * (len(w.ids) - 1)]),
            ).logits[0]
            for w in enc.windows
        ]
        mean = torch.stack(per_window).mean(0)
        assert torch.allclose(adapter.logits(model, [enc])[0], mean, atol=1e-5)
        assert adapter.predictions(model, [enc])[0] in ("neg", "pos")


def test_wikihop_prefix_repeats_and_scores_average_over_windows(base):
    path, tok = base
    adapter = WikiHopAdapter(get_task("wikihop"), tok)
    ex = ChoiceExample(
        "w1",
        "country_of_citizenship kalen dorvash",
        ("tessia", "mill"),
        (FILLER, "Kalen Dorvash was born in Tessia in 1900.", FILLER),
        0,
    )
    enc = adapter.encode(ex, 96, 16, None, train=True)
    assert len(enc.windows) > 1 and enc.n_items == 2
    first = enc.windows[0]
    prefix_len = first.context[0]
    for w in enc.windows:  # query + candidates repeat in front of every window, all global
        assert w.ids[:prefix_len] == first.ids[:prefix_len]
        assert w.global_positions == list(range(prefix_len))
        assert w.items == first.items
    cand = tok.decode([first.ids[i] for i in first.items[0]]).strip()
    assert cand == "tessia"
    model = adapter.build_model(path).eval()
    with torch.no_grad():
        (scores,) = adapter.scores(model, [enc])
        singles = []
        for w in enc.windows:
            one = type(enc)(enc.id, [w], n_items=2, label=0, item_keys=enc.item_keys)
            singles += adapter.scores(model, [one])
    assert torch.allclose(scores, torch.stack(singles).mean(0), atol=1e-4)
    assert adapter.predictions(model, [enc])[0] in ex.candidates


def test_triviaqa_golds_are_every_alias_occurrence_in_every_document(base):
    path, tok = base
    adapter = TriviaQAAdapter(get_task("triviaqa"), tok)
    ex = SpanExample(
        "q1",
        "Who designed the bridge?",
        (
            Document("Bridge", FILLER + " It was designed by Ada Lovelace. " + FILLER),
            Document("Mill", FILLER + " Lovelace visited it."),
            Document("Other", "nothing here at all"),
        ),
        ("Ada Lovelace", "Lovelace"),
    )
    enc = adapter.encode(ex, 64, 16, None, train=True)
    golds = [
        span_text(enc, w, s, e)
        for w in enc.windows
        for s, e in zip(w.gold_starts, w.gold_ends, strict=True)
    ]
    # "Ada Lovelace" and the "Lovelace" inside it in doc 0, "Lovelace" in doc 1, each counted in
    # every window that holds the whole span
    assert set(golds) == {"Ada Lovelace", "Lovelace"}
    docs_with_gold = {w.offsets[0][0] for w in enc.windows if w.gold_starts}
    assert docs_with_gold == {0, 1}
    assert not adapter.encode(ex, 64, 16, None, train=False).has_span_target
    model = adapter.build_model(path).eval()
    with torch.no_grad():
        (answer,) = adapter.predictions(model, [enc])
    assert isinstance(answer, str) and answer  # a span of some document's text
    assert any(answer in d.text for d in ex.documents)
    # answer absent from every document: nothing to train on, but still predicted
    absent = SpanExample("q2", "Who?", (Document("X", FILLER),), ("Nobody",))
    enc2 = adapter.encode(absent, 64, 16, None, train=True)
    assert not adapter.learnable(enc2) and adapter.learnable(enc)


def test_hotpot_sentences_types_and_prediction_format(base):
    path, tok = base
    adapter = HotpotQAAdapter(get_task("hotpotqa"), tok)
    context = (
        ("Cat", ("The cat sat.", " On the mat.")),
        ("Mill", ("The old mill.", " Ada Lovelace was there.", " " + FILLER)),
    )
    span_ex = HotpotExample(
        "h1", "Who was there?", context, "Ada Lovelace", (("Mill", 1),), "bridge", "hard"
    )
    yes_ex = HotpotExample("h2", "Same?", context, "yes", (("Cat", 0),), "comparison", "hard")
    enc = adapter.encode(span_ex, 64, 16, None, train=True)
    assert len(enc.windows) > 1 and enc.label == 0 and enc.n_items == 5
    assert enc.item_keys[3] == ("Mill", 1) and enc.item_labels[3] == 1.0
    assert sum(enc.item_labels) == 1.0
    golds = {
        span_text(enc, w, s, e)
        for w in enc.windows
        for s, e in zip(w.gold_starts, w.gold_ends, strict=True)
    }
    assert golds == {"Ada Lovelace"}
    # the long filler sentence is cut by windows: every window that holds part of it pools it
    assert sum(4 in w.items for w in enc.windows) > 1
    yes = adapter.encode(yes_ex, 64, 16, None, train=True)
    assert yes.label == 1 and not yes.has_span_target
    model = adapter.build_model(path).eval()
    with torch.no_grad():
        preds = dict(zip(("h1", "h2"), adapter.predictions(model, [enc, yes]), strict=True))
        assert adapter.learnable(yes) and adapter.losses(model, [yes]).isfinite().all()
    file = adapter.prediction_file(preds)
    assert set(file) == {"answer", "sp"} and set(file["answer"]) == {"h1", "h2"}
    for sp in file["sp"].values():
        assert len(sp) >= 2 and all(isinstance(t, str) and isinstance(i, int) for t, i in sp)
    get_task("hotpotqa").evaluate([span_ex, yes_ex], file)  # the official scorer accepts it


# --------------------------------------------------------------------------- one pass, many


def _several(kind: str) -> tuple[type, int, list]:
    """(adapter class, max_len, examples of different lengths and window counts)."""
    short_ctx = (("Cat", ("The cat sat.",)), ("Bridge", ("Ada Lovelace built it.", " Yes.")))
    long_ctx = (("Cat", ("The cat sat.", " On the mat.")), ("Mill", (" " + FILLER, " Ada.")))
    return {
        "imdb": (
            ClassificationAdapter,
            32,
            [
                ClassificationExample("a", FILLER + " brilliant", 1),
                ClassificationExample("b", "dreadful", 0),
                ClassificationExample("c", FILLER[:150], 1),
            ],
        ),
        "wikihop": (
            WikiHopAdapter,
            96,
            [
                ChoiceExample("w1", "born kalen", ("tessia", "mill"), (FILLER, TEXTS[2]), 0),
                ChoiceExample("w2", "built bridge", ("ada", "cat", "mill"), ("ada built",), 0),
            ],
        ),
        "triviaqa": (
            TriviaQAAdapter,
            64,
            [
                SpanExample("q1", "Who?", (Document("A", FILLER + " " + TEXTS[1]),), ("Ada",)),
                SpanExample("q2", "Where?", (Document("K", TEXTS[2]),), ("Tessia",)),
            ],
        ),
        "hotpotqa": (
            HotpotQAAdapter,
            64,
            [
                HotpotExample("h1", "Who?", long_ctx, "Ada", (("Mill", 1),), "bridge", "hard"),
                HotpotExample("h2", "Built?", short_ctx, "yes", (("Bridge", 0),), "bridge", "x"),
            ],
        ),
    }[kind]


@pytest.mark.parametrize("kind", ["imdb", "wikihop", "triviaqa", "hotpotqa"])
def test_one_forward_pass_over_several_examples_gives_what_each_gets_alone(base, kind):
    """Fine-tuning runs a step's examples in forward passes of several examples, padded to the
    longest window (finetune.batch_tokens): each must get the loss and prediction it gets
    alone, whatever its length, window count or number of candidates/sentences."""
    path, tok = base
    cls, max_len, examples = _several(kind)
    adapter = cls(get_task(kind), tok)
    encs = [adapter.encode(ex, max_len, 16, None, train=True) for ex in examples]
    assert len({len(e.windows) for e in encs}) > 1  # different window counts
    assert len({max(len(w.ids) for w in e.windows) for e in encs}) > 1  # and lengths
    assert all(adapter.learnable(e) for e in encs)
    model = adapter.build_model(path).eval()
    with torch.no_grad():
        together = adapter.losses(model, encs)
        alone = torch.cat([adapter.losses(model, [e]) for e in encs])
        assert together.shape == (len(encs),)
        assert torch.allclose(together, alone, atol=1e-5), (together, alone)
        assert adapter.predictions(model, encs) == [
            adapter.predictions(model, [e])[0] for e in encs
        ]
    # and the gradient of the summed losses is the sum of each example's (no dropout: eval)
    adapter.losses(model, encs).sum().backward()
    joint = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    for e in encs:
        adapter.losses(model, [e]).sum().backward()
    apart = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(joint, apart, strict=True))
