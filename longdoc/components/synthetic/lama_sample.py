"""Facts the sample corpus states over and over, and the LAMA-format files that ask about them.

Why planted facts: `longdoc probe` asks a pretrained model what it knows ("[X] was born in [Y]
."); on random text the answer would be noise. So the corpus writer (`corpus.py`) plants
sentences stating a fixed set of facts across its documents, and this module writes those facts
as LAMA distributes T-REx (Petroni et al. 2019) plus extra prompts as LPAQA publishes its mined
and paraphrased ones (Jiang et al. 2020):

    lama/relations.jsonl                 {"relation", "template", "label", "description", "type"}
    lama/TREx/<relation>.jsonl           {"uuid", "sub_uri", "sub_label", "obj_uri", "obj_label",
                                          "predicate_id", "evidences": [{"masked_sentence", ...}]}
    lama/prompts/mine/<relation>.jsonl        {"relation", "template"}: the corpus's phrasings
    lama/prompts/paraphrase/<relation>.jsonl  {"relation", "template"}: rewordings never in it

Each relation's facts are stated in the corpus in a few phrasings with unequal frequencies, and
the manual template is LAMA's own, which the corpus uses rarely or never: as in the paper, the
mined prompts that match how the corpus says things should beat the manual one, and the
paraphrases that the corpus never uses should not.

Objects come from a handful of values per relation (N-1 relations, as most of T-REx), so a model
that learned only the relation's type of answer scores about 1/OBJECTS_PER_RELATION; above that
it has learned facts. Everything draws from `random.Random(f"{seed}:facts")`: same seed, same
facts, and the lexicon and the other tasks' streams are untouched.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longdoc.components.core.config import SampleParams
from longdoc.components.core.io import atomic_write_text
from longdoc.components.synthetic.text import Lexicon, TextGen

FACTS_PER_RELATION = 16
OBJECTS_PER_RELATION = 5
#: One planted fact sentence per this many words of a corpus document (at least one).
WORDS_PER_FACT = 20
LAMA_DIR = "lama"


@dataclass(frozen=True)
class RelationSpec:
    """One relation: LAMA's manual template, how the corpus states it (sentence templates with
    {X} subject, {Y} object and TextGen slots, weighted), the LPAQA-style mined prompt of each
    phrasing (same order) and paraphrased prompts the corpus never uses."""

    id: str
    label: str
    description: str
    subjects: str  # TextGen kind: person | org | city | village | band
    objects: str  # Lexicon pool: cities | countries | regions
    manual: str
    phrasings: tuple[tuple[str, int], ...]
    mined: tuple[str, ...]
    paraphrases: tuple[str, ...]


RELATIONS = (
    RelationSpec(
        "P19", "place of birth", "most specific known birth location of a person",
        "person", "cities", "[X] was born in [Y] .",
        (("{X}, a native of {Y}, {V} the {N}.", 6), ("{X} grew up in {Y} and {V} the {N}.", 3),
         ("{X} was born in {Y}.", 1)),
        ("[X] , a native of [Y] ,", "[X] grew up in [Y] and", "[X] was born in [Y] ."),
        ("[X] was born at [Y] .", "The birthplace of [X] is [Y] ."),
    ),
    RelationSpec(
        "P27", "country of citizenship", "the object is a country that recognizes the subject "
        "as its citizen", "person", "countries", "[X] is [Y] citizen .",
        (("{X} holds a passport of {Y}.", 6), ("{X}, a citizen of {Y}, {V} the {N}.", 3)),
        ("[X] holds a passport of [Y] .", "[X] , a citizen of [Y] ,"),
        ("[X] is a national of [Y] .", "[X] has [Y] nationality ."),
    ),
    RelationSpec(
        "P159", "headquarters location", "specific location where an organization's "
        "headquarters is or has been situated", "org", "cities",
        "The headquarter of [X] is in [Y] .",
        (("{X} has its head office in {Y}.", 6), ("The offices of {X} are in {Y}.", 3)),
        ("[X] has its head office in [Y] .", "The offices of [X] are in [Y] ."),
        ("[X] is headquartered at [Y] .", "[X] runs its business from [Y] ."),
    ),
    RelationSpec(
        "P17", "country", "sovereign state of this item", "city", "countries",
        "[X] is located in [Y] .",
        (("{X} lies on the coast of {Y}.", 6), ("{X} is a port town of {Y}.", 3)),
        ("[X] lies on the coast of [Y] .", "[X] is a port town of [Y] ."),
        ("[X] can be found in [Y] .", "[X] belongs to [Y] ."),
    ),
    RelationSpec(
        "P131", "located in the administrative territorial entity", "the item is located on "
        "the territory of the following administrative entity", "village", "regions",
        "[X] is located in [Y] .",
        (("{X} is a hamlet in the hills of {Y}.", 6), ("The hamlet of {X} is part of {Y}.", 3),
         ("{X} is located in {Y}.", 1)),
        ("[X] is a hamlet in the hills of [Y] .", "The hamlet of [X] is part of [Y] .",
         "[X] is located in [Y] ."),
        ("[X] sits within [Y] .", "[X] is a settlement of [Y] ."),
    ),
    RelationSpec(
        "P495", "country of origin", "country of origin of this item (creative work, product, "
        "group)", "band", "countries", "[X] was created in [Y] .",
        (("{X} are a folk group from {Y}.", 6), ("{X} toured the music halls of {Y}.", 3)),
        ("[X] are a folk group from [Y] .", "[X] toured the music halls of [Y] ."),
        ("[X] originated in [Y] .", "[X] was formed in [Y] ."),
    ),
)  # fmt: skip

#: Words of every template and prompt above: none may be a lexicon pseudo-word (tested), so a
#: prompt word means one thing in the corpus.
PROMPT_WORDS = frozenset(
    w.lower()
    for r in RELATIONS
    for t in (r.manual, *r.mined, *r.paraphrases, *(p for p, _ in r.phrasings))
    for w in re.findall(r"[A-Za-z]+", re.sub(r"\{\w+\}|\[[XY]\]", " ", t))
)


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    object: str


def _subject_picker(g: TextGen, kind: str) -> Callable[[], str]:
    lex = g.lex
    return {
        "person": g.person,
        "org": lambda: g.pick(lex.orgs),
        "city": lambda: g.pick(lex.cities),
        "village": lambda: g.pick(lex.villages),
        "band": lambda: g.pick(lex.bands),
    }[kind]


def build_facts(lex: Lexicon, seed: int) -> list[Fact]:
    """FACTS_PER_RELATION facts per relation: distinct subjects, objects drawn from
    OBJECTS_PER_RELATION values of the relation's pool (every value used at least once)."""
    rng = random.Random(f"{seed}:facts")
    g = TextGen(lex, rng)
    facts: list[Fact] = []
    for spec in RELATIONS:
        objects = rng.sample(getattr(lex, spec.objects), OBJECTS_PER_RELATION)
        assigned = objects + [rng.choice(objects) for _ in range(FACTS_PER_RELATION - len(objects))]
        rng.shuffle(assigned)
        pick, seen = _subject_picker(g, spec.subjects), set()
        for obj in assigned:
            subject = pick()
            while subject in seen or subject == obj:
                subject = pick()
            seen.add(subject)
            facts.append(Fact(spec.id, subject, obj))
    return facts


class FactPlanter:
    """Plants fact sentences into corpus documents from its own RNG stream, so the documents
    around them are the ones the corpus stream would have written anyway."""

    def __init__(self, lex: Lexicon, seed: int) -> None:
        self.facts = build_facts(lex, seed)
        self.specs = {r.id: r for r in RELATIONS}
        self.rng = random.Random(f"{seed}:facts-in-corpus")
        self.g = TextGen(lex, self.rng)
        self.planted = 0

    def sentence(self, fact: Fact) -> str:
        templates, weights = zip(*self.specs[fact.relation].phrasings, strict=True)
        template = self.rng.choices(templates, weights=weights)[0]
        return self.g.sent(template, X=fact.subject, Y=fact.object)

    def sentences(self, n_words: int) -> list[str]:
        """The fact sentences for a document of `n_words` words: one per WORDS_PER_FACT."""
        return [
            self.sentence(self.rng.choice(self.facts))
            for _ in range(max(1, n_words // WORDS_PER_FACT))
        ]

    def plant(self, paras: list[list[str]], sentences: list[str]) -> list[list[str]]:
        """`paras` with `sentences` inserted at random sentence positions (never after the last
        sentence, which trimming may cut)."""
        paras = [list(p) for p in paras]
        for sentence in sentences:
            para = paras[self.rng.randrange(len(paras))]
            para.insert(self.rng.randrange(len(para)), sentence)
        self.planted += len(sentences)
        return paras


def _uri(kind: str, text: str) -> str:
    """A stable Wikidata-like id for an invented entity (T-REx's sub_uri / obj_uri)."""
    return "Q" + str(int(uuid.uuid5(uuid.NAMESPACE_URL, f"{kind}:{text}").hex[:8], 16))


def _fact_record(spec: RelationSpec, fact: Fact, seed: int, g: TextGen) -> dict[str, Any]:
    masked = g.sent(spec.phrasings[0][0], X=fact.subject, Y="[MASK]")
    return {
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}:{fact.relation}:{fact.subject}")),
        "sub_uri": _uri(spec.subjects, fact.subject),
        "sub_label": fact.subject,
        "obj_uri": _uri(spec.objects, fact.object),
        "obj_label": fact.object,
        "predicate_id": fact.relation,
        "evidences": [
            {"sub_surface": fact.subject, "obj_surface": fact.object, "masked_sentence": masked}
        ],
    }


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_lama(out: Path, params: SampleParams, lex: Lexicon) -> dict[str, Any]:
    """The LAMA-format files for the facts `FactPlanter` plants (see the module docstring)."""
    root = out / LAMA_DIR
    facts = build_facts(lex, params.seed)
    g = TextGen(lex, random.Random(f"{params.seed}:facts-evidence"))
    relations = [
        {"relation": r.id, "template": r.manual, "label": r.label, "description": r.description,
         "type": "N-1"}
        for r in RELATIONS
    ]  # fmt: skip
    atomic_write_text(root / "relations.jsonl", _jsonl(relations))
    for spec in RELATIONS:
        rows = [_fact_record(spec, f, params.seed, g) for f in facts if f.relation == spec.id]
        atomic_write_text(root / "TREx" / f"{spec.id}.jsonl", _jsonl(rows))
        for kind, templates in (("mine", spec.mined), ("paraphrase", spec.paraphrases)):
            prompts = [{"relation": spec.id, "template": t} for t in templates]
            atomic_write_text(root / "prompts" / kind / f"{spec.id}.jsonl", _jsonl(prompts))
    return {
        "relations": len(RELATIONS),
        "facts": len(facts),
        "prompts": sum(len(r.mined) + len(r.paraphrases) for r in RELATIONS),
    }
