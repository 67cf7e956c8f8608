"""HotpotQA (distractor setting): bridge and comparison questions with supporting facts."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from longdoc.components.core.config import SampleParams
from longdoc.components.core.io import atomic_write_text
from longdoc.components.synthetic.text import (
    ENCYCLOPEDIC,
    LATE_MIN_WORD,
    ORDINALS,
    Lexicon,
    TextGen,
    late_flags,
    nwords,
)


def _hotpot_paragraph(
    g: TextGen, first: str, facts: Sequence[str], n_words: int
) -> tuple[list[str], list[int]]:
    """Sentences of one context paragraph, HotpotQA style (every sentence after the first
    carries a leading space, so "".join(sentences) is the paragraph), and where `facts` landed."""
    rng = g.rng
    sents = [first]
    while sum(nwords(s) for s in sents) < n_words:
        sents.append(g.sent(rng.choice(ENCYCLOPEDIC)))
    for f in facts:
        sents.insert(rng.randint(1, len(sents)), f)
    idx = sorted(sents.index(f) for f in facts)
    return [s if i == 0 else " " + s for i, s in enumerate(sents)], idx


# A question kind builds its gold paragraphs and question and says how a distractor looks:
# (gold, question, answer, type, fake) where gold is [(title, intro sentence or "" when the fact
# itself opens the paragraph, [facts])] and fake() is (title, templates) of a distractor stating
# the same relations for other entities.
Question = tuple[
    list[tuple[str, str, list[str]]], str, str, str, Callable[[], tuple[str, list[str]]]
]


def _bridge_company(g: TextGen) -> Question:
    """person -> company -> city."""
    rng, lex = g.rng, g.lex
    p, o, c = g.person(), g.pick(lex.orgs), g.pick(lex.cities)
    g.exclude = {p, o, c, *p.split()}
    what, years = g.fill("{A} {N}"), rng.randint(2, 30)
    gold = [
        (p, f"{p} is a {what}.", [f"{p} worked for {o} for {years} years."]),
        (o, f"{o} is an organisation.", [f"{o} is a {g.fill('{A}')} company based in {c}."]),
    ]

    def fake() -> tuple[str, list[str]]:
        if rng.random() < 0.5:
            return g.person(), ["{S} worked for {O} for {D} years."]
        return g.pick(lex.orgs), ["{S} is a {A} company based in {C}."]

    return gold, f"In which city is the company that {p} worked for based?", c, "bridge", fake


def _bridge_band(g: TextGen) -> Question:
    """album -> band -> city."""
    rng, lex = g.rng, g.lex
    al, b, c = g.album(), g.pick(lex.bands), g.pick(lex.cities)
    g.exclude = {al, b, c}
    ordinal = rng.choice(ORDINALS)
    formed = f"{b} is a {g.fill('{A}')} band formed in {c} in {rng.randint(1850, 2015)}."
    gold = [
        (al, f"{al} is a record.", [f"{al} is the {ordinal} studio album by {b}."]),
        (b, f"{b} are a group.", [formed]),
    ]

    def fake() -> tuple[str, list[str]]:
        if rng.random() < 0.5:
            return g.album(), ["{S} is the {ORD} studio album by {B}."]
        return g.pick(lex.bands), ["{S} is a {A} band formed in {C} in {Y}."]

    return gold, f"In which city was the band that recorded {al} formed?", c, "bridge", fake


def _compare_founding(g: TextGen) -> Question:
    """Which organisation was founded first."""
    rng, lex = g.rng, g.lex
    o1, o2 = rng.sample(lex.orgs, 2)
    y1, y2 = rng.sample(range(1850, 2015), 2)
    g.exclude = {o1, o2}
    gold = [
        (o1, f"{o1} is an organisation.", [f"{o1} was founded in {y1}."]),
        (o2, f"{o2} is an organisation.", [f"{o2} was founded in {y2}."]),
    ]
    answer = o1 if y1 < y2 else o2
    return (
        gold,
        f"Which was founded first, {o1} or {o2}?",
        answer,
        "comparison",
        lambda: (g.pick(lex.orgs), ["{S} was founded in {Y}."]),
    )


def _compare_nationality(g: TextGen) -> Question:
    """Two people of the same nationality or not: a yes/no answer."""
    rng, lex = g.rng, g.lex
    p1 = g.person()
    g.exclude = {p1}
    p2 = g.person()
    k1 = g.pick(lex.countries)
    k2 = k1 if rng.random() < 0.5 else rng.choice([k for k in lex.countries if k != k1])
    g.exclude = {p1, p2, k1, k2}
    gold = [
        (p1, "", [f"{p1} is a {g.fill('{A} {N}')} from {k1}."]),
        (p2, "", [f"{p2} is a {g.fill('{A} {N}')} from {k2}."]),
    ]
    return (
        gold,
        f"Were {p1} and {p2} of the same nationality?",
        "yes" if k1 == k2 else "no",
        "comparison",
        lambda: (g.person(), ["{S} is a {A} {N} from {K}."]),
    )


# (upper bound of a uniform draw, question kind): 30% / 30% / 20% / 20%
_QUESTION_KINDS = (
    (0.3, _bridge_company),
    (0.6, _bridge_band),
    (0.8, _compare_founding),
    (1.0, _compare_nationality),
)


def _distractors(g: TextGen, fake: Callable[[], tuple[str, list[str]]], taken: set[str]) -> list:
    """Eight paragraphs about other entities stating the same relations as the gold ones."""
    rng, distractors = g.rng, []
    while len(distractors) < 8:
        title, tpls = fake()
        if title in taken:
            continue
        taken.add(title)
        facts = [g.sent(t, S=title) for t in tpls]
        sents, _ = _hotpot_paragraph(
            g, g.sent("{S} is a {A} {N}.", S=title), facts, rng.randint(150, 220)
        )
        distractors.append((title, sents, []))
    return distractors


def _late_context(rng: random.Random, gold_paras: list, distractors: list) -> list:
    """The gold paragraphs placed after distractors worth at least LATE_MIN_WORD words."""
    acc, k = 0, 0
    while k < len(distractors) and acc < LATE_MIN_WORD:
        acc += sum(nwords(s.strip()) for s in distractors[k][1])
        k += 1
    first = rng.randint(k, len(distractors))
    second = rng.randint(first, len(distractors))
    return (
        distractors[:first]
        + [gold_paras[0]]
        + distractors[first:second]
        + [gold_paras[1]]
        + distractors[second:]
    )


def _hotpot_example(g: TextGen, late: bool, level: str) -> dict[str, Any]:
    rng = g.rng
    kind = rng.random()
    build = next(b for bound, b in _QUESTION_KINDS if kind < bound)
    gold, q, answer, qtype, fake = build(g)
    gold_paras = []
    for title, intro, facts in gold:
        if intro:
            sents, idx = _hotpot_paragraph(g, intro, facts, rng.randint(90, 150))
        else:  # the fact opens the paragraph, as a Wikipedia lead sentence would
            sents, idx = _hotpot_paragraph(g, facts[0], [], rng.randint(90, 150))
            idx = [0]
        gold_paras.append((title, sents, idx))
    distractors = _distractors(g, fake, {t for t, _, _ in gold_paras})
    g.exclude = set()
    rng.shuffle(gold_paras)
    context = _late_context(rng, gold_paras, distractors) if late else gold_paras + distractors
    sp = [[t, i] for t, _, idx in gold_paras for i in idx]
    return {
        "_id": f"{rng.getrandbits(96):024x}",
        "answer": answer,
        "context": [[t, s] for t, s, _ in context],
        "level": level,
        "question": q,
        "supporting_facts": sp,
        "type": qtype,
    }


def write_hotpotqa(root: Path, params: SampleParams, lex: Lexicon) -> dict[str, Any]:
    rng = random.Random(f"{params.seed}:hotpotqa")
    g = TextGen(lex, rng)
    counts = {}
    files = (
        ("train", params.task_train, "hotpot_train_v1.1.json"),
        ("dev", params.task_dev, "hotpot_dev_distractor_v1.json"),
    )
    for split, n, fname in files:
        data = []
        for late in late_flags(n, rng):
            level = "hard" if split == "dev" else rng.choice(("easy", "medium", "hard"))
            data.append(_hotpot_example(g, late, level))
        atomic_write_text(root / fname, json.dumps(data))
        counts[split] = n
        counts[f"{split}_yes_no"] = sum(d["answer"] in ("yes", "no") for d in data)
    return counts
