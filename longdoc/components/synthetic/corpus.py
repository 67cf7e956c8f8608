"""The long-document corpus that `ingest` reads, spread over the containers it handles (plain
text, JSONL, tar of text and HTML pages, zip), with a few documents planted twice for dedupe and
fact sentences planted throughout (`lama_sample`: what `longdoc probe` asks about)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

from longdoc.components.core.config import SampleParams
from longdoc.components.core.io import atomic_write_bytes
from longdoc.components.synthetic.archives import html_page, tar_gz_bytes, zip_bytes
from longdoc.components.synthetic.lama_sample import FactPlanter
from longdoc.components.synthetic.text import (
    ENCYCLOPEDIC,
    FILM,
    NEWS,
    OPINION,
    RELATIONAL,
    STORY,
    TOPICAL,
    Lexicon,
    TextGen,
    join_paragraphs,
    nwords,
    slug,
)

#: Share of corpus documents planted a second time, in another container, for dedupe to find.
DUPLICATE_FRACTION = 0.04

_GENRES = ("encyclopedia", "news", "review", "story")
TEXT_CONTAINERS = ("txt", "jsonl", "tar_txt", "zip")
CONTAINERS = ("txt", "jsonl", "tar_txt", "tar_html", "zip")
_CONTAINER_WEIGHTS = (30, 25, 15, 10, 20)


def _trim(paras: list[list[str]], total: int, max_words: int) -> list[list[str]]:
    """Drop sentences from the end, then cut the last one, so the text has at most `max_words`
    words (planted fact sentences can push a document past it by more than one sentence)."""
    paras = [list(p) for p in paras]
    while total > max_words and total - nwords(paras[-1][-1]) >= max_words:
        total -= nwords(paras[-1].pop())
        if not paras[-1]:
            paras.pop()
    if total <= max_words:
        return paras
    words = paras[-1][-1].split(" ")
    keep = len(words) - (total - max_words)
    cut = " ".join(words[:keep]).rstrip(",;:.") + "."
    return paras[:-1] + [paras[-1][:-1] + [cut]]


def _corpus_doc(
    g: TextGen, n_words: int, max_words: int, facts: FactPlanter | None = None
) -> tuple[str, str]:
    """(title, text) of one corpus document of n_words..max_words words, paragraphs separated by
    blank lines. Reviews, news and stories carry opinion sentences with cue words (one class per
    document, as real reviews and op-eds lean one way), so the tokenizer and the MLM see every cue
    word in context; encyclopedic pages carry the relation frames the QA tasks ask about. Every
    genre gets fact sentences, from the planter's own RNG stream (the text around them is what
    this stream writes without them)."""
    rng, lex = g.rng, g.lex
    genre = rng.choice(_GENRES)
    polarity = rng.random() < 0.5
    if genre == "review":
        title = g.album()
        templates, special, rate = FILM, OPINION, 0.12
        cues = lex.pos_cues if polarity else lex.neg_cues
    elif genre == "news":
        title = f"{g.fill('{A}').capitalize()} {g.fill('{N}')} in {g.pick(lex.cities)}"
        templates, special, rate = NEWS, OPINION, 0.08
        cues = lex.partisan_cues if polarity else lex.measured_cues
    elif genre == "encyclopedia":
        title = g.landmark() if rng.random() < 0.5 else g.pick(lex.cities)
        templates, special, rate = ENCYCLOPEDIC + TOPICAL, RELATIONAL, 0.15
        cues = ()  # RELATIONAL has no {Q} slot
    else:
        title = f"The {g.fill('{A}').capitalize()} {g.fill('{N}').capitalize()}"
        templates, special, rate = STORY + ENCYCLOPEDIC, OPINION, 0.04
        cues = lex.pos_cues if polarity else lex.neg_cues
    cue_pick = lambda: rng.choice(cues)  # noqa: E731
    planted = facts.sentences(n_words) if facts else []  # filler makes room for them
    room = max(1, n_words - sum(nwords(s) for s in planted))
    paras, total = g.paragraphs(templates, room, (3, 9), special, rate, T=title, Q=cue_pick)
    if facts:
        paras = facts.plant(paras, planted)
        total += sum(nwords(s) for s in planted)
    return title, join_paragraphs(_trim(paras, total, max_words))


def _draw_documents(
    g: TextGen, params: SampleParams, facts: FactPlanter
) -> tuple[list[dict[str, Any]], int]:
    """(documents with their container, how many are unique): every container gets a document
    first (small samples too), then weighted draws; then copies of some text documents into
    another container, as exact duplicates for ingest to find."""
    rng, n = g.rng, params.corpus_docs
    n_dup = max(1, round(n * DUPLICATE_FRACTION)) if n >= 2 else 0
    n_unique = n - n_dup
    first = list(CONTAINERS)
    rng.shuffle(first)
    where = first[:n_unique] + rng.choices(
        CONTAINERS, weights=_CONTAINER_WEIGHTS, k=max(0, n_unique - len(CONTAINERS))
    )
    docs: list[dict[str, Any]] = []
    for i in range(n_unique):
        title, text = _corpus_doc(
            g, rng.randint(params.min_words, params.max_words), params.max_words, facts
        )
        docs.append({"i": i, "title": title, "text": text, "container": where[i]})
    text_docs = [d for d in docs if d["container"] in TEXT_CONTAINERS]
    for src in rng.sample(text_docs, min(n_dup, len(text_docs))):
        other = rng.choice([c for c in TEXT_CONTAINERS if c != src["container"]])
        docs.append({**src, "i": len(docs), "container": other, "duplicate_of": src["i"]})
    return docs, n_unique


def _file_name(d: dict[str, Any], ext: str = "txt") -> str:
    return f"{slug(d['title'])[:40]}-{d['i']:05d}.{ext}"


def _write_containers(out: Path, docs: list[dict[str, Any]]) -> dict[str, int]:
    """Each document into its container (loose .txt, JSONL.gz, tar.gz of text and HTML pages,
    zip); documents per container."""
    counts = dict.fromkeys(CONTAINERS, 0)
    jsonl: list[str] = []
    tar_members: list[tuple[str, bytes]] = []
    zip_members: list[tuple[str, bytes]] = []
    for d in docs:
        c = d["container"]
        counts[c] += 1
        data = d["text"].encode("utf-8")
        if c == "txt":
            atomic_write_bytes(out / "corpus" / "txt" / _file_name(d), data)
        elif c == "jsonl":
            rec = {"id": f"doc-{d['i']:05d}", "title": d["title"], "text": d["text"]}
            jsonl.append(json.dumps(rec, ensure_ascii=False))
        elif c == "tar_txt":
            tar_members.append((f"web/{_file_name(d)}", data))
        elif c == "tar_html":
            page = html_page(d["title"], d["text"].split("\n\n"), d["i"])
            tar_members.append((f"web/pages/{_file_name(d, 'html')}", page.encode("utf-8")))
        else:
            sub = "bundle/archive/" if len(zip_members) % 2 else "bundle/"  # some in a subfolder
            zip_members.append((sub + _file_name(d), data))
    jsonl_bytes = ("\n".join(jsonl) + "\n").encode("utf-8") if jsonl else b""
    atomic_write_bytes(out / "corpus" / "docs.jsonl.gz", gzip.compress(jsonl_bytes, 6, mtime=0))
    atomic_write_bytes(out / "corpus" / "web.tar.gz", tar_gz_bytes(tar_members))
    atomic_write_bytes(out / "corpus" / "bundle.zip", zip_bytes(zip_members))
    (out / "corpus" / "txt").mkdir(parents=True, exist_ok=True)
    return counts


def write_corpus(out: Path, params: SampleParams, lex: Lexicon) -> dict[str, Any]:
    g = TextGen(lex, random.Random(f"{params.seed}:corpus"))
    facts = FactPlanter(lex, params.seed)
    docs, n_unique = _draw_documents(g, params, facts)
    counts = _write_containers(out, docs)
    return {
        "documents": len(docs),
        "unique_documents": n_unique,
        "duplicates_planted": len(docs) - n_unique,
        "fact_sentences_planted": facts.planted,
        "per_container": counts,
        "words": sum(nwords(d["text"].replace("\n\n", " ")) for d in docs),
    }
