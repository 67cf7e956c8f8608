"""WikiHop (QAngaroo) JSON: two-hop questions over support documents."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


def _support_doc(g: TextGen, intro: str, facts: Sequence[str]) -> str:
    """A short Wikipedia-like paragraph: an intro sentence, filler, and `facts` at random spots."""
    rng = g.rng
    sents = [g.sent(rng.choice(ENCYCLOPEDIC)) for _ in range(rng.randint(6, 14))]
    for f in facts:
        sents.insert(rng.randint(0, len(sents)), f)
    return " ".join([intro, *sents])


@dataclass(frozen=True)
class _Chain:
    """One two-hop chain: subject -> bridge -> candidates[0], the facts and intros of its two
    decisive documents, and how distractors state the same relations for other entities."""

    cands: list[str]
    subj: str
    facts: tuple[str, str]
    intros: tuple[str, str]
    other: Callable[[], str]  # another bridge-like entity
    about_subj: Callable[[], tuple[str, str]]  # (other subject, template of the first hop)
    about_answer: str  # template of the second hop


def _citizenship(g: TextGen, n_cand: int) -> _Chain:
    rng, lex = g.rng, g.lex
    cands = rng.sample(lex.countries, n_cand)
    subj, bridge = g.person(), g.pick(lex.cities)
    g.exclude = {subj, bridge, *cands, *subj.split()}
    facts = (
        f"{subj} was born in {bridge} in {rng.randint(1850, 2015)}.",
        f"{bridge} is a {g.fill('{A}')} city in {cands[0]}.",
    )
    intros = (f"{subj} is a {g.fill('{A} {N}')}.", f"{bridge} is a {g.fill('{A}')} town.")
    return _Chain(
        cands,
        subj,
        facts,
        intros,
        lambda: g.pick(lex.cities),
        lambda: (g.person(), "{S} was born in {X} in {Y}."),
        "{X} is a {A} city in {ANS}.",
    )


def _territory(g: TextGen, n_cand: int) -> _Chain:
    rng, lex = g.rng, g.lex
    cands = rng.sample(lex.regions, n_cand)
    subj, bridge = g.pick(lex.villages), g.pick(lex.cities)
    g.exclude = {subj, bridge, *cands}
    facts = (
        f"{subj} is a village in the {bridge} district.",
        f"The {bridge} district lies in the {cands[0]} region.",
    )
    intros = (f"{subj} is a small {g.fill('{N}')}.", f"{bridge} is a {g.fill('{A}')} town.")
    return _Chain(
        cands,
        subj,
        facts,
        intros,
        lambda: g.pick(lex.cities),
        lambda: (g.pick(lex.villages), "{S} is a village in the {X} district."),
        "The {X} district lies in the {ANS} region.",
    )


def _record_label(g: TextGen, n_cand: int) -> _Chain:
    rng, lex = g.rng, g.lex
    cands = rng.sample(lex.labels, n_cand)
    subj, bridge = g.album(), g.pick(lex.bands)
    g.exclude = {subj, bridge, *cands}
    facts = (
        f"{subj} is the {rng.choice(ORDINALS)} studio album by {bridge}.",
        f"{bridge} signed with {cands[0]} in {rng.randint(1850, 2015)}.",
    )
    intros = (f"{subj} is a record.", f"{bridge} are a {g.fill('{A}')} group.")
    return _Chain(
        cands,
        subj,
        facts,
        intros,
        lambda: g.pick(lex.bands),
        lambda: (g.album(), "{S} is the {ORD} studio album by {X}."),
        "{X} signed with {ANS} in {Y}.",
    )


_CHAINS = {  # relation -> its chain builder
    "country_of_citizenship": _citizenship,
    "located_in_the_administrative_territorial_entity": _territory,
    "record_label": _record_label,
}
WIKIHOP_RELATIONS = tuple(_CHAINS)


def _fresh(g: TextGen, chain: _Chain) -> str:
    """A distractor bridge entity not used yet in this example."""
    while (x := chain.other()) in g.exclude:
        pass
    g.exclude.add(x)
    return x


def _distractor(g: TextGen, chain: _Chain, pending: list[str]) -> str:
    """A document linking one or two pending candidates to fresh bridge entities, and perhaps
    another subject to some bridge entity."""
    rng, facts = g.rng, []
    for _ in range(min(len(pending), rng.randint(1, 2))):
        facts.append(g.sent(chain.about_answer, X=_fresh(g, chain), ANS=pending.pop()))
    if rng.random() < 0.6:
        s, tpl = chain.about_subj()
        facts.append(g.sent(tpl, S=s, X=chain.other()))
    return _support_doc(g, g.sent("{T} is a {A} {N}.", T=chain.other()), facts)


def _wikihop_example(g: TextGen, idx: str, late: bool) -> dict[str, Any]:
    """Subject -> bridge -> answer over two support documents; distractor documents state the
    same relations for other entities (every candidate among them), so only following the chain
    from the query's subject picks the answer."""
    rng = g.rng
    rel = rng.choice(WIKIHOP_RELATIONS)
    n_cand = rng.randint(4, 8)
    g.exclude = set()
    chain = _CHAINS[rel](g, n_cand)
    cands, facts, intros = chain.cands, chain.facts, chain.intros
    decisive = [_support_doc(g, intros[0], facts[:1]), _support_doc(g, intros[1], facts[1:])]
    rng.shuffle(decisive)
    # distractors link every candidate to some other bridge entity; each non-answer candidate
    # twice, so every candidate is mentioned twice in all and counting mentions gives nothing away
    pending = list(cands) + list(cands[1:])
    rng.shuffle(pending)
    supports: list[str] = []
    if late:
        while sum(nwords(s) for s in supports) < LATE_MIN_WORD or pending:
            supports.append(_distractor(g, chain, pending))
        supports += decisive + [_distractor(g, chain, pending) for _ in range(rng.randint(0, 2))]
    else:
        supports = decisive + [_distractor(g, chain, pending) for _ in range(rng.randint(6, 10))]
        while pending:
            supports.append(_distractor(g, chain, pending))
    g.exclude = set()
    return {
        "id": idx,
        "query": f"{rel} {chain.subj.lower()}",
        "answer": cands[0].lower(),
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
