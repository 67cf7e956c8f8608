"""Hyperpartisan XML: nested markup kept as text, defusedxml refusing entity tricks, broken
records skipped one by one, the dev split, and the prediction formats."""

import json
from pathlib import Path

import pytest

from longdoc.components.core.io import InputError
from longdoc.components.tasks import hyperpartisan as hp

HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'


def _article(aid: str, body: str, title: str = "A title") -> str:
    return f'<article id="{aid}" title="{title}" published-at="2017-01-02">{body}</article>'


def _truth(labels: dict[str, bool]) -> str:
    rows = [
        f'<article id="{a}" hyperpartisan="{str(v).lower()}" labeled-by="article" '
        f'url="https://example.org/{a}"/>'
        for a, v in labels.items()
    ]
    return HEAD + "<articles>\n" + "\n".join(rows) + "\n</articles>\n"


def _write_part(root: Path, part: str, articles: list[str], labels: dict[str, bool]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"articles-{part}-byarticle-20181122.xml"
    path.write_text(HEAD + "<articles>\n" + "\n".join(articles) + "\n</articles>\n")
    (root / f"ground-truth-{part}-byarticle-20181122.xml").write_text(_truth(labels))
    return path


def _simple(n: int) -> tuple[list[str], dict[str, bool]]:
    arts = [_article(f"{i:07d}", f"<p>Paragraph of article {i}.</p>") for i in range(n)]
    return arts, {f"{i:07d}": i % 2 == 0 for i in range(n)}


def test_nested_markup_inside_p_is_kept_as_text(tmp_path):
    body = (
        '<p>Read <a href="https://x.example/?a=1&amp;b=2">the <i>full</i> report</a> now.</p>'
        "<p>Tom &amp; Jerry said &quot;hi&quot;<q>quoted</q>tail</p>"
        "<p/>"
    )
    arts = [_article("N1", body, title="Tom &amp; Jerry")] + _simple(3)[0]
    _write_part(tmp_path, "training", arts, {"N1": True, "N1x": False} | _simple(3)[1])
    res = hp.load(tmp_path, "train")
    ex = next(e for e in res.examples if e.id == "N1")
    assert ex.text == (
        'Tom & Jerry\n\nRead the full report now.\n\nTom & Jerry said "hi"quotedtail'
    )
    assert ex.label == 1
    assert any("N1x: label without article" in s.reason for s in res.notes)


def test_malformed_record_is_skipped_with_index_and_the_rest_kept(tmp_path):
    arts, labels = _simple(6)
    arts[2] = _article("0000002", "<p>unclosed <b>bold</p>")  # breaks the whole document
    arts[4] = '<article title="no id"><p>text</p></article>'
    arts[1] = _article("0000001", "<p>one</p><p/><p>two</p>")  # "/>" inside a record
    path = _write_part(tmp_path, "training", arts, labels)
    train, dev = hp.load(tmp_path, "train"), hp.load(tmp_path, "dev")
    # 6 records: the first 4 train, the last 2 dev; records 2 and 4 are lost
    assert [e.id for e in train.examples] == ["0000000", "0000001", "0000003"]
    assert [e.id for e in dev.examples] == ["0000005"]
    assert train.examples[1].text == "A title\n\none\n\ntwo"
    skipped = {(s.file, s.index): s.reason for s in train.skipped}
    assert set(skipped) == {(str(path), 2), (str(path), 4)}
    assert skipped[(str(path), 2)].startswith("malformed XML")
    assert skipped[(str(path), 4)] == "article without an id"
    assert any("0000004: label without article" in s.reason for s in train.notes)


def test_truncated_file_keeps_the_complete_records(tmp_path, monkeypatch):
    arts, labels = _simple(4)
    path = _write_part(tmp_path, "training", arts, labels)
    text = path.read_text()
    path.write_text(text[: text.rindex("article 3.")])  # a download cut in the last record
    monkeypatch.setattr(hp, "DEV_FRACTION", 0.0)  # every record in train
    res = hp.load(tmp_path, "train")
    assert [e.id for e in res.examples] == ["0000000", "0000001", "0000002"]
    assert [(s.index, s.reason.split(":")[0]) for s in res.skipped] == [(3, "malformed XML")]


def test_missing_label_and_duplicates_and_bad_label(tmp_path):
    arts, labels = _simple(4)
    arts.append(_article("0000001", "<p>again</p>"))
    del labels["0000003"]
    truth = _truth(labels).replace(
        "</articles>", '<article id="0000009" hyperpartisan="maybe"/>\n</articles>'
    )
    _write_part(tmp_path, "training", arts, labels)
    (tmp_path / "ground-truth-training-byarticle-20181122.xml").write_text(truth)
    res = hp.load(tmp_path, "train")
    reasons = sorted(s.reason for s in res.skipped)
    assert reasons == [
        "article 0000001: duplicate id",
        "article 0000003: no label in ground-truth-training-byarticle-20181122.xml",
        "article 0000009: hyperpartisan='maybe'",
    ]


@pytest.mark.parametrize(
    ("doctype", "ref"),
    [  # billion laughs (entity expansion), and an external entity that would read a local file
        ('<!DOCTYPE articles [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>', "&b;"),
        ('<!DOCTYPE articles [<!ENTITY x SYSTEM "file:///etc/passwd">]>', "&x;"),
    ],
)
def test_entity_tricks_are_refused(tmp_path, doctype, ref):
    path = tmp_path / "articles-training-byarticle.xml"
    path.write_text(
        HEAD + doctype + "\n<articles>" + _article("1", f"<p>{ref}</p>") + "</articles>"
    )
    (tmp_path / "ground-truth-training-byarticle.xml").write_text(_truth({"1": True}))
    with pytest.raises(InputError, match=r"articles-training-byarticle\.xml: refused by the XML"):
        hp.load(tmp_path, "train")


def test_official_test_part_is_dev_and_training_part_all_trains(tmp_path):
    arts, labels = _simple(6)
    _write_part(tmp_path, "training", arts, labels)
    test_arts = [_article("T1", "<p>test one</p>"), _article("T2", "<p>test two</p>")]
    _write_part(tmp_path, "test", test_arts, {"T1": True, "T2": False})
    assert len(hp.load(tmp_path, "train").examples) == 6
    dev = hp.load(tmp_path, "dev")
    assert [(e.id, e.label) for e in dev.examples] == [("T1", 1), ("T2", 0)]


def test_missing_ground_truth_file_and_root(tmp_path):
    (tmp_path / "articles-training-byarticle.xml").write_text(HEAD + "<articles/>")
    with pytest.raises(InputError, match="no matching ground-truth file"):
        hp.load(tmp_path, "train")
    with pytest.raises(InputError, match="Hyperpartisan root not found"):
        hp.load(tmp_path / "nope", "train")


def test_predictions_json_bool_and_semeval_run_format(tmp_path):
    j = tmp_path / "p.json"
    j.write_text(json.dumps({"1": True, "2": "false"}))
    assert hp.load_predictions(j) == {"1": "true", "2": "false"}
    run = tmp_path / "run.txt"
    run.write_text("1 true 0.9\n2 false\n\n")
    assert hp.load_predictions(run) == {"1": "true", "2": "false"}
    run.write_text("1 yes\n")
    with pytest.raises(InputError, match=r"run\.txt:1: expected '<article id> <true\|false>"):
        hp.load_predictions(run)
    run.write_text("1 true\n1 false\n")
    with pytest.raises(InputError, match="second prediction for article 1"):
        hp.load_predictions(run)
    with pytest.raises(InputError, match="predictions file is not a file"):
        hp.load_predictions(tmp_path)
    out = tmp_path / "w.json"
    hp.write_predictions(out, {"1": False})
    assert json.loads(out.read_text()) == {"1": "false"}


def test_gold_from_ground_truth_file(tmp_path):
    arts, labels = _simple(3)
    _write_part(tmp_path, "training", arts, labels)
    gold = hp.load_gold(tmp_path / "ground-truth-training-byarticle-20181122.xml").examples
    assert [(g.id, g.label) for g in gold] == [("0000000", 1), ("0000001", 0), ("0000002", 1)]
    m = hp.evaluate(gold, {"0000000": "true", "0000001": "true", "0000002": "true"})
    assert (m["precision"], m["recall"], m["accuracy"]) == (pytest.approx(2 / 3), 1.0, 2 / 3)


def test_several_training_files_split_over_their_concatenation(tmp_path):
    first = [_article(f"A{i}", f"<p>first file {i}</p>") for i in range(4)]
    second = [_article(f"B{i}", f"<p>second file {i}</p>") for i in range(2)]
    for suffix, arts in (("-1", first), ("-2", second)):
        ids = [a.split('"')[1] for a in arts]
        (tmp_path / f"articles-training-byarticle{suffix}.xml").write_text(
            HEAD + "<articles>" + "".join(arts) + "</articles>"
        )
        (tmp_path / f"ground-truth-training-byarticle{suffix}.xml").write_text(
            _truth(dict.fromkeys(ids, True))
        )
    # 6 records in name order A0..A3, B0, B1: the last third (B0, B1) is dev
    assert [e.id for e in hp.load(tmp_path, "train").examples] == ["A0", "A1", "A2", "A3"]
    assert [e.id for e in hp.load(tmp_path, "dev").examples] == ["B0", "B1"]
