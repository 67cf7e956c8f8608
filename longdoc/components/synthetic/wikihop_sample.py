"""WikiHop (QAngaroo) JSON: two-hop questions over support documents."""

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
    LATE_MIN_WORD,
    ORDINALS,
    Lexicon,
    TextGen,
    late_flags,
    nwords,
)

WIKIHOP_RELATIONS = (
    "country_of_citizenship",
    "located_in_the_administrative_territorial_entity",
    "record_label",
)


def _support_doc(g: TextGen, intro: str, facts: Sequence[str]) -> str:
    """A short Wikipedia-like paragraph: an intro sentence, filler, and `facts` at random spots."""
    rng = g.rng
    sents = [g.sent(rng.choice(ENCYCLOPEDIC)) for _ in range(rng.randint(6, 14))]
    for f in facts:
        sents.insert(rng.randint(0, len(sents)), f)
    return " ".join([intro, *sents])


def _wikihop_example(g: TextGen, idx: str, late: bool) -> dict[str, Any]:
    """Subject -> bridge -> answer over two support documents; distractor documents state the
    same relations for other entities (every candidate among them), so only following the chain
    from the query's subject picks the answer."""
    rng, lex = g.rng, g.lex
    rel = rng.choice(WIKIHOP_RELATIONS)
    n_cand = rng.randint(4, 8)
    y = lambda: str(rng.randint(1850, 2015))  # noqa: E731
    g.exclude = set()
    if rel == "country_of_citizenship":
        cands = rng.sample(lex.countries, n_cand)
        subj, bridge = g.person(), g.pick(lex.cities)
        g.exclude = {subj, bridge, *cands, *subj.split()}
        facts = (
            f"{subj} was born in {bridge} in {y()}.",
            f"{bridge} is a {g.fill('{A}')} city in {cands[0]}.",
        )
        intros = (f"{subj} is a {g.fill('{A} {N}')}.", f"{bridge} is a {g.fill('{A}')} town.")
        other = lambda: g.pick(lex.cities)  # noqa: E731
        about_subj = lambda: (g.person(), "{S} was born in {X} in {Y}.")  # noqa: E731
        about_answer = "{X} is a {A} city in {ANS}."
    elif rel == "located_in_the_administrative_territorial_entity":
        cands = rng.sample(lex.regions, n_cand)
        subj, bridge = g.pick(lex.villages), g.pick(lex.cities)
        g.exclude = {subj, bridge, *cands}
        facts = (
            f"{subj} is a village in the {bridge} district.",
            f"The {bridge} district lies in the {cands[0]} region.",
        )
        intros = (f"{subj} is a small {g.fill('{N}')}.", f"{bridge} is a {g.fill('{A}')} town.")
        other = lambda: g.pick(lex.cities)  # noqa: E731
        about_subj = lambda: (g.pick(lex.villages), "{S} is a village in the {X} district.")  # noqa: E731
        about_answer = "The {X} district lies in the {ANS} region."
    else:
        cands = rng.sample(lex.labels, n_cand)
        subj, bridge = g.album(), g.pick(lex.bands)
        g.exclude = {subj, bridge, *cands}
        facts = (
            f"{subj} is the {rng.choice(ORDINALS)} studio album by {bridge}.",
            f"{bridge} signed with {cands[0]} in {y()}.",
        )
        intros = (f"{subj} is a record.", f"{bridge} are a {g.fill('{A}')} group.")
        other = lambda: g.pick(lex.bands)  # noqa: E731
        about_subj = lambda: (g.album(), "{S} is the {ORD} studio album by {X}.")  # noqa: E731
        about_answer = "{X} signed with {ANS} in {Y}."
    answer = cands[0]
    decisive = [_support_doc(g, intros[0], facts[:1]), _support_doc(g, intros[1], facts[1:])]
    rng.shuffle(decisive)
    # distractors link every candidate to some other bridge entity; each non-answer candidate
    # twice, so every candidate is mentioned twice in all and counting mentions gives nothing away
    pending = list(cands) + list(cands[1:])
    rng.shuffle(pending)

    def fresh() -> str:  # a distractor bridge entity not used yet in this example
        while (x := other()) in g.exclude:
            pass
        g.exclude.add(x)
        return x

    def distractor() -> str:
        facts = []
        for _ in range(min(len(pending), rng.randint(1, 2))):
            facts.append(g.sent(about_answer, X=fresh(), ANS=pending.pop()))
        if rng.random() < 0.6:
            s, tpl = about_subj()
            facts.append(g.sent(tpl, S=s, X=other()))
        return _support_doc(g, g.sent("{T} is a {A} {N}.", T=other()), facts)

    supports: list[str] = []
    if late:
        while sum(nwords(s) for s in supports) < LATE_MIN_WORD or pending:
            supports.append(distractor())
        supports += decisive + [distractor() for _ in range(rng.randint(0, 2))]
    else:
        supports = decisive + [distractor() for _ in range(rng.randint(6, 10))]
        while pending:
            supports.append(distractor())
    g.exclude = set()
    return {
        "id": idx,
        "query": f"{rel} {subj.lower()}",
        "answer": answer.lower(),
        "candidates": sorted(c.lower() for c in cands),
        "supports": supports,
    }


def write_wikihop(root: Path, params: SampleParams, lex: Lexicon) -> dict[str, Any]:
    rng = random.Random(f"{params.seed}:wikihop")
    g = TextGen(lex, rng)
    counts = {}
    for split, n in (("train", params.task_train), ("dev", params.task_dev)):
        flags = late_flags(n, rng)
        data = [_wikihop_example(g, f"WH_{split}_{i}", late) for i, late in enumerate(flags)]
        atomic_write_text(root / f"{split}.json", json.dumps(data))
        counts[split] = n
    return counts
