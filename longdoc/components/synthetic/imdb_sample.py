"""IMDB in the aclImdb layout: reviews whose verdict paragraph alone tells the label."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from longdoc.components.core.config import SampleParams
from longdoc.components.core.io import atomic_write_text
from longdoc.components.synthetic.text import (
    FILM,
    LATE_MIN_WORD,
    REVIEW_WORDS,
    VERDICT,
    Lexicon,
    TextGen,
    cue_picker,
    insert_block,
    join_paragraphs,
    late_flags,
    nwords,
)


def make_review(g: TextGen, label: str, late: bool) -> tuple[list[list[str]], int]:
    """One review as paragraphs, and the word index where its verdict starts.

    The body is plot/production filler drawn without regard to the label; the verdict is 3-5
    sentences, each with cue words of the label's class, set as its own paragraph at a random
    sentence boundary after word LATE_MIN_WORD (late) or within the first EARLY_MAX_WORD words.
    Cue words occur nowhere else in the review, so a model that cannot see the verdict is at
    chance on it.
    """
    rng, lex = g.rng, g.lex
    q = cue_picker(rng, lex.pos_cues if label == "pos" else lex.neg_cues)
    verdict = [g.sent(rng.choice(VERDICT), Q=q) for _ in range(rng.randint(3, 5))]
    size = sum(nwords(s) for s in verdict)
    target = max(rng.randint(*REVIEW_WORDS) - size, LATE_MIN_WORD + 10)
    paras, _ = g.paragraphs(FILM, target, (3, 7))
    return insert_block(paras, verdict, late, rng)


def review_text(paras: list[list[str]]) -> str:
    """IMDB files are one line, paragraphs separated by html line breaks."""
    return join_paragraphs(paras, "<br /><br />")


def write_imdb(root: Path, params: SampleParams, lex: Lexicon) -> dict[str, Any]:
    rng = random.Random(f"{params.seed}:imdb")
    g = TextGen(lex, rng)
    counts: dict[str, int] = {}
    late_total = 0
    positions: list[int] = []
    for split, n in (("train", params.imdb_train), ("test", params.imdb_test)):
        n_pos = (n + 1) // 2
        for label, k in (("pos", n_pos), ("neg", n - n_pos)):
            flags = late_flags(k, rng)
            for i, late in enumerate(flags):
                paras, pos = make_review(g, label, late)
                rating = rng.randint(7, 10) if label == "pos" else rng.randint(1, 4)
                path = root / split / label / f"{i}_{rating}.txt"
                atomic_write_text(path, review_text(paras))
                late_total += late
                positions.append(pos)
            counts[f"{split}_{label}"] = k
    n_all = params.imdb_train + params.imdb_test
    return {
        **counts,
        "late_verdicts": late_total,
        "late_fraction": round(late_total / n_all, 4),
        "verdict_word_min": min(positions),
        "verdict_word_median": sorted(positions)[len(positions) // 2],
    }
