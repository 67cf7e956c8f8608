"""Loaders on tiny files written here in the tasks' distributed formats, with the edge cases the
real data has: several answer aliases, answers absent from the context, yes/no answers, and
malformed records (reported with file and index, counted, skipped; the load goes on)."""

import json
from pathlib import Path

import pytest

from longdoc.components.core.io import InputError
from longdoc.components.inference.evaluate import evaluate_file
from longdoc.components.tasks import (
    Document,
    get_task,
    hotpotqa,
    imdb,
    task_names,
    triviaqa,
    wikihop,
)


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_task_registry():
    for name in task_names():
        mod = get_task(name)
        assert mod.name == name and isinstance(mod.primary_metric, str)
        for fn in ("load", "load_gold", "evaluate", "load_predictions", "write_predictions"):
            assert callable(getattr(mod, fn))
    with pytest.raises(InputError, match="unknown task 'squad'"):
        get_task("squad")


# --- WikiHop ------------------------------------------------------------------------------------


def _wikihop_record(i, answer="b", candidates=("a", "b", "c")):
    return {
        "id": f"WH_dev_{i}",
        "query": "country_of_citizenship x",
        "answer": answer,
        "candidates": list(candidates),
        "supports": ["doc one", "doc two"],
        "annotations": [["follows", "single"]],
    }


def test_wikihop_loader_skips_bad_records_and_goes_on(tmp_path):
    broken = _wikihop_record(2)
    del broken["supports"]
    data = [
        _wikihop_record(0),
        _wikihop_record(1, answer="zz"),  # answer not among the candidates
        broken,
        "not an object",
        {**_wikihop_record(4), "candidates": ["a", 3]},
        _wikihop_record(5, answer="c"),
    ]
    path = _write(tmp_path / "wikihop" / "dev.json", json.dumps(data))
    res = wikihop.load(tmp_path / "wikihop", "dev")
    assert [e.id for e in res.examples] == ["WH_dev_0", "WH_dev_5"]
    ex = res.examples[0]
    assert ex.candidates == ("a", "b", "c") and ex.answer == 1
    assert ex.supports == ("doc one", "doc two")
    assert [(s.file, s.index) for s in res.skipped] == [(str(path), i) for i in (1, 2, 3, 4)]
    reasons = [s.reason for s in res.skipped]
    assert "not among the candidates" in reasons[0]
    assert "'supports'" in reasons[1]
    assert "JSON object" in reasons[2]
    assert "candidates" in reasons[3]


def test_wikihop_unparseable_file_is_one_clear_error(tmp_path):
    _write(tmp_path / "train.json", '[{"id": "x",')
    with pytest.raises(InputError, match=r"train\.json: WikiHop file is not valid JSON"):
        wikihop.load(tmp_path, "train")
    with pytest.raises(InputError, match="WikiHop dev file not found"):
        wikihop.load(tmp_path, "dev")


# --- TriviaQA -----------------------------------------------------------------------------------


def _trivia_datum(qid, value, aliases, pages, **extra):
    return {
        "Answer": {
            "Aliases": aliases,
            "MatchedWikiEntityName": value,
            "NormalizedAliases": [triviaqa.normalize_answer(a) for a in aliases],
            "NormalizedMatchedWikiEntityName": triviaqa.normalize_answer(value),
            "NormalizedValue": triviaqa.normalize_answer(value),
            "Type": "WikipediaEntity",
            "Value": value,
        },
        "EntityPages": [
            {"DocSource": "TagMe", "Filename": f, "Title": f.removesuffix(".txt")} for f in pages
        ],
        "Question": f"Question {qid}?",
        "QuestionId": qid,
        "QuestionSource": "http://www.example.org/",
        **extra,
    }


def _trivia_root(tmp_path: Path) -> Path:
    root = tmp_path / "triviaqa"
    ev = root / "evidence" / "wikipedia"
    _write(ev / "Big_Ben.txt", "Big Ben is the nickname of the bell.\n\nThe tower is tall.\n")
    _write(ev / "London.txt", "London is a city.\n")
    _write(ev / "Sea.txt", "Nothing about the answer here.\n")
    _write(root / "evidence" / "web" / "3" / "3_1.txt", "Web page naming the Thames.\n")
    wiki = [
        # several aliases; Value is repeated among them
        _trivia_datum("tq_1", "Big Ben", ["Big Ben", "Great Bell", "big_ben"], ["Big_Ben.txt"]),
        # the answer is in none of its documents: kept
        _trivia_datum("tq_2", "Neptune", ["Neptune"], ["Sea.txt", "London.txt"]),
        _trivia_datum("tq_3", "X", ["X"], ["Missing_Page.txt"]),  # evidence file missing
        _trivia_datum("tq_4", "X", ["X"], ["../../../secret.txt"]),  # escapes evidence/
        {"Question": "no id?", "Answer": {"Value": "v"}},
        _trivia_datum("tq_6", "London", ["London", "Londinium"], ["London.txt"]),
    ]
    doc = {"Data": wiki, "Domain": "Wikipedia", "Split": "dev", "Version": 1.0}
    _write(root / "qa" / "wikipedia-dev.json", json.dumps(doc))
    web_datum = _trivia_datum("tq_7", "River Thames", ["River Thames", "Thames"], ["London.txt"])
    web_datum["SearchResults"] = [
        {"Filename": "3/3_1.txt", "Title": "Thames page", "Rank": 0, "Url": "http://x.example/"}
    ]
    web = {"Data": [web_datum], "Domain": "Web", "Split": "dev", "Version": 1.0}
    _write(root / "qa" / "web-dev.json", json.dumps(web))
    return root


def test_triviaqa_wikipedia_loader(tmp_path):
    root = _trivia_root(tmp_path)
    res = triviaqa.load(root, "dev")
    assert [e.id for e in res.examples] == ["tq_1", "tq_2", "tq_6"]
    big_ben, neptune, _ = res.examples
    assert big_ben.answers == ("Big Ben", "Great Bell", "big_ben")  # Value first, no repeat
    assert big_ben.normalized == ("big ben", "great bell", "big ben")  # as NormalizedAliases
    assert big_ben.documents[0] == Document(
        "Big_Ben", "Big Ben is the nickname of the bell.\n\nThe tower is tall.\n"
    )
    assert [d.title for d in neptune.documents] == ["Sea", "London"]
    assert not any("Neptune" in d.text for d in neptune.documents)
    qa = str(root / "qa" / "wikipedia-dev.json")
    assert [(s.file, s.index) for s in res.skipped] == [(qa, 2), (qa, 3), (qa, 4)]
    assert "evidence/wikipedia/Missing_Page.txt not found" in res.skipped[0].reason
    assert "outside evidence/wikipedia/" in res.skipped[1].reason
    assert "'QuestionId'" in res.skipped[2].reason
    assert [(s.index, s.reason) for s in res.notes] == [(1, "tq_2: no answer alias in evidence")]


def test_triviaqa_limit_reads_only_the_first_records(tmp_path):
    root = _trivia_root(tmp_path)
    res = triviaqa.load(root, "dev", limit=3)  # tq_3's evidence is missing: counted, skipped
    assert [e.id for e in res.examples] == ["tq_1", "tq_2"]
    assert [s.index for s in res.skipped] == [2]


def test_triviaqa_web_domain_is_per_question_document(tmp_path):
    root = _trivia_root(tmp_path)
    res = triviaqa.load(root, "dev", domain="web")
    assert [e.id for e in res.examples] == ["tq_7--London.txt", "tq_7--3/3_1.txt"]
    assert res.examples[1].documents == (Document("Thames page", "Web page naming the Thames.\n"),)
    gold = triviaqa.load_gold(root / "qa" / "web-dev.json").examples
    assert [g.id for g in gold] == ["tq_7--London.txt", "tq_7--3/3_1.txt"]
    m = triviaqa.evaluate(gold, {"tq_7--London.txt": "the thames", "tq_7--3/3_1.txt": "Ouse"})
    assert m["exact_match"] == pytest.approx(50.0) and m["denominator"] == 2


def test_triviaqa_gold_needs_no_evidence_and_keeps_every_answered_question(tmp_path):
    root = _trivia_root(tmp_path)
    gold = triviaqa.load_gold(root)  # the root means qa/wikipedia-dev.json
    # evidence problems do not matter for scoring: tq_3, tq_4 count; the id-less record does not
    assert [g.id for g in gold.examples] == ["tq_1", "tq_2", "tq_3", "tq_4", "tq_6"]
    assert [s.index for s in gold.skipped] == [4]


def test_triviaqa_bad_file_shape(tmp_path):
    _write(tmp_path / "qa" / "wikipedia-train.json", json.dumps([1, 2]))
    with pytest.raises(InputError, match="'Data' array"):
        triviaqa.load(tmp_path, "train")
    with pytest.raises(InputError, match="domain must be one of"):
        triviaqa.load(tmp_path, "train", domain="news")


# --- HotpotQA -----------------------------------------------------------------------------------


def _hotpot(qid, answer, sp, **extra):
    return {
        "_id": qid,
        "question": f"Question {qid}?",
        "answer": answer,
        "supporting_facts": sp,
        "context": [
            ["Alpha", ["Alpha is a band.", " It formed in 1990."]],
            ["Beta", ["Beta is a band.", " It formed in Ohio."]],
        ],
        "type": "comparison",
        "level": "hard",
        **extra,
    }


def test_hotpot_loader(tmp_path):
    data = [
        _hotpot("h1", "yes", [["Alpha", 0], ["Beta", 0]]),  # yes/no answer, no span
        _hotpot("h2", "Ohio", [["Beta", 1]], type="bridge"),
        _hotpot("h3", "Texas", [["Beta", 1]]),  # answer absent from the context: kept, noted
        _hotpot("h4", "1990", [["Alpha", 5], ["Gamma", 0]]),  # facts outside context: noted
        {**_hotpot("h5", "no", []), "context": [["Alpha", "not a list"]]},  # malformed
        {**_hotpot("h6", "no", []), "supporting_facts": [["Alpha", "0"]]},  # malformed
    ]
    path = _write(tmp_path / "hotpot_dev_distractor_v1.json", json.dumps(data))
    res = hotpotqa.load(tmp_path, "dev")
    assert [e.id for e in res.examples] == ["h1", "h2", "h3", "h4"]
    h1, h2 = res.examples[:2]
    assert h1.answer == "yes" and h1.supporting_facts == (("Alpha", 0), ("Beta", 0))
    assert h1.context[1] == ("Beta", ("Beta is a band.", " It formed in Ohio."))
    assert (h2.type, h2.level) == ("bridge", "hard")
    assert [(s.file, s.index) for s in res.skipped] == [(str(path), 4), (str(path), 5)]
    notes = [(s.index, s.reason) for s in res.notes]
    assert notes[0][0] == 2 and "'Texas' not in the context" in notes[0][1]
    assert [i for i, _ in notes[1:]] == [3, 3]
    assert "['Alpha', 5]" in notes[1][1] and "['Gamma', 0]" in notes[2][1]
    # the official score compares the facts verbatim, out-of-range ones included
    preds = {"answer": {"h4": "1990"}, "sp": {"h4": [["Alpha", 5], ["Gamma", 0]]}}
    m = hotpotqa.evaluate(res.examples[3:], preds)
    assert m["joint_em"] == 1.0


def test_hotpot_train_file_name(tmp_path):
    _write(tmp_path / "hotpot_train_v1.1.json", json.dumps([_hotpot("t", "Ohio", [])]))
    assert [e.id for e in hotpotqa.load(tmp_path, "train").examples] == ["t"]


# --- IMDB ---------------------------------------------------------------------------------------


def test_imdb_loader(tmp_path):
    root = tmp_path / "aclImdb"
    _write(root / "test" / "pos" / "0_9.txt", "Great.<br /><br />Loved it.")
    _write(root / "test" / "pos" / "1_3.txt", "rating contradicts the folder")
    _write(root / "test" / "pos" / "notes.txt", "bad name")
    _write(root / "test" / "neg" / "0_2.txt", "Awful.")
    _write(root / "test" / "neg" / "1_1.txt", "   ")
    _write(root / "test" / "neg" / "2_4.txt", b"\xff\xfe\xfa bytes")
    _write(root / "test" / "neg" / "10_3.txt", "Dull.")
    _write(root / "test" / "neg" / "11_6.txt", "a 6 is in neither folder's range")
    _write(root / "test" / "pos" / "7_8.txt", "Fine.")
    res = imdb.load(root, "dev")
    # interleaved by id, so a cap on the first N keeps both classes
    assert [(e.id, e.label) for e in res.examples] == [
        ("test/neg/0", 0),
        ("test/pos/0", 1),
        ("test/pos/7", 1),
        ("test/neg/10", 0),
    ]
    assert res.examples[1].text == "Great.\n\nLoved it."
    reasons = {Path(s.file).name: s.reason for s in res.skipped}
    assert reasons["1_3.txt"] == "rating 3 contradicts the 'pos' folder"
    assert reasons["11_6.txt"] == "rating 6 contradicts the 'neg' folder"
    assert "<id>_<rating>.txt" in reasons["notes.txt"]
    assert reasons["1_1.txt"] == "empty review"
    assert "not UTF-8" in reasons["2_4.txt"]
    with pytest.raises(InputError, match="IMDB train split"):
        imdb.load(root, "train")
    assert len(imdb.load_gold(root / "test").examples) == 4


# --- evaluate_file over what the loaders read ----------------------------------------------------


def test_evaluate_file_and_prediction_round_trip(tmp_path):
    data = [_wikihop_record(i) for i in range(4)]
    gold = _write(tmp_path / "wikihop" / "dev.json", json.dumps(data))
    preds = tmp_path / "preds.json"
    wikihop.write_predictions(preds, {"WH_dev_0": "b", "WH_dev_1": "a", "WH_dev_2": "b"})
    assert wikihop.load_predictions(preds) == {"WH_dev_0": "b", "WH_dev_1": "a", "WH_dev_2": "b"}
    m = evaluate_file("wikihop", gold, preds, out=tmp_path / "m.json")
    assert m["accuracy"] == 0.5 and m["missing"] == 1 and m["gold_skipped"] == 0
    assert json.loads((tmp_path / "m.json").read_text()) == m
    assert evaluate_file("wikihop", gold.parent, preds)["accuracy"] == 0.5
    _write(preds, "\ufeff" + json.dumps({"WH_dev_0": "b"}))  # a BOM (Windows editors) is fine
    assert wikihop.load_predictions(preds) == {"WH_dev_0": "b"}
    _write(preds, json.dumps(["b", "a"]))
    with pytest.raises(InputError, match=r"preds\.json: expected a JSON object"):
        evaluate_file("wikihop", gold, preds)


def test_triviaqa_verified_file_scores_verified_questions_and_web_documents(tmp_path):
    root = _trivia_root(tmp_path)
    q1 = _trivia_datum("v1", "Thames", ["Thames"], ["London.txt"], QuestionPartOfVerifiedEval=True)
    q1["EntityPages"][0]["DocPartOfVerifiedEval"] = False
    q1["SearchResults"] = [{"Filename": "3/3_1.txt", "Title": "t", "DocPartOfVerifiedEval": True}]
    q2 = _trivia_datum("v2", "X", ["X"], ["London.txt"], QuestionPartOfVerifiedEval=False)
    doc = {"Data": [q2, q1], "Domain": "Web", "VerifiedEval": True, "Version": 1.0}
    path = _write(root / "qa" / "verified-web-dev.json", json.dumps(doc))
    gold = triviaqa.load_gold(path)
    assert [g.id for g in gold.examples] == ["v1--3/3_1.txt"]
    # positions in the file survive the selection: a broken verified record is reported as [1]
    q1["QuestionId"] = 7
    _write(path, json.dumps(doc))
    assert [(s.index, s.reason) for s in triviaqa.load_gold(path).skipped] == [
        (1, "field 'QuestionId' must be str, got int")
    ]
