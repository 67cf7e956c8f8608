"""Hyperpartisan (SemEval-2019 Task 4) by-article XML: the stance shows in one paragraph."""

from __future__ import annotations

import html
import random
from pathlib import Path
from typing import Any

from longdoc.components.core.config import SampleParams
from longdoc.components.core.io import atomic_write_text
from longdoc.components.synthetic.text import (
    ARTICLE_WORDS,
    ENCYCLOPEDIC,
    NEWS,
    STANCE,
    Lexicon,
    TextGen,
    cue_picker,
    insert_block,
    late_flags,
    slug,
)


def _xml_attr(s: str) -> str:
    return html.escape(s, quote=True).replace("&#x27;", "&apos;")


def _xml_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _with_link(g: TextGen, para: str) -> str:
    """XML-escaped paragraph with a few of its words wrapped in <a href>, as in the real data."""
    words = para.split(" ")
    if len(words) < 6:
        return _xml_text(para)
    i = g.rng.randint(0, len(words) - 4)
    j = i + g.rng.randint(1, 3)
    url = f"https://www.{slug(g.pick(g.lex.orgs))}.com/{slug(g.fill('{N}'))}"
    anchor = f'<a href="{_xml_attr(url)}">{_xml_text(" ".join(words[i:j]))}</a>'
    head, tail = " ".join(words[:i]), " ".join(words[j:])
    return " ".join(x for x in (_xml_text(head), anchor, _xml_text(tail)) if x)


def write_hyperpartisan(root: Path, params: SampleParams, lex: Lexicon) -> dict[str, Any]:
    """Articles whose stance shows only in one paragraph of stance sentences (partisan cue words
    for hyperpartisan articles, measured ones for the rest), placed deep in most articles."""
    rng = random.Random(f"{params.seed}:hyperpartisan")
    g = TextGen(lex, rng)
    n = params.task_train + params.task_dev
    labels = [True] * ((n + 1) // 2) + [False] * (n // 2)
    rng.shuffle(labels)
    flags = late_flags(n, rng)
    articles, truth = [], []
    for i, (partisan, late) in enumerate(zip(labels, flags, strict=True)):
        aid = f"{i:07d}"
        q = cue_picker(rng, lex.partisan_cues if partisan else lex.measured_cues)
        stance = [g.sent(rng.choice(STANCE), Q=q) for _ in range(rng.randint(3, 5))]
        body, _ = g.paragraphs(NEWS + ENCYCLOPEDIC, rng.randint(*ARTICLE_WORDS), (3, 6))
        paras, _ = insert_block(body, stance, late, rng)
        title = g.sent(
            rng.choice(
                (
                    "{O} {V} the {A} {N}",
                    "What the {N} means for {C}",
                    "{C} {V} the {N} after {MO} vote",
                    "The {A} {N} of {K}",
                )
            )
        )
        date = f"{rng.randint(2012, 2018)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        ps = []
        stance_text = " ".join(stance)
        for para in paras:
            text = " ".join(para)
            linked = text != stance_text and rng.random() < 0.25
            ps.append(f"<p>{_with_link(g, text) if linked else _xml_text(text)}</p>")
        articles.append(
            f'<article id="{aid}" title="{_xml_attr(title)}" published-at="{date}">'
            + "".join(ps)
            + "</article>"
        )
        url = f"https://www.{slug(g.pick(lex.orgs))}.com/{date[:4]}/{date[5:7]}/{slug(title)}"
        truth.append(
            f'<article id="{aid}" hyperpartisan="{str(partisan).lower()}" '
            f'labeled-by="article" url="{_xml_attr(url)}"/>'
        )
    head = '<?xml version="1.0" encoding="UTF-8"?>\n<articles>\n'
    atomic_write_text(
        root / "articles-training-byarticle.xml", head + "\n".join(articles) + "\n</articles>\n"
    )
    atomic_write_text(
        root / "ground-truth-training-byarticle.xml", head + "\n".join(truth) + "\n</articles>\n"
    )
    return {"articles": n, "hyperpartisan": sum(labels), "late": sum(flags)}
