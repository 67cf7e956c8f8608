"""The sample's planted facts: the LAMA files read back with the probe's own loaders, every fact
stated in the corpus (mostly in its mined phrasing), prompt words that mean one thing, and the
corpus still within its length bounds."""

from __future__ import annotations

import gzip
import html
import json
import re
import tarfile
import zipfile
from collections import Counter

import pytest

from longdoc.components.core.config import SampleParams
from longdoc.components.inference import lama
from longdoc.components.synthetic import generator as G
from longdoc.components.synthetic import lama_sample as L
from longdoc.components.synthetic import text as T

SMALL = dict(
    corpus_docs=12, min_words=200, max_words=400, imdb_train=4, imdb_test=2, task_train=2,
    task_dev=2, score_docs=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    params = SampleParams(out=tmp_path_factory.mktemp("s") / "sample", **SMALL)
    return params.out, G.write_sample(params)


def corpus_texts(out) -> list[str]:
    """Every corpus document's text, from every container (HTML pages unescaped, tags left)."""
    lines = gzip.decompress((out / "corpus/docs.jsonl.gz").read_bytes()).decode().splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    texts += [p.read_text() for p in (out / "corpus/txt").glob("*.txt")]
    with tarfile.open(out / "corpus/web.tar.gz") as tar:
        for member in tar.getmembers():
            texts.append(html.unescape(tar.extractfile(member).read().decode()))
    with zipfile.ZipFile(out / "corpus/bundle.zip") as z:
        texts += [z.read(name).decode() for name in z.namelist()]
    return texts


def test_lama_files_load_without_a_skip_and_match_the_planted_facts(sample):
    out, summary = sample
    root = out / "lama"
    rels = lama.load_relations(root / "relations.jsonl")
    facts, skipped = lama.load_fact_dir(root / "TREx", rels.items)
    prompts = lama.load_prompts([root / "prompts"])
    assert not rels.skipped and not skipped and not prompts.skipped
    assert [r.id for r in rels.items] == [r.id for r in L.RELATIONS]
    planted = L.build_facts(T.build_lexicon(0), 0)
    assert sorted((f.relation, f.subject, f.object) for fs in facts.values() for f in fs) == sorted(
        (f.relation, f.subject, f.object) for f in planted
    )
    for spec in L.RELATIONS:
        objects = Counter(f.object for f in facts[spec.id])
        assert len(facts[spec.id]) == L.FACTS_PER_RELATION
        assert len(objects) == L.OBJECTS_PER_RELATION  # N-1: every object used
        assert len({f.subject for f in facts[spec.id]}) == L.FACTS_PER_RELATION
        mine = [p.template for p in prompts.items if p.relation == spec.id and p.source == "mine"]
        assert mine == list(spec.mined) and len(spec.phrasings) == len(spec.mined)
    assert summary["counts"]["lama"] == {"relations": 6, "facts": 96, "prompts": 26}
    first = json.loads((root / "TREx/P19.jsonl").read_text().splitlines()[0])
    assert set(first) == {
        "uuid", "sub_uri", "sub_label", "obj_uri", "obj_label", "predicate_id", "evidences",
    }  # fmt: skip
    assert "[MASK]" in first["evidences"][0]["masked_sentence"]


def test_facts_are_stated_in_the_corpus_in_their_mined_phrasings(sample):
    out, summary = sample
    texts = corpus_texts(out)
    corpus = "\n".join(texts)
    facts = L.build_facts(T.build_lexicon(0), 0)
    specs = {spec.id: spec for spec in L.RELATIONS}
    said: Counter = Counter()
    for f in facts:
        for template, _ in specs[f.relation].phrasings:
            # the subject's phrasing with any object: the corpus never says a wrong one
            sentence = template.replace("{X}", f.subject).replace("{Y}", "<<Y>>")
            pattern = re.sub(r"\\\{\w+\\\}", r"\\w+", re.escape(sentence))  # filler: any word
            for obj in re.findall(pattern.replace("<<Y>>", r"(\w+)"), corpus, re.IGNORECASE):
                assert obj == f.object, (f, obj)
                said[f.relation] += 1
    planted = summary["counts"]["corpus"]["fact_sentences_planted"]
    assert sum(said.values()) >= planted  # duplicated documents say theirs twice
    for line in gzip.decompress((out / "corpus/docs.jsonl.gz").read_bytes()).splitlines():
        n_words = len(json.loads(line)["text"].split())
        assert SMALL["min_words"] <= n_words <= SMALL["max_words"]


def test_prompt_words_are_not_lexicon_words():
    lex = T.build_lexicon(0)
    pools = (lex.nouns, lex.adjectives, lex.verbs, lex.adverbs, lex.cities, lex.countries)
    words = {w.lower() for pool in pools for w in pool}
    assert not L.PROMPT_WORDS & words
    assert {"native", "passport", "hamlet"} <= L.PROMPT_WORDS
