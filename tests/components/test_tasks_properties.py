"""Properties of the official metrics that must hold for any input (hypothesis), beside the
hand-computed cases in test_tasks_metrics.py."""

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from longdoc.components.tasks import hotpotqa, triviaqa
from longdoc.components.tasks.official import binary_metrics

# answer-like text: words, articles, punctuation, underscores, curly quotes, odd spacing
_pieces = st.sampled_from(
    ["the", "The", "a", "An", "new", "York", "U.S.", "rock", "'n'", "_", "\u2019", "-", "  ", "é"]
)
answers = st.one_of(st.lists(_pieces, max_size=8).map(" ".join), st.text(max_size=20))
fast = settings(max_examples=100, deadline=None)


@fast
@given(answers)
def test_normalizations_are_idempotent_and_clean(s):
    for normalize in (triviaqa.normalize_answer, hotpotqa.normalize_answer):
        n = normalize(s)
        assert normalize(n) == n
        assert n == n.strip() and "  " not in n
        assert not set(n) & set(string.punctuation)
        assert not {"a", "an", "the"} & set(n.split())


@fast
@given(answers, answers)
def test_token_f1_bounds_and_symmetry(p, g):
    f = triviaqa.f1_score(p, g)
    assert 0.0 <= f <= 1.0
    assert f == triviaqa.f1_score(g, p)
    if triviaqa.exact_match_score(p, g) and triviaqa.normalize_answer(p):
        assert f == 1.0
    em, f1, prec, rec = hotpotqa.answer_scores(p, g)
    assert 0.0 <= prec <= 1.0 and 0.0 <= rec <= 1.0 and 0.0 <= f1 <= 1.0
    assert (f1, prec, rec) == (lambda x: (x[1], x[3], x[2]))(hotpotqa.answer_scores(g, p))
    if em and hotpotqa.normalize_answer(p):
        assert f1 == 1.0


facts = st.lists(st.tuples(st.sampled_from("ABC"), st.integers(0, 3)), max_size=6)


@fast
@given(facts, facts)
def test_sp_scores_are_set_scores(pred, gold):
    em, f1, prec, rec = hotpotqa.sp_scores(pred, gold)
    assert em == float(set(pred) == set(gold))
    _, f1_swapped, prec_swapped, rec_swapped = hotpotqa.sp_scores(gold, pred)
    assert (f1, prec, rec) == (f1_swapped, rec_swapped, prec_swapped)
    assert hotpotqa.sp_scores(pred + pred, gold) == (em, f1, prec, rec)  # duplicates ignored


labels = st.dictionaries(
    st.text("abcdef", min_size=1, max_size=2), st.sampled_from(["true", "false"])
)


@fast
@given(labels, labels)
def test_binary_counts_reconcile(gold, preds):
    m = binary_metrics(gold, preds, "true")
    counted = m["true_positives"] + m["false_positives"] + m["true_negatives"]
    assert counted + m["false_negatives"] + m["missing"] == m["n"] == len(gold)
    assert m["extra"] == len(preds.keys() - gold.keys())
    assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["f1"] <= 1.0
