"""TriviaQA (Wikipedia domain): questions, evidence pages and the qa/ files."""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path
from typing import Any

from longdoc.components.core.config import SampleParams
from longdoc.components.core.io import atomic_write_text
from longdoc.components.synthetic.text import (
    ARTICLE_WORDS,
    ENCYCLOPEDIC,
    TOPICAL,
    Lexicon,
    TextGen,
    insert_block,
    join_paragraphs,
    late_flags,
)


def triviaqa_normalize(s: str) -> str:
    """TriviaQA's answer normalisation (triviaqa_evaluation.normalize_answer): underscores to
    spaces, lowercase, punctuation to spaces, drop the articles a/an/the, collapse whitespace."""
    s = s.replace("_", " ").lower()
    exclude = set(string.punctuation + "\u2018\u2019\u00b4`")
    s = "".join(" " if ch in exclude else ch for ch in s)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split()).strip()


_TRIVIA_KINDS = (  # (question templates, evidence sentence, answer kind)
    (("Who designed {T}?", "Which architect designed {T}?"), "{T} was designed by {ANS}", "person"),
    (
        ("Who founded {T}?", "{T} was founded by which person?"),
        "{T} was founded by {ANS}",
        "person",
    ),
    (("Which company built {T}?", "{T} was built by which firm?"), "{T} was built by {ANS}", "org"),
    (
        ("Which river flows past {T}?", "What river flows past {T}?"),
        "The river that flows past {T} is the {ANS}",
        "river",
    ),
)
_TRIVIA_FRAMES = (  # the sentence around "{title} was designed by {answer}" in the evidence
    "Records from {Y} show that {KEY}.",
    "It is recorded that {KEY}.",
    "As the {N} of {Y} notes, {KEY}.",
    "{KEY}, according to {O}.",
)
_TRIVIA_SOURCES = (  # QuestionId prefixes and sources, shaped like the real ones (invented sites)
    ("tc", "http://www.trivia-club.example/"),
    ("sfq", "http://www.quiz-league.example/"),
    ("bt", "http://www.pub-quiz.example/"),
    ("qb", "http://www.question-bank.example/"),
)


def _trivia_answer(g: TextGen, kind: str) -> tuple[str, list[str], set[str]]:
    """(value, aliases, strings the filler must avoid) for an answer of `kind`."""
    lex = g.lex
    if kind == "person":
        value = g.person()
        sur = value.split(" ", 1)[1]
        return value, [value, sur], {value, sur}
    if kind == "org":
        value = g.pick(lex.orgs)
        if "&" in value:
            return value, [value, value.replace(" & ", " and ")], {value}
        return value, [value, value.split(" ")[0]], {value}  # "Yiljar Holdings", "Yiljar"
    river = g.pick(lex.rivers)
    return f"{river} River", [f"{river} River", f"River {river}", river], {river}


def _city_page(g: TextGen, root: Path, city: str, city_pages: dict[str, str]) -> dict:
    """The answerless page about `city` (written once, shared by its landmarks' questions)."""
    if city not in city_pages:
        g.exclude = set()
        cp, _ = g.paragraphs(ENCYCLOPEDIC, g.rng.randint(300, 600), (4, 8))
        lead = f"{city} is a city in the {g.pick(g.lex.regions)} region."
        city_pages[city] = join_paragraphs([[lead], *cp]) + "\n"
        atomic_write_text(root / "evidence/wikipedia" / f"{city}.txt", city_pages[city])
    return {"DocSource": "TagMe", "Filename": f"{city}.txt", "Title": city}


def _trivia_question(
    g: TextGen, root: Path, title: str, late: bool, city_pages: dict[str, str]
) -> tuple[str, list[str], list[dict], list[str]]:
    """(answer value, aliases, entity pages, question phrasings) about landmark `title`; writes
    its evidence page with the answer sentence early or `late`."""
    rng = g.rng
    city = title.rsplit(" ", 1)[0]
    questions, key, kind = rng.choice(_TRIVIA_KINDS)
    value, aliases, avoid = _trivia_answer(g, kind)
    g.exclude = avoid | {title}
    intro = g.sent("{T} is a {A} landmark in {C}, in the {G} region.", T=title, C=city)
    body, _ = g.paragraphs(ENCYCLOPEDIC + TOPICAL * 2, rng.randint(*ARTICLE_WORDS), (4, 9), T=title)
    key_sent = key.replace("{T}", title).replace("{ANS}", value)
    answer_sent = g.sent(rng.choice(_TRIVIA_FRAMES), KEY=key_sent)
    paras, _ = insert_block([[intro], *body], [answer_sent], late, rng, own_paragraph=False)
    fname = f"{title.replace(' ', '_')}.txt"
    atomic_write_text(root / "evidence" / "wikipedia" / fname, join_paragraphs(paras) + "\n")
    pages = [{"DocSource": "TagMe", "Filename": fname, "Title": title}]
    if rng.random() < 0.33:
        pages.append(_city_page(g, root, city, city_pages))
    g.exclude = set()
    return value, aliases, pages, questions


def _trivia_record(
    value: str, aliases: list[str], pages: list[dict], question: str, qid: str, source: str
) -> dict[str, Any]:
    norm = [triviaqa_normalize(a) for a in aliases]
    answer = {
        "Aliases": aliases,
        "MatchedWikiEntityName": value,
        "NormalizedAliases": norm,
        "NormalizedMatchedWikiEntityName": triviaqa_normalize(value),
        "NormalizedValue": triviaqa_normalize(value),
        "Type": "WikipediaEntity",
        "Value": value,
    }
    return {
        "Answer": answer,
        "EntityPages": pages,
        "Question": question,
        "QuestionId": qid,
        "QuestionSource": source,
    }


def write_triviaqa(root: Path, params: SampleParams, lex: Lexicon) -> dict[str, Any]:
    """Questions about a landmark, each answered by one sentence of its (long) Wikipedia-style
    evidence page that repeats the question's key phrase next to the answer; a second, answerless
    page about the landmark's city comes with a third of the questions."""
    rng = random.Random(f"{params.seed}:triviaqa")
    g = TextGen(lex, rng)
    titles: set[str] = set()
    city_pages: dict[str, str] = {}
    counts: dict[str, int] = {}
    for split, n in (("train", params.task_train), ("dev", params.task_dev)):
        data = []
        for i, late in enumerate(late_flags(n, rng)):
            while (title := g.landmark()) in titles:
                pass
            titles.add(title)
            value, aliases, pages, questions = _trivia_question(g, root, title, late, city_pages)
            prefix, source = rng.choice(_TRIVIA_SOURCES)
            question = rng.choice(questions).replace("{T}", title)
            data.append(
                _trivia_record(value, aliases, pages, question, f"{prefix}_{split}_{i}", source)
            )
        doc = {
            "Data": data,
            "Domain": "Wikipedia",
            "Split": split,
            "VerifiedEval": False,
            "Version": 1.0,
        }
        atomic_write_text(root / "qa" / f"wikipedia-{split}.json", json.dumps(doc))
        counts[split] = n
    counts["evidence_files"] = len(titles) + len(city_pages)
    return counts
