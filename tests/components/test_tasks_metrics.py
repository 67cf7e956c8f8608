"""Official metrics on hand-computed cases (the expected numbers are worked out in the comments,
not produced by running the official scripts)."""

import pytest

from longdoc.components.core.io import InputError
from longdoc.components.tasks import (
    ChoiceExample,
    ClassificationExample,
    HotpotExample,
    SpanExample,
    hotpotqa,
    hyperpartisan,
    imdb,
    triviaqa,
    wikihop,
)
from longdoc.components.tasks.official import binary_metrics

approx = pytest.approx

# --- TriviaQA -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("The_Beatles!", "beatles"),  # underscore -> space, punctuation, article
        ("Rock \u2018n\u2019 Roll", "rock n roll"),  # curly quotes become spaces
        ("U.S.", "u s"),  # punctuation becomes a space (HotpotQA deletes it: "us")
        ("a.b.c.", "b c"),  # "a" left alone by the punctuation step is then an article
        ("  An   Apple `Pie` ", "apple pie"),
        ("Theatre", "theatre"),  # "the" only as a whole word
    ],
)
def test_triviaqa_normalize(raw, normal):
    assert triviaqa.normalize_answer(raw) == normal


def _tq(qid, aliases, value="v", human=()):
    return SpanExample(qid, "", (), (value, *aliases), tuple(aliases) + tuple(human))


def test_triviaqa_em_f1_max_over_aliases_and_missing():
    gold = [
        _tq("q1", ["john smith", "smith"]),  # "Mr. Smith" -> "mr smith": F1 1/2 and 2/3 -> 2/3
        _tq("q2", ["thames river", "river thames", "thames"]),  # exact after normalisation
        _tq("q3", ["paris"]),  # no prediction: 0, still in the denominator
        _tq("q4", ["paris"]),  # wrong: 0
    ]
    preds = {"q1": "Mr. Smith", "q2": "the River Thames", "q4": "nothing", "zz": "extra"}
    m = triviaqa.evaluate(gold, preds)
    assert m["exact_match"] == approx(100 * 1 / 4)
    assert m["f1"] == approx(100 * (2 / 3 + 1) / 4)
    assert (m["common"], m["denominator"], m["pred_len"], m["gold_len"], m["missing"]) == (
        3,
        4,
        4,
        4,
        1,
    )


def test_triviaqa_scores_normalized_aliases_not_value_and_adds_human_answers():
    # the official ground truths are NormalizedAliases + HumanAnswers; Value is not among them
    gold = [
        SpanExample("q1", "", (), ("Big Ben", "Elizabeth Tower"), ("elizabeth tower",)),
        _tq("q2", ["london"], human=["the old smoke"]),
    ]
    m = triviaqa.evaluate(gold, {"q1": "Big Ben", "q2": "Old Smoke"})
    assert m["exact_match"] == approx(50.0)
    # q1: "big ben" vs "elizabeth tower" share nothing; q2 exact on the human answer
    assert m["f1"] == approx(50.0)


def test_triviaqa_f1_counts_repeated_tokens_once_each():
    # pred "new new york" vs "new york": common = min counts = {new: 1, york: 1} = 2
    # P = 2/3, R = 2/2, F1 = 2 * 2/3 * 1 / (5/3) = 0.8
    assert triviaqa.f1_score("new new york", "New York") == approx(0.8)
    assert triviaqa.f1_score("the", "a") == 0.0  # both empty after normalisation


def test_triviaqa_rejects_non_string_predictions():
    with pytest.raises(InputError, match="'q1' must be a string"):
        triviaqa.evaluate([_tq("q1", ["x"])], {"q1": ["x"]})


# --- HotpotQA -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("The U.S.A.", "usa"),  # punctuation deleted, not spaced
        ("Rock 'n' Roll", "rock n roll"),
        ("An Eiffel  Tower", "eiffel tower"),
        ("yes", "yes"),
    ],
)
def test_hotpot_normalize(raw, normal):
    assert hotpotqa.normalize_answer(raw) == normal


def _hp(qid, answer, sp):
    return HotpotExample(qid, "", (), answer, tuple(sp), "bridge", "hard")


def test_hotpot_answer_sp_and_joint_by_hand():
    gold = [
        _hp("q1", "yes", [("A", 0), ("B", 1)]),
        _hp("q2", "the Eiffel Tower", [("X", 0), ("Y", 2)]),
        _hp("q3", "yes", [("A", 0)]),
        _hp("q4", "Paris", [("T", 0)]),
        _hp("q5", "yes", [("A", 1)]),
    ]
    preds = {
        "answer": {
            "q1": "no",  # yes/no mismatch: em 0, f1/p/r 0
            "q2": "Eiffel Tower in Paris",  # 2 common of 4 / 2: p .5 r 1 f1 2/3
            "q3": "Yes",  # exact: 1, 1, 1, 1
            "q5": "yes sir",  # gold is "yes" and they differ: 0 although tokens overlap
        },  # q4: missing answer
        "sp": {
            "q1": [["A", 0], ["B", 1]],  # exact: 1, 1, 1, 1
            "q2": [["X", 0], ["X", 0]],  # {(X,0)}: tp 1 fp 0 fn 1: p 1 r .5 f1 2/3 em 0
            "q4": [],  # nothing predicted: p 0 r 0 f1 0 em 0
            "q5": [["A", 1]],  # exact
        },  # q3: missing sp
    }
    m = hotpotqa.evaluate(gold, preds)
    n = 5
    assert m["em"] == approx(1 / n)
    assert m["f1"] == approx((2 / 3 + 1) / n)
    assert m["prec"] == approx((0.5 + 1) / n)
    assert m["recall"] == approx((1 + 1) / n)
    assert m["sp_em"] == approx((1 + 1) / n)
    assert m["sp_f1"] == approx((1 + 2 / 3 + 1) / n)
    assert m["sp_prec"] == approx((1 + 1 + 1) / n)
    assert m["sp_recall"] == approx((1 + 0.5 + 1) / n)
    # joint only where both parts were predicted (q1, q2, q5); q2: joint p = .5 * 1 = .5,
    # joint r = 1 * .5 = .5, joint f1 = .5 (not the product of the two F1s, 4/9)
    assert m["joint_em"] == 0.0
    assert m["joint_f1"] == approx(0.5 / n)
    assert m["joint_prec"] == approx(0.5 / n)
    assert m["joint_recall"] == approx(0.5 / n)
    assert (m["n"], m["missing_answer"], m["missing_sp"]) == (5, 1, 1)


def test_hotpot_accepts_tuples_from_python():
    gold = [_hp("q1", "no", [("A", 0)])]
    m = hotpotqa.evaluate(gold, {"answer": {"q1": "no"}, "sp": {"q1": (("A", 0),)}})
    assert m["joint_em"] == 1.0


def test_hotpot_joint_em_is_product():
    gold = [_hp("q1", "no", [("A", 0)]), _hp("q2", "Ohio", [("A", 0)])]
    preds = {"answer": {"q1": "No.", "q2": "ohio"}, "sp": {"q1": [["A", 0]], "q2": [["A", 1]]}}
    m = hotpotqa.evaluate(gold, preds)
    assert m["em"] == 1.0 and m["sp_em"] == 0.5 and m["joint_em"] == 0.5


def test_hotpot_noanswer_is_special():
    assert hotpotqa.answer_scores("noanswer", "no answer here")[1:] == (0.0, 0.0, 0.0)
    assert hotpotqa.answer_scores("no", "no") == (1.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"answer": {}},  # no "sp"
        {"answer": {"q": 1}, "sp": {}},
        {"answer": {}, "sp": {"q": [["A", "0"]]}},  # sentence index as a string
        {"answer": {}, "sp": {"q": [["A", 0, 1]]}},
        {"answer": {}, "sp": {"q": [["A", True]]}},
    ],
)
def test_hotpot_prediction_format_is_checked(bad):
    with pytest.raises(InputError):
        hotpotqa.evaluate([_hp("q", "x", [])], bad)


# --- WikiHop, IMDB, Hyperpartisan ----------------------------------------------------------------


def test_wikihop_accuracy_exact_candidate_and_missing():
    gold = [
        ChoiceExample("a", "q", ("x", "y"), (), 0),
        ChoiceExample("b", "q", ("x", "y"), (), 1),
        ChoiceExample("c", "q", ("x", "y"), (), 1),
        ChoiceExample("d", "q", ("x", "y"), (), 0),
    ]
    m = wikihop.evaluate(gold, {"a": "x", "b": "Y", "c": "y", "other": "x"})
    # a right, b wrong case, c right, d missing: 2 / 4
    assert m == {"accuracy": 0.5, "correct": 2, "n": 4, "missing": 1, "extra": 1}


def test_imdb_accuracy_and_label_check():
    gold = [ClassificationExample(f"test/pos/{i}", "t", 1) for i in range(3)] + [
        ClassificationExample("test/neg/0", "t", 0)
    ]
    preds = {"test/pos/0": "pos", "test/pos/1": "neg", "test/neg/0": "neg"}
    assert imdb.evaluate(gold, preds)["accuracy"] == approx(2 / 4)
    with pytest.raises(InputError, match="expected one of 'neg', 'pos'"):
        imdb.evaluate(gold, {"test/pos/0": "positive"})


def test_hyperpartisan_precision_recall_f1_positive_class_true():
    t, f = 1, 0
    gold = [
        ClassificationExample(k, "t", y) for k, y in zip("abcdef", (t, t, f, f, t, t), strict=True)
    ]
    preds = {"a": "true", "b": False, "c": "false", "d": "false", "f": True, "z": "true"}
    m = hyperpartisan.evaluate(gold, preds)
    # e has no prediction: left out of every count, as the SemEval evaluator does
    # tp a, f; fn b; tn c, d; fp none
    assert (m["true_positives"], m["false_negatives"], m["false_positives"]) == (2, 1, 0)
    assert m["true_negatives"] == 2
    assert m["accuracy"] == approx(4 / 5)
    assert m["precision"] == approx(1.0)
    assert m["recall"] == approx(2 / 3)
    assert m["f1"] == approx(2 * 1 * (2 / 3) / (1 + 2 / 3))  # = 0.8
    assert (m["n"], m["missing"], m["extra"]) == (6, 1, 1)


def test_binary_metrics_zero_denominators():
    m = binary_metrics({"a": "true", "b": "false"}, {"a": "false", "b": "false"}, "true")
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == (0.0, 0.0, 0.0, 0.5)
