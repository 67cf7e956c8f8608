"""The embedded sample: every file parses in its official format, evidence sits where the demo
needs it, and the same seed writes the same bytes."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import string
import tarfile
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import defusedxml.ElementTree as ET
import pytest

from longdoc.components.core.config import SampleParams
from longdoc.components.core.io import InputError
from longdoc.components.synthetic import archives as SARCH
from longdoc.components.synthetic import corpus as SCORPUS
from longdoc.components.synthetic import generator as G
from longdoc.components.synthetic import imdb_sample as SIMDB
from longdoc.components.synthetic import text as T
from longdoc.components.synthetic import triviaqa_sample as STRIVIA
from longdoc.components.synthetic import wikihop_sample as SWIKIHOP

SMALL = dict(
    corpus_docs=12, min_words=200, max_words=400, imdb_train=20, imdb_test=10, task_train=4,
    task_dev=2, score_docs=4,
)  # fmt: skip
PUNCT = string.punctuation + "\u2018\u2019"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, SampleParams]:
    params = SampleParams(out=tmp_path_factory.mktemp("s") / "sample", **SMALL)
    return params.out, G.write_sample(params), params


@pytest.fixture(scope="module")
def lex() -> T.Lexicon:
    return T.build_lexicon(0)


def words(text: str) -> list[str]:
    return [w.strip(PUNCT).lower() for w in text.replace("<br />", " ").split()]


class _Paragraphs(HTMLParser):
    """Text of <p> elements only; notes whether <script>/<style> blocks were present."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paras: list[str] = []
        self.tags: set[str] = set()
        self._in_p = False

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "p":
            self._in_p = True
            self.paras.append("")

    def handle_endtag(self, tag):
        if tag == "p":
            self._in_p = False

    def handle_data(self, data):
        if self._in_p:
            self.paras[-1] += data


def html_paragraphs(page: str) -> _Paragraphs:
    p = _Paragraphs()
    p.feed(page)
    return p


# --- layout, manifest, determinism ---------------------------------------------------------------


def test_layout(sample):
    out, summary, _ = sample
    expected = [
        "corpus/docs.jsonl.gz", "corpus/web.tar.gz", "corpus/bundle.zip",
        "qangaroo_v1.1/wikihop/train.json", "qangaroo_v1.1/wikihop/dev.json",
        "triviaqa/qa/wikipedia-train.json", "triviaqa/qa/wikipedia-dev.json",
        "hotpotqa/hotpot_train_v1.1.json", "hotpotqa/hotpot_dev_distractor_v1.json",
        "hyperpartisan/articles-training-byarticle.xml",
        "hyperpartisan/ground-truth-training-byarticle.xml",
        "score/inbox.tar.gz", "score/inbox_labels.json", "manifest.json",
    ]  # fmt: skip
    for rel in expected:
        assert (out / rel).is_file(), rel
    assert list((out / "corpus" / "txt").glob("*.txt"))
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            assert list((out / "aclImdb" / split / label).glob("*.txt"))
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == summary["counts"]
    assert (
        manifest["corpus_duplicates_planted"] == summary["counts"]["corpus"]["duplicates_planted"]
    )
    assert "written_at" in manifest
    assert set(manifest["cues"]) == {
        "imdb_pos",
        "imdb_neg",
        "hyperpartisan_true",
        "hyperpartisan_false",
    }


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"  # manifest.json carries a timestamp
    }


def test_deterministic(tmp_path):
    a = G.write_sample(SampleParams(out=tmp_path / "a", **SMALL))
    b = G.write_sample(SampleParams(out=tmp_path / "b", **SMALL))
    ha, hb = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert len(ha) > 50 and ha == hb
    assert a["sha256"] == b["sha256"]
    G.write_sample(SampleParams(out=tmp_path / "c", seed=1, **SMALL))
    hc = _hashes(tmp_path / "c")
    assert hc.get("corpus/web.tar.gz") != ha["corpus/web.tar.gz"]


def test_rerun_replaces_previous_sample_and_refuses_foreign_dirs(tmp_path):
    out = tmp_path / "s"
    G.write_sample(SampleParams(out=out, **SMALL))
    G.write_sample(SampleParams(out=out, **{**SMALL, "imdb_train": 4, "task_train": 2}))
    assert len(list((out / "aclImdb" / "train").rglob("*.txt"))) == 4  # no stale reviews
    assert len(json.loads((out / "qangaroo_v1.1/wikihop/train.json").read_text())) == 2
    foreign = tmp_path / "real"
    (foreign / "aclImdb").mkdir(parents=True)
    (foreign / "aclImdb" / "README").write_text("real data")
    with pytest.raises(InputError, match="refusing"):
        G.write_sample(SampleParams(out=foreign, **SMALL))
    assert (foreign / "aclImdb" / "README").read_text() == "real data"


# --- lexicon and templates ------------------------------------------------------------------------


def test_cue_words_are_exclusive(lex):
    cues = lex.cue_words()
    assert len(cues) == 4 * T.CUES_PER_CLASS
    for cls in (lex.pos_cues, lex.neg_cues, lex.partisan_cues, lex.measured_cues):
        assert len(set(cls)) == T.CUES_PER_CLASS
    others = set(lex.nouns + lex.adjectives + lex.verbs + lex.adverbs)
    others |= {
        w.lower()
        for pool in (
            lex.first_names,
            lex.surnames,
            lex.cities,
            lex.villages,
            lex.regions,
            lex.countries,
            lex.rivers,
        )
        for w in pool
    }
    others |= {w.lower() for s in lex.orgs + lex.labels + lex.bands for w in s.split()}
    assert not cues & others
    # filler text never carries a cue word nor a relation phrase that answers a QA example
    for tpl in T.FILLER_TEMPLATES:
        assert not set(words(T._SLOT.sub(" ", tpl))) & cues, tpl
        for phrase in T.KEY_PHRASES:
            assert phrase not in tpl, (phrase, tpl)


def test_lexicon_depends_on_seed_only():
    assert T.build_lexicon(3) == T.build_lexicon(3)
    assert T.build_lexicon(3).nouns != T.build_lexicon(4).nouns


def test_triviaqa_normalize():
    assert STRIVIA.triviaqa_normalize("The Tessik River") == "tessik river"
    assert STRIVIA.triviaqa_normalize("Velm & Tork") == "velm tork"
    assert STRIVIA.triviaqa_normalize("  An_apple's  core ") == "apple s core"


# --- corpus -------------------------------------------------------------------------------------


def test_corpus_containers(sample):
    out, summary, params = sample
    texts: list[str] = []
    for p in sorted((out / "corpus" / "txt").glob("*.txt")):
        texts.append(p.read_text(encoding="utf-8"))
    with gzip.open(out / "corpus" / "docs.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            assert set(rec) == {"id", "title", "text"}
            assert all(isinstance(v, str) and v for v in rec.values())
            texts.append(rec["text"])
    html_pages = []
    with tarfile.open(out / "corpus" / "web.tar.gz") as tf:
        names = tf.getnames()
        assert names == sorted(names)
        for m in tf.getmembers():
            assert m.isfile() and m.mtime == SARCH.ARCHIVE_MTIME
            data = tf.extractfile(m).read().decode("utf-8")
            if m.name.endswith(".html"):
                html_pages.append(data)
            else:
                assert m.name.endswith(".txt")
                texts.append(data)
    with zipfile.ZipFile(out / "corpus" / "bundle.zip") as zf:
        names = zf.namelist()
        assert all(n.endswith(".txt") for n in names)
        assert any(n.count("/") >= 2 for n in names), "no member in a subfolder"
        texts += [zf.read(n).decode("utf-8") for n in names]
    assert html_pages, "no html page in web.tar.gz"
    for page in html_pages:
        parsed = html_paragraphs(page)
        assert {"title", "script", "style", "p"} <= parsed.tags
        assert "script" not in " ".join(parsed.paras)
        texts.append("\n\n".join(parsed.paras))
    assert len(texts) == params.corpus_docs == summary["counts"]["corpus"]["documents"]
    for t in texts:
        assert params.min_words <= len(t.split()) <= params.max_words
        assert "\n\n" in t or len(t.split()) < 60  # paragraphs separated by blank lines
    dupes = len(texts) - len(set(texts))
    assert dupes == summary["corpus_duplicates_planted"] >= 1


def test_corpus_word_range_edge(tmp_path):
    params = SampleParams(out=tmp_path / "s", **{**SMALL, "min_words": 50, "max_words": 50})
    G.write_sample(params)
    for p in (tmp_path / "s" / "corpus" / "txt").glob("*.txt"):
        assert len(p.read_text().split()) == 50


def test_corpus_uses_cue_words(tmp_path, lex):
    """The tokenizer must see every cue word: the default-size corpus uses all of them."""
    rng = __import__("random").Random(0)
    g = T.TextGen(lex, rng)
    seen: set[str] = set()
    for _ in range(80):
        seen |= set(words(SCORPUS._corpus_doc(g, 1500, 1600)[1]))
    assert lex.cue_words() <= seen


# --- tasks --------------------------------------------------------------------------------------


def test_wikihop(sample):
    out, _, params = sample
    for split, n in (("train", params.task_train), ("dev", params.task_dev)):
        data = json.loads((out / "qangaroo_v1.1" / "wikihop" / f"{split}.json").read_text())
        assert isinstance(data, list) and len(data) == n
        for ex in data:
            assert set(ex) == {"id", "query", "answer", "candidates", "supports"}
            relation, subject = ex["query"].split(" ", 1)
            assert relation in SWIKIHOP.WIKIHOP_RELATIONS and subject == subject.lower()
            assert ex["answer"] in ex["candidates"]
            assert all(c == c.lower() for c in ex["candidates"])
            assert len(set(ex["candidates"])) == len(ex["candidates"]) >= 4
            assert all(isinstance(s, str) and s for s in ex["supports"])
            joined = " ".join(ex["supports"]).lower()
            assert subject in joined and ex["answer"] in joined
            for c in ex["candidates"]:
                assert c in joined  # every candidate is mentioned: presence gives nothing away


def test_wikihop_evidence_is_deep(sample):
    out, _, _ = sample
    data = json.loads((out / "qangaroo_v1.1" / "wikihop" / "train.json").read_text())
    deep = 0
    for ex in data:
        subject = ex["query"].split(" ", 1)[1]
        first = next(i for i, s in enumerate(ex["supports"]) if subject in s.lower())
        deep += sum(len(s.split()) for s in ex["supports"][:first]) >= T.LATE_MIN_WORD
    assert deep >= len(data) - 1


def test_triviaqa(sample):
    out, _, params = sample
    root = out / "triviaqa"
    for split, n in (("train", params.task_train), ("dev", params.task_dev)):
        doc = json.loads((root / "qa" / f"wikipedia-{split}.json").read_text())
        assert doc["Domain"] == "Wikipedia" and doc["Version"] == 1.0
        assert len(doc["Data"]) == n
        for d in doc["Data"]:
            assert {"Answer", "EntityPages", "Question", "QuestionId", "QuestionSource"} <= set(d)
            a = d["Answer"]
            assert a["Type"] == "WikipediaEntity"
            assert a["Value"] in a["Aliases"]
            assert a["NormalizedValue"] == STRIVIA.triviaqa_normalize(a["Value"])
            assert a["NormalizedAliases"] == [STRIVIA.triviaqa_normalize(x) for x in a["Aliases"]]
            assert d["EntityPages"]
            for page in d["EntityPages"]:
                assert page["DocSource"] == "TagMe"
                assert (root / "evidence" / "wikipedia" / page["Filename"]).is_file()
                assert page["Filename"] == page["Title"].replace(" ", "_") + ".txt"
            main = (root / "evidence" / "wikipedia" / d["EntityPages"][0]["Filename"]).read_text()
            assert a["Value"] in main
            assert d["EntityPages"][0]["Title"] in d["Question"]


def test_triviaqa_answer_is_deep(sample):
    out, _, _ = sample
    doc = json.loads((out / "triviaqa" / "qa" / "wikipedia-train.json").read_text())
    deep = 0
    for d in doc["Data"]:
        text = (out / "triviaqa/evidence/wikipedia" / d["EntityPages"][0]["Filename"]).read_text()
        deep += len(text[: text.index(d["Answer"]["Value"])].split()) >= T.LATE_MIN_WORD
    assert deep >= len(doc["Data"]) - 1


def test_hotpotqa(sample):
    out, _, params = sample
    files = (
        ("hotpot_train_v1.1.json", params.task_train),
        ("hotpot_dev_distractor_v1.json", params.task_dev),
    )
    for fname, n in files:
        data = json.loads((out / "hotpotqa" / fname).read_text())
        assert len(data) == n
        for ex in data:
            assert set(ex) == {
                "_id",
                "question",
                "answer",
                "supporting_facts",
                "context",
                "type",
                "level",
            }
            assert re.fullmatch(r"[0-9a-f]{24}", ex["_id"])
            assert ex["type"] in ("bridge", "comparison")
            assert ex["level"] in ("easy", "medium", "hard")
            assert len(ex["context"]) == 10
            paras = {title: sents for title, sents in ex["context"]}
            assert len(paras) == 10, "titles must be unique"
            for sents in paras.values():
                assert sents and not sents[0].startswith(" ")
                assert all(s.startswith(" ") for s in sents[1:])  # the real data's spacing
            for title, sid in ex["supporting_facts"]:
                assert title in paras and 0 <= sid < len(paras[title])
            gold = {t for t, _ in ex["supporting_facts"]}
            assert len(gold) == 2
            if ex["answer"] in ("yes", "no"):
                assert ex["type"] == "comparison"
            else:
                facts = "".join(paras[t][i] for t, i in ex["supporting_facts"])
                assert ex["answer"] in facts
    dev = json.loads((out / "hotpotqa" / "hotpot_dev_distractor_v1.json").read_text())
    assert all(ex["level"] == "hard" for ex in dev)


def test_hotpotqa_gold_is_late(tmp_path):
    params = SampleParams(out=tmp_path / "s", **{**SMALL, "task_train": 20})
    G.write_sample(params)
    data = json.loads((tmp_path / "s" / "hotpotqa" / "hotpot_train_v1.1.json").read_text())
    deep = 0
    for ex in data:
        gold = {t for t, _ in ex["supporting_facts"]}
        first = next(i for i, (t, _) in enumerate(ex["context"]) if t in gold)
        before = sum(len("".join(s).split()) for _, s in ex["context"][:first])
        deep += before >= T.LATE_MIN_WORD
    assert deep >= 0.8 * len(data)
    assert any(ex["answer"] in ("yes", "no") for ex in data)


def _imdb_reviews(out: Path):
    for p in sorted((out / "aclImdb").glob("*/*/*.txt")):
        yield p, p.parent.parent.name, p.parent.name, p.read_text(encoding="utf-8")


def test_imdb_files(sample):
    out, _, params = sample
    counts: dict[tuple[str, str], int] = {}
    for p, split, label, text in _imdb_reviews(out):
        m = re.fullmatch(r"(\d+)_(\d+)\.txt", p.name)
        assert m, p.name
        rating = int(m.group(2))
        assert (7 <= rating <= 10) if label == "pos" else (1 <= rating <= 4), p
        assert "\n" not in text and "<br /><br />" in text
        assert T.REVIEW_WORDS[0] - 60 <= len(words(text)) <= T.REVIEW_WORDS[1] + 60
        counts[split, label] = counts.get((split, label), 0) + 1
    assert counts[("train", "pos")] + counts[("train", "neg")] == params.imdb_train
    assert counts[("test", "pos")] + counts[("test", "neg")] == params.imdb_test
    assert abs(counts[("train", "pos")] - counts[("train", "neg")]) <= 1
    for split in ("train", "test"):  # ids per folder run 0..k-1 as in aclImdb
        for label in ("pos", "neg"):
            ids = sorted(
                int(p.name.split("_")[0]) for p in (out / "aclImdb" / split / label).glob("*.txt")
            )
            assert ids == list(range(len(ids)))


def test_imdb_verdict_is_deep_and_the_only_signal(sample, lex):
    """Full-length reviews (1,200-2,000 words): cue words sit in one short verdict block, of the
    review's class only; in most reviews it starts beyond word 1,024, and there the first 512
    words hold no cue word at all."""
    out, _, _ = sample
    pos, neg = set(lex.pos_cues), set(lex.neg_cues)
    late = n = 0
    for p, _, label, text in _imdb_reviews(out):
        w = words(text)
        hits = [i for i, x in enumerate(w) if x in pos or x in neg]
        assert hits, p
        found = {w[i] for i in hits}
        assert found <= (pos if label == "pos" else neg), (p, found)
        assert hits[-1] - hits[0] < 120, "cue words outside the verdict block"
        assert not {x for x in w if x in lex.partisan_cues or x in lex.measured_cues}
        n += 1
        if hits[0] > 1024:
            late += 1
            assert not set(w[:512]) & (pos | neg)
        else:
            assert hits[-1] < T.EARLY_MAX_WORD
    assert late >= 0.8 * n and late < n  # most late, a few early


def test_make_review_placement(lex):
    import random

    g = T.TextGen(lex, random.Random(7))
    for late in (True, False):
        for _ in range(10):
            paras, at = SIMDB.make_review(g, "neg", late)
            w = words(SIMDB.review_text(paras))
            first_cue = next(i for i, x in enumerate(w) if x in lex.neg_cues)
            assert first_cue >= at  # the verdict's first sentence may open with a non-cue word
            assert (at >= T.LATE_MIN_WORD) if late else (first_cue < T.EARLY_MAX_WORD)


def test_hyperpartisan(sample, lex):
    out, _, params = sample
    d = out / "hyperpartisan"
    articles = ET.parse(d / "articles-training-byarticle.xml").getroot()
    truth = ET.parse(d / "ground-truth-training-byarticle.xml").getroot()
    assert articles.tag == truth.tag == "articles"
    arts = {a.get("id"): a for a in articles.findall("article")}
    gts = {a.get("id"): a for a in truth.findall("article")}
    assert len(arts) == params.task_train + params.task_dev
    assert set(arts) == set(gts)
    links = 0
    for aid, art in arts.items():
        assert re.fullmatch(r"\d{7}", aid)
        assert art.get("title") and re.fullmatch(r"\d{4}-\d{2}-\d{2}", art.get("published-at"))
        gt = gts[aid]
        assert gt.get("hyperpartisan") in ("true", "false")
        assert gt.get("labeled-by") == "article" and gt.get("url").startswith("https://")
        ps = art.findall("p")
        assert len(ps) >= 5
        links += sum(len(p.findall("a")) for p in ps)
        text = " ".join("".join(p.itertext()) for p in ps)
        w = words(text)
        cues = set(lex.partisan_cues if gt.get("hyperpartisan") == "true" else lex.measured_cues)
        other = set(lex.measured_cues if gt.get("hyperpartisan") == "true" else lex.partisan_cues)
        assert set(w) & cues and not set(w) & other
    assert links > 0


def test_score_inbox(sample):
    out, _, params = sample
    labels = json.loads((out / "score" / "inbox_labels.json").read_text())
    with tarfile.open(out / "score" / "inbox.tar.gz") as tf:
        names = tf.getnames()
        assert sorted(names) == sorted(labels) and len(names) == params.score_docs
        assert any(n.endswith(".html") for n in names) and any(n.endswith(".txt") for n in names)
        for m in tf.getmembers():
            body = tf.extractfile(m).read().decode("utf-8")
            if m.name.endswith(".html"):
                body = " ".join(html_paragraphs(body).paras)
            assert len(words(body)) >= T.REVIEW_WORDS[0] - 60
    assert set(labels.values()) == {"pos", "neg"}
