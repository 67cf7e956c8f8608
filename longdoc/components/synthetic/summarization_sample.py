"""Summarization data in the layout of Cohan et al. 2018's arXiv / PubMed release.

`{train,val,test}.txt`, one JSON object per line: `article_id`, `article_text` (the article's
sentences), `abstract_text` (`<S> ... </S>` sentences), `section_names` and `sections` (the
sentences of each section), as the real files have them.

Each article is about one subject, named in its first sentence, and reports one finding: a
paragraph of finding sentences whose cue words come from one of four classes (the four cue
lists of the lexicon). The abstract says both: "this paper is about <subject> ." and
"we find it <q1> and <q2> ." with q1, q2 the findings' two most frequent cue words (ties: the
one used first). Cue words are drawn Zipf-like, so over a long findings paragraph the two most
frequent are mostly their class's two favourites: the finding is mostly its class, which a small
summarizer can learn to read from many cue tokens, where copying two rare words is not. In
most articles the findings sit beyond word LATE_MIN_WORD, so beyond token 1,024 for any
tokenizer: a model truncated to 1,024 tokens can copy the subject but can only guess the
finding (from the class prior), while a model that reads the whole article can copy both.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from longdoc.components.core.config import SampleParams
from longdoc.components.core.io import atomic_write_text
from longdoc.components.synthetic.text import (
    ENCYCLOPEDIC,
    NEWS,
    TOPICAL,
    Lexicon,
    TextGen,
    cue_picker,
    insert_block,
    late_flags,
)

#: The files and how many articles each holds (`task_train` / `task_dev` of SampleParams).
SPLITS = (("train", "task_train"), ("val", "task_dev"), ("test", "task_dev"))
#: The findings paragraph: shared templates, only the cue words {Q} tell the class.
FINDINGS = (
    "Our measurements show that the {N} of {T} is {Q}.",
    "Across {D} visits the {N} proved {Q} and {Q}.",
    "We conclude that the {A} {N} is {Q}, even {Q}.",
    "Every observer called the {N} {Q}.",
)
#: Article length in words, findings excluded: just past LATE_MIN_WORD, so that a late finding
#: lies beyond token 1,024 while the long model reads little more than it needs (training cost).
ARTICLE_WORDS = (1200, 1500)
#: Sentences in the findings paragraph (cue words: 1-2 each, some 25 in all): enough that the
#: demo's small LED learns to read the cue class (with 3-5 sentences, about 6 cue words among
#: 1,700 tokens, it did not) and that the two most frequent are mostly the class's favourites.
FINDING_SENTENCES = (16, 20)
SECTION_NAMES = ("introduction", "background", "observations", "discussion", "conclusion")


def _findings(g: TextGen, cues: Sequence[str], subject: str) -> tuple[list[str], list[str]]:
    """The finding sentences and their two most frequent distinct cue words (ties: first used)."""
    rng = g.rng
    pick = cue_picker(rng, cues)
    while True:
        used: list[str] = []

        def q(used: list[str] = used) -> str:
            word = pick()
            used.append(word)
            return word

        block = [
            g.sent(rng.choice(FINDINGS), Q=q, T=subject)
            for _ in range(rng.randint(FINDING_SENTENCES[0], FINDING_SENTENCES[1]))
        ]
        distinct = list(dict.fromkeys(used))  # first-use order breaks ties (sort is stable)
        if len(distinct) >= 2:
            return block, sorted(distinct, key=used.count, reverse=True)[:2]


def _sections(paras: list[list[str]], rng: random.Random) -> tuple[list[str], list[list[str]]]:
    """The paragraphs grouped, in order, into 3-5 named sections."""
    k = min(len(paras), rng.randint(3, len(SECTION_NAMES)))
    cuts = sorted(rng.sample(range(1, len(paras)), k - 1))
    bounds = [0, *cuts, len(paras)]
    names = [*SECTION_NAMES[: k - 1], SECTION_NAMES[-1]]
    sections = [
        [s for p in paras[a:b] for s in p] for a, b in zip(bounds, bounds[1:], strict=False)
    ]
    return names, sections


def make_article(g: TextGen, article_id: str, late: bool) -> dict[str, Any]:
    """One record of the distributed files (the finding placed late or early, see module doc)."""
    rng, lex = g.rng, g.lex
    subject = g.landmark()
    cues = rng.choice((lex.pos_cues, lex.neg_cues, lex.partisan_cues, lex.measured_cues))
    block, (q1, q2) = _findings(g, cues, subject)
    body, _ = g.paragraphs(
        ENCYCLOPEDIC + NEWS, rng.randint(*ARTICLE_WORDS), (3, 6), TOPICAL, 0.15, T=subject
    )
    body[0].insert(0, f"In this paper we study {subject}.")
    paras, _ = insert_block(body, block, late, rng)
    names, sections = _sections(paras, rng)
    return {
        "article_id": article_id,
        "article_text": [s for sec in sections for s in sec],
        "abstract_text": [
            f"<S> this paper is about {subject} . </S>",
            f"<S> we find it {q1} and {q2} . </S>",
        ],
        "section_names": names,
        "sections": sections,
    }


def write_summarization(root: Path, params: SampleParams, lex: Lexicon) -> dict[str, Any]:
    rng = random.Random(f"{params.seed}:summarization")
    g = TextGen(lex, rng)
    counts: dict[str, Any] = {}
    late_total = 0
    for split, size_key in SPLITS:
        n = getattr(params, size_key)
        flags = late_flags(n, rng)
        lines = [
            json.dumps(make_article(g, f"{split}-{i:05d}", late), ensure_ascii=False)
            for i, late in enumerate(flags)
        ]
        atomic_write_text(root / f"{split}.txt", "\n".join(lines) + "\n")
        counts[split] = n
        late_total += sum(flags)
    counts["late_findings"] = late_total
    return counts
