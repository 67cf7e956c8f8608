"""The embedded sample: a seeded generator of a long-document corpus and five task data sets.

Why synthetic: the whole pipeline (ingest -> tokenize -> pretrain -> fine-tune -> score) has to run
on a laptop CPU in minutes with no download, and the demo has to *show* why long context matters.
So the generator writes files in the exact on-disk formats of the real data sets (the loaders do
not know the difference) and puts the decisive evidence of most examples beyond the first 1,024
tokens, where a model truncated to 512 tokens cannot see it.

Text is English-like but invented: English function words around pseudo-words built from
syllables by a seeded RNG, filled into sentence templates. One shared lexicon feeds the corpus and
all tasks, so the tokenizer trained on the corpus knows every word the tasks use, the sentiment and
stance cue words included (the corpus uses them in opinion sentences).

Determinism: every artefact draws from its own `random.Random(f"{seed}:{name}")` stream, archives
get fixed mtimes, owners and member order, so the same seed writes byte-identical files (only the
`written_at` stamp in manifest.json differs).
"""

from __future__ import annotations

import gzip
import html
import io
import json
import logging
import random
import re
import shutil
import string
import tarfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longdoc.components.core.config import SampleParams, params_dict
from longdoc.components.core.io import (
    atomic_write_bytes,
    atomic_write_text,
    claim_output_dir,
    sha256_tree,
    versions,
    write_manifest,
)

log = logging.getLogger(__name__)

# --- Layout and the placement of evidence ----------------------------------------------------

#: Decisive evidence of a "late" example starts at or after this word: every tokenizer produces
#: at least one token per whitespace word, so this is beyond token 1,024 (and 512) for any of them.
LATE_MIN_WORD = 1150
#: Decisive evidence of an "early" example ends within the first this-many words.
EARLY_MAX_WORD = 300
#: Share of examples whose evidence is late; the rest keep a truncated model honest (not 0%).
LATE_FRACTION = 0.9
#: IMDB-style reviews (and the scoring inbox) are this long, in words, whatever the corpus params.
REVIEW_WORDS = (1200, 2000)
#: Hyperpartisan articles and TriviaQA evidence pages, in words.
ARTICLE_WORDS = (1250, 1900)
#: Share of corpus documents planted a second time, in another container, for dedupe to find.
DUPLICATE_FRACTION = 0.04
#: Fixed timestamp for archive members (tar mtime, zip date_time) so archives are reproducible.
ARCHIVE_MTIME = 315532800  # 1980-01-01T00:00:00Z, the earliest date zip can store
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

#: Top-level entries under `out` that the generator owns (removed and rewritten on each run).
OWNED = (
    "corpus",
    "qangaroo_v1.1",
    "triviaqa",
    "hotpotqa",
    "aclImdb",
    "hyperpartisan",
    "score",
    "manifest.json",
)

# --- The lexicon ------------------------------------------------------------------------------

# Real English cue words; each class gets generated pseudo-words on top (12 per class in all).
POS_REAL = ("brilliant", "superb", "delightful", "wonderful", "masterful")
NEG_REAL = ("dreadful", "awful", "tedious", "clumsy", "dismal")
PARTISAN_REAL = ("disgraceful", "treacherous", "corrupt", "shameful", "radical")
MEASURED_REAL = ("balanced", "careful", "nuanced", "cautious", "reasonable")
CUES_PER_CLASS = 12

_ONSETS = tuple("b d f g h k l m n p r s t v z w y j".split()) * 4 + tuple(
    "br dr gr kr pl st tr th sh ch sk fl".split()
)
_VOWELS = tuple("a e i o u".split()) * 3 + ("ai", "ou", "ea", "ei")
_MID_CODAS = ("", "", "", "", "", "r", "n", "l", "s", "m")
_END_CODAS = ("", "", "", "n", "r", "l", "s", "k", "m", "t", "nd", "rt", "st", "th", "x", "sh")
_NOUN_ENDS = ("", "", "", "en", "ik", "or", "ath", "el")
_ADJ_ENDS = ("ic", "ous", "al", "ish", "ive", "ent", "ary")
_COUNTRY_ENDS = ("ia", "land", "ora", "istan", "ary", "enia")
_LANDMARK_KINDS = (
    "Abbey", "Bridge", "Castle", "Observatory", "Library", "Harbour", "Museum", "Cathedral",
    "Palace", "Lighthouse", "Academy", "Theatre", "Tower", "Gardens",
)  # fmt: skip
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip


@dataclass(frozen=True)
class Lexicon:
    """Every word class the generator draws from; built once per seed and shared by all artefacts.

    Entity pools are lists of capitalised pseudo-words; `persons` are built on the fly from
    `first_names` x `surnames`. The four cue lists are disjoint from every other word class and
    from the template words, so a cue word in a text means exactly one thing.
    """

    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    verbs: tuple[str, ...]  # past tense ("morvaled")
    adverbs: tuple[str, ...]
    first_names: tuple[str, ...]
    surnames: tuple[str, ...]
    cities: tuple[str, ...]
    villages: tuple[str, ...]
    regions: tuple[str, ...]
    countries: tuple[str, ...]
    rivers: tuple[str, ...]  # bare names; texts say "the Tessik River"
    orgs: tuple[str, ...]
    labels: tuple[str, ...]  # record labels
    bands: tuple[str, ...]
    pos_cues: tuple[str, ...]
    neg_cues: tuple[str, ...]
    partisan_cues: tuple[str, ...]
    measured_cues: tuple[str, ...]

    def cue_words(self) -> frozenset[str]:
        return frozenset(self.pos_cues + self.neg_cues + self.partisan_cues + self.measured_cues)


def _syllables(rng: random.Random, n: int) -> str:
    parts = []
    for i in range(n):
        coda = rng.choice(_END_CODAS if i == n - 1 else _MID_CODAS)
        parts.append(rng.choice(_ONSETS) + rng.choice(_VOWELS) + coda)
    return "".join(parts)


def _words(
    rng: random.Random,
    n: int,
    used: set[str],
    syl: tuple[int, int] = (2, 3),
    ends: Sequence[str] = ("",),
    cap: bool = False,
    min_len: int = 4,
) -> tuple[str, ...]:
    """`n` new pseudo-words (not in `used`, which they join), optionally capitalised."""
    out: list[str] = []
    while len(out) < n:
        k = syl[0] if syl[0] == syl[1] or rng.random() < 0.6 else rng.randint(syl[0] + 1, syl[1])
        w = _syllables(rng, k) + rng.choice(ends)
        if len(w) < min_len or len(w) > 11 or w in used:
            continue
        used.add(w)
        out.append(w.capitalize() if cap else w)
    return tuple(out)


def build_lexicon(seed: int = 0) -> Lexicon:
    """The shared vocabulary for `seed` (cheap: a few milliseconds; callers may rebuild it)."""
    rng = random.Random(f"{seed}:lexicon")
    used = set(_TEMPLATE_WORDS) | set(POS_REAL + NEG_REAL + PARTISAN_REAL + MEASURED_REAL)
    k = CUES_PER_CLASS
    pos = POS_REAL + _words(rng, k - len(POS_REAL), used, (1, 2), _ADJ_ENDS)
    neg = NEG_REAL + _words(rng, k - len(NEG_REAL), used, (1, 2), _ADJ_ENDS)
    partisan = PARTISAN_REAL + _words(rng, k - len(PARTISAN_REAL), used, (1, 2), _ADJ_ENDS)
    measured = MEASURED_REAL + _words(rng, k - len(MEASURED_REAL), used, (1, 2), _ADJ_ENDS)
    surnames = _words(rng, 320, used, cap=True)
    cities = _words(rng, 240, used, cap=True)
    sur_pairs = [rng.sample(surnames, 2) for _ in range(60)]
    org_words = _words(rng, 120, used, cap=True)
    suffixes = ("Holdings", "Works", "Institute", "Company", "Foundation", "Group", "Trust")
    orgs = tuple(
        dict.fromkeys(
            [f"{a} & {b}" for a, b in sur_pairs]
            + [f"{w} {rng.choice(suffixes)}" for w in org_words[:100]]
        )
    )
    band_words = _words(rng, 90, used, cap=True)
    return Lexicon(
        nouns=_words(rng, 900, used, ends=_NOUN_ENDS),
        adjectives=_words(rng, 300, used, syl=(1, 2), ends=_ADJ_ENDS),
        verbs=tuple(w + "ed" for w in _words(rng, 260, used, syl=(1, 2))),
        adverbs=tuple(w + "ly" for w in _words(rng, 60, used, syl=(1, 2))),
        first_names=_words(rng, 140, used, syl=(2, 2), cap=True),
        surnames=surnames,
        cities=cities,
        villages=_words(rng, 160, used, cap=True),
        regions=_words(rng, 48, used, cap=True),
        countries=_words(rng, 32, used, syl=(1, 2), ends=_COUNTRY_ENDS, cap=True),
        rivers=_words(rng, 48, used, syl=(2, 2), cap=True),
        orgs=orgs,
        labels=tuple(f"{w} Records" for w in org_words[100:120])
        + tuple(f"{w} Music" for w in _words(rng, 20, used, cap=True)),
        bands=tuple(f"The {w}s" if i % 3 == 0 else w for i, w in enumerate(band_words)),
        pos_cues=pos,
        neg_cues=neg,
        partisan_cues=partisan,
        measured_cues=measured,
    )


# --- Templates ---------------------------------------------------------------------------------
# Slots: N noun, A adjective, V past verb, R adverb, P person, PF first name, C city, G region,
# K country, O organisation, RV river ("Tessik River"), Y year, D number, RT runtime, ORD ordinal,
# WD weekday, MO month, T topic entity (given by the caller), Q cue word (given by the caller).
# Filler templates (everything but RELATIONAL, OPINION, VERDICT, STANCE) contain no cue words and
# none of the relation phrases the QA tasks hinge on, so only the planted sentence answers a task.

ENCYCLOPEDIC = (
    "The {A} {N} of {C} {V} the {N} in {Y}.",
    "{P} {V} the {A} {N} near {C}.",
    "In {Y}, the {N} was {V} by members of {O}.",
    "Most of the {N} in the {G} region is {A}.",
    "The {N} {V} the {N} and {V} the {A} {N}.",
    "It is one of the most {A} {N} in {K}.",
    "After the {N}, {P} {V} the {N} at {C}.",
    "According to {O}, the {N} had {D} {N}.",
    "The {N} is {A} and {A}, with a {N} that {V} the {N}.",
    "Local {N} {V} the {N} during the {A} {N} of {Y}.",
    "Many {N} in {C} were {V} by the {N} of {P}.",
    "The {N} of the {N} {V} {R}.",
    "{P} and {P} {V} the {N} at {O}.",
    "Its {N} {V} {R} across the {G} region.",
    "There are {D} {N} along the {N}, and each one {V} a {A} {N}.",
    "By {Y} the {N} had become a {A} {N}.",
    "The {RV} {V} the {N} east of {C}.",
    "{C}'s {N} was {V} in {Y} and again in {Y}.",
    "The {N} was {R} {V} by the {A} {N}.",
    "Between {Y} and {Y}, the {N} {V} {D} times.",
    "A {A} {N} stands beside the {N} in {C}.",
    "Visitors to {C} often {V} the {A} {N}.",
    "The name of the {N} comes from an old {A} word for {N}.",
    "During the {N}, the {N} was {V} and the {N} {V} the {N}.",
    "The {N} {V} to the {A} {N} of {K} in {Y}.",
    "Several {A} {N} were {V} there in the {ORD} year of the {N}.",
)
TOPICAL = (  # encyclopedic sentences about the page's own subject {T}
    "{T} {V} the {A} {N} in {Y}.",
    "Visitors to {T} often {V} the {N}.",
    "The {N} of {T} is {A} and {A}.",
    "In {Y}, {T} {V} a {A} {N}.",
    "{T} has {D} {N} and a {A} {N}.",
    "The {A} {N} near {T} was {V} in {Y}.",
)
NEWS = (
    "Officials in {C} said on {WD} that the {N} would be {V} by {MO}.",
    "{O} {V} a report on the {A} {N} last {WD}.",
    "{P}, a spokesperson for {O}, said the {N} was still under review.",
    "The council of {C} voted {D} to {D} on the {N}.",
    "Figures released by {O} show that the {N} {V} in {MO}.",
    "Residents of {C} {V} the {N} at a meeting on {WD}.",
    "The {A} {N} is expected to reach the {G} region by {MO}.",
    "{P} told reporters that the {N} had been {V} twice.",
    "A second {N} will be held in {C} next {MO}.",
    "The {N} of {K} {V} the {A} {N} on {WD}.",
    "Members of {O} {V} the {N} for {D} hours.",
    "In a statement, {O} said the {N} {V} the {A} {N}.",
    "The {N} bill passed with {D} votes in {C}.",
    "The vote on the {N} was delayed until {MO}.",
    "Reporters from {C} {V} the {N} on {WD} morning.",
    "The {N} has {V} {D} {N} since {Y}, according to {O}.",
)
FILM = (  # plot and production filler for reviews: no sentiment, nothing tied to a label
    "The story follows {P}, a {A} {N} from {C}, who {V} the {N}.",
    "The film was shot in {C} over {D} weeks in {Y}.",
    "{P} plays the {N}, and {P} plays a {N} who {V} the {N}.",
    "The music was written by {P} and recorded in {C}.",
    "In the second act, the {N} {V} the {N} near the {A} {N}.",
    "The running time is {RT} minutes.",
    "Most of the scenes take place in a {A} {N} outside {C}.",
    "The screenplay was adapted from a {N} by {P}.",
    "Later the {N} {V} the {N}, and {P} {V} the {N}.",
    "The film was released by {O} in {Y}.",
    "The cast also includes {P}, {P} and {P}.",
    "The {N} was made on a set in {C}.",
    "It was the {ORD} film directed by {P}.",
    "In one scene the {N} {V} a {A} {N} while the {N} {V} the {N}.",
    "The plot turns on a {N} that {P} {V} in {C}.",
    "The opening shows a {A} {N} at dawn.",
    "Halfway through, the {N} {V} the {N} of {P}.",
    "The camera stays on the {N} for most of the last act.",
    "I saw it on a {WD} evening with a {N} from {C}.",
    "The costumes were made by {O}.",
    "Much of the dialogue is about the {N} and the {N}.",
    "The {N} of the {A} {N} is explained in the last scene.",
    "Before the film was made, {P} {V} the {N} for {D} years.",
    "The {N} {V} the {N} {R}, and the {N} {V} it.",
)
STORY = (
    "{PF} {V} the {A} {N} and {V} to the {N}.",
    "The {N} was {A}, and {PF} {V} it {R}.",
    "When the {N} {V}, {PF} {V} the {N}.",
    '"The {N} is {A}," said {PF}.',
    "{PF} and {PF} {V} the {N} by the {N}.",
    "Outside, the {N} {V} {R}.",
    "That night the {A} {N} {V} the {N}.",
    "Nobody in {C} had {V} such a {N}.",
    "{PF} {V} the {N} for {D} days.",
)
RELATIONAL = (  # corpus only: the relation frames the QA tasks use, with random arguments
    "{P} was born in {C} in {Y}.",
    "{C} is a {A} city in {K}.",
    "{P} worked for {O} for {D} years.",
    "{O} is a {A} company based in {C}.",
    "{O} was founded in {Y}.",
    "{P} is a {A} {N} from {K}.",
    "{VL} is a village in the {C} district.",
    "The {C} district lies in the {G} region.",
    "{LM} was designed by {P}.",
    "{LM} was built by {O}.",
    "{LM} was founded by {P} in {Y}.",
    "The river that flows past {LM} is the {RV}.",
    "{AL} is the {ORD} studio album by {B}.",
    "{B} signed with {L} in {Y}.",
    "{B} is a {A} band formed in {C} in {Y}.",
)
OPINION = (  # cue sentences for the corpus: {Q} draws from one class per sentence
    "Some critics called the {N} {Q} and {Q}.",
    "Others thought the {N} was {Q}, even {Q}.",
    "The {N} was described as {Q} by {P}.",
    "Readers of {O} found the {N} {Q}.",
    "Audiences in {C} called it {Q}.",
)
VERDICT = (  # the IMDB verdict: the same templates for both classes, only {Q} differs
    "Overall the film was {Q}, {Q} and {Q}.",
    "I found the acting {Q} and the ending {Q}.",
    "In the end it is {Q} work, {Q} from start to finish and {Q} at heart.",
    "The direction felt {Q}, the script was {Q}, and the music was {Q}.",
    "My verdict: {Q}, simply {Q}, truly {Q}.",
    "Honestly, the whole thing is {Q}, even {Q}.",
    "Every scene with the lead was {Q} and {Q}.",
    "I would call it {Q}, {Q} and {Q}.",
)
STANCE = (  # the Hyperpartisan cue paragraph: shared templates, class-specific {Q}
    "Observers described the {N} as {Q} and {Q}.",
    "The response from {O} was {Q}, and the debate that followed was {Q}.",
    "Many readers will find the {N} {Q}, perhaps even {Q}.",
    "It is a {Q} position, and the {N} behind it is {Q}.",
    "The tone of the statement by {P} was {Q}.",
    "This {N} is {Q}, and the people of {K} deserve to know it.",
)
FILLER_TEMPLATES = ENCYCLOPEDIC + TOPICAL + NEWS + FILM + STORY
#: Relation phrases that answer a QA example; no filler template may contain one.
KEY_PHRASES = (
    "born in", "city in", "worked for", "based in", "founded in", "founded by", "designed by",
    "built by", "flows past", "village in", "district", "studio album", "signed with",
    "formed in", "from {K}",
)  # fmt: skip

_SLOT = re.compile(r"\{(\w+)\}")
_TEMPLATE_WORDS = frozenset(
    w.lower()
    for t in FILLER_TEMPLATES + RELATIONAL + OPINION + VERDICT + STANCE
    for w in re.findall(r"[A-Za-z]+", _SLOT.sub(" ", t))
) | frozenset(
    w.lower()
    for w in " ".join(_LANDMARK_KINDS + _ORDINALS + _WEEKDAYS + _MONTHS).split()
    + "Holdings Works Institute Company Foundation Group Trust Records Music River".split()
)


# --- Text generation ---------------------------------------------------------------------------


def nwords(s: str) -> int:
    return s.count(" ") + 1


class TextGen:
    """Fills templates from the lexicon with one RNG stream.

    `exclude` holds entity strings (and surnames) that filler must not mention: a QA example puts
    its subject, bridge and answer there so they occur only where the example plants them.
    """

    def __init__(self, lex: Lexicon, rng: random.Random) -> None:
        self.lex = lex
        self.rng = rng
        self.exclude: set[str] = set()
        self._extra: dict[str, Any] = {}
        r = rng.random
        self._r = r
        self._slots: dict[str, Callable[[], str]] = {
            "N": lambda: lex.nouns[int(len(lex.nouns) * r() ** 2)],  # Zipf-like: a few are common
            "A": lambda: lex.adjectives[int(len(lex.adjectives) * r() ** 2)],
            "V": lambda: lex.verbs[int(len(lex.verbs) * r() ** 2)],
            "R": lambda: lex.adverbs[int(len(lex.adverbs) * r())],
            "P": self.person,
            "PF": lambda: self.pick(lex.first_names),
            "C": lambda: self.pick(lex.cities),
            "VL": lambda: self.pick(lex.villages),
            "G": lambda: self.pick(lex.regions),
            "K": lambda: self.pick(lex.countries),
            "O": lambda: self.pick(lex.orgs),
            "L": lambda: self.pick(lex.labels),
            "B": lambda: self.pick(lex.bands),
            "RV": lambda: self.pick(lex.rivers) + " River",
            "LM": self.landmark,
            "AL": self.album,
            "Y": lambda: str(rng.randint(1850, 2015)),
            "D": lambda: str(rng.randint(2, 60)),
            "RT": lambda: str(rng.randint(85, 175)),
            "ORD": lambda: rng.choice(_ORDINALS),
            "WD": lambda: rng.choice(_WEEKDAYS),
            "MO": lambda: rng.choice(_MONTHS),
        }

    # entities
    def pick(self, pool: Sequence[str]) -> str:
        for _ in range(1000):
            v = pool[int(len(pool) * self._r())]
            if v not in self.exclude:
                return v
        raise RuntimeError("entity pool exhausted by exclusions")  # pools are far larger

    def person(self) -> str:
        lex, ex = self.lex, self.exclude
        while True:
            first = lex.first_names[int(len(lex.first_names) * self._r())]
            sur = lex.surnames[int(len(lex.surnames) * self._r())]
            full = f"{first} {sur}"
            if first not in ex and sur not in ex and full not in ex:
                return full

    def landmark(self) -> str:
        return f"{self.pick(self.lex.cities)} {self.rng.choice(_LANDMARK_KINDS)}"

    def album(self) -> str:
        a = self.lex.adjectives[int(len(self.lex.adjectives) * self._r())]
        n = self.lex.nouns[int(len(self.lex.nouns) * self._r())]
        return f"{a.capitalize()} {n.capitalize()}"

    # sentences
    def _rep(self, m: re.Match[str]) -> str:
        key = m.group(1)
        v = self._extra.get(key)
        if v is None:
            return self._slots[key]()
        return v() if callable(v) else v

    def fill(self, template: str, **extra: Any) -> str:
        """`template` with its slots filled; `extra` maps slot names to fixed strings or
        zero-argument callables."""
        self._extra = extra
        return _SLOT.sub(self._rep, template)

    def sent(self, template: str, **extra: Any) -> str:
        """One sentence: `fill`, with the first letter capitalised."""
        s = self.fill(template, **extra)
        return s[0].upper() + s[1:]

    def paragraphs(
        self,
        templates: Sequence[str],
        n_words: int,
        sent_range: tuple[int, int] = (3, 8),
        special: Sequence[str] = (),
        special_rate: float = 0.0,
        **extra: Any,
    ) -> tuple[list[list[str]], int]:
        """Paragraphs (lists of sentences) of at least `n_words` words in all, and the count.

        With probability `special_rate` a sentence comes from `special` instead of `templates`.
        """
        rng = self.rng
        paras: list[list[str]] = []
        total = 0
        while total < n_words:
            para = []
            for _ in range(rng.randint(*sent_range)):
                pool = special if special and rng.random() < special_rate else templates
                s = self.sent(rng.choice(pool), **extra)
                para.append(s)
                total += nwords(s)
                if total >= n_words:
                    break
            paras.append(para)
        return paras, total


def _boundaries(paras: list[list[str]]) -> list[tuple[int, int, int]]:
    """(paragraph index, sentence index, words before) for every sentence boundary, end included."""
    out = []
    pos = 0
    for pi, para in enumerate(paras):
        for si, s in enumerate(para):
            out.append((pi, si, pos))
            pos += nwords(s)
    out.append((len(paras), 0, pos))
    return out


def insert_block(
    paras: list[list[str]],
    block: list[str],
    late: bool,
    rng: random.Random,
    own_paragraph: bool = True,
) -> tuple[list[list[str]], int]:
    """Insert the sentences `block` at a sentence boundary and return (paragraphs, word index).

    Late: a uniformly chosen boundary at or after LATE_MIN_WORD. Early: one where the block still
    ends within EARLY_MAX_WORD. With `own_paragraph` the block becomes its own paragraph (splitting
    the one it lands in); otherwise it joins the paragraph at that point.
    """
    bounds = _boundaries(paras)
    size = sum(nwords(s) for s in block)
    if late:
        cands = [b for b in bounds if b[2] >= LATE_MIN_WORD] or bounds[-1:]
    else:
        cands = [b for b in bounds if b[2] + size <= EARLY_MAX_WORD] or bounds[:1]
    pi, si, pos = rng.choice(cands)
    if own_paragraph:
        if pi == len(paras):
            return [*paras, list(block)], pos
        head, tail = paras[pi][:si], paras[pi][si:]
        new = paras[:pi] + ([head] if head else []) + [list(block), tail] + paras[pi + 1 :]
        return new, pos
    if pi == len(paras):
        return [*paras[:-1], paras[-1] + list(block)], pos
    para = paras[pi]
    return paras[:pi] + [para[:si] + list(block) + para[si:]] + paras[pi + 1 :], pos


def cue_picker(rng: random.Random, cues: Sequence[str]) -> Callable[[], str]:
    """Draw cue words with Zipf-like weights (1/rank), as real reviews lean on a few favourite
    words: a class's cue words then share a stronger common direction, which is what a small
    model has to find first."""
    cum, acc = [], 0.0
    for k in range(len(cues)):
        acc += 1.0 / (k + 1)
        cum.append(acc)
    return lambda: rng.choices(cues, cum_weights=cum)[0]


def _late_flags(n: int, rng: random.Random) -> list[bool]:
    """Exactly round(LATE_FRACTION * n) late examples (all of them when n is tiny), shuffled."""
    n_early = int(round(n * (1 - LATE_FRACTION)))
    flags = [False] * n_early + [True] * (n - n_early)
    rng.shuffle(flags)
    return flags


def _join(paras: list[list[str]], sep: str = "\n\n") -> str:
    return sep.join(" ".join(p) for p in paras)


def _trim(paras: list[list[str]], total: int, max_words: int) -> list[list[str]]:
    """Cut the last sentence so the text has at most `max_words` words (the overshoot of
    `paragraphs` is always less than its last sentence)."""
    if total <= max_words:
        return paras
    words = paras[-1][-1].split(" ")
    keep = len(words) - (total - max_words)
    cut = " ".join(words[:keep]).rstrip(",;:.") + "."
    return paras[:-1] + [paras[-1][:-1] + [cut]]


def triviaqa_normalize(s: str) -> str:
    """TriviaQA's answer normalisation (triviaqa_evaluation.normalize_answer): underscores to
    spaces, lowercase, punctuation to spaces, drop the articles a/an/the, collapse whitespace."""
    s = s.replace("_", " ").lower()
    exclude = set(string.punctuation + "\u2018\u2019\u00b4`")
    s = "".join(" " if ch in exclude else ch for ch in s)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split()).strip()


def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


# --- Archives (reproducible bytes) -------------------------------------------------------------


def tar_gz_bytes(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A .tar.gz with sorted members, fixed mtime/owner/mode and a gzip header without name/time."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = ARCHIVE_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), compresslevel=6, mtime=0)


def zip_bytes(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A deflated .zip with sorted members and a fixed date on each."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, data, compresslevel=6)
    return buf.getvalue()


def _html_page(title: str, paras: Sequence[str], n: int) -> str:
    """A web page whose only text is `paras` in <p> elements: the <title>, <style> and <script>
    blocks are there for the ingester to skip (the script even holds sentence-like strings)."""
    body = "\n".join(f"<p>{html.escape(p)}</p>" for p in paras)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        "<style>\nbody { font-family: serif; margin: 2em; }\np.note > a { color: #336; }\n"
        "</style>\n"
        f'<script>\nvar page = {{"id": {n}, "note": "this script text is not content"}};\n'
        'function track() { return "never index the words in a script block"; }\n</script>\n'
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


# --- Corpus -------------------------------------------------------------------------------------

_GENRES = ("encyclopedia", "news", "review", "story")
TEXT_CONTAINERS = ("txt", "jsonl", "tar_txt", "zip")
CONTAINERS = ("txt", "jsonl", "tar_txt", "tar_html", "zip")
_CONTAINER_WEIGHTS = (30, 25, 15, 10, 20)


def _corpus_doc(g: TextGen, n_words: int, max_words: int) -> tuple[str, str]:
    """(title, text) of one corpus document of n_words..max_words words, paragraphs separated by
    blank lines. Reviews, news and stories carry opinion sentences with cue words (one class per
    document, as real reviews and op-eds lean one way), so the tokenizer and the MLM see every cue
    word in context; encyclopedic pages carry the relation frames the QA tasks ask about."""
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
    paras, total = g.paragraphs(templates, n_words, (3, 9), special, rate, T=title, Q=cue_pick)
    return title, _join(_trim(paras, total, max_words))


def write_corpus(out: Path, params: SampleParams, lex: Lexicon) -> dict[str, Any]:
    rng = random.Random(f"{params.seed}:corpus")
    g = TextGen(lex, rng)
    n = params.corpus_docs
    n_dup = max(1, round(n * DUPLICATE_FRACTION)) if n >= 2 else 0
    n_unique = n - n_dup
    # every container gets a document first (small samples too), then weighted draws
    first = list(CONTAINERS)
    rng.shuffle(first)
    where = first[:n_unique] + rng.choices(
        CONTAINERS, weights=_CONTAINER_WEIGHTS, k=max(0, n_unique - len(CONTAINERS))
    )
    docs: list[dict[str, Any]] = []
    for i in range(n_unique):
        title, text = _corpus_doc(
            g, rng.randint(params.min_words, params.max_words), params.max_words
        )
        docs.append({"i": i, "title": title, "text": text, "container": where[i]})
    text_docs = [d for d in docs if d["container"] in TEXT_CONTAINERS]
    for src in rng.sample(text_docs, min(n_dup, len(text_docs))):
        other = rng.choice([c for c in TEXT_CONTAINERS if c != src["container"]])
        docs.append({**src, "i": len(docs), "container": other, "duplicate_of": src["i"]})
    planted = len(docs) - n_unique

    def name(d: dict[str, Any], ext: str = "txt") -> str:
        return f"{slug(d['title'])[:40]}-{d['i']:05d}.{ext}"

    counts = dict.fromkeys(CONTAINERS, 0)
    jsonl: list[str] = []
    tar_members: list[tuple[str, bytes]] = []
    zip_members: list[tuple[str, bytes]] = []
    for d in docs:
        c = d["container"]
        counts[c] += 1
        data = d["text"].encode("utf-8")
        if c == "txt":
            atomic_write_bytes(out / "corpus" / "txt" / name(d), data)
        elif c == "jsonl":
            rec = {"id": f"doc-{d['i']:05d}", "title": d["title"], "text": d["text"]}
            jsonl.append(json.dumps(rec, ensure_ascii=False))
        elif c == "tar_txt":
            tar_members.append((f"web/{name(d)}", data))
        elif c == "tar_html":
            page = _html_page(d["title"], d["text"].split("\n\n"), d["i"])
            tar_members.append((f"web/pages/{name(d, 'html')}", page.encode("utf-8")))
        else:
            sub = "bundle/archive/" if len(zip_members) % 2 else "bundle/"  # some in a subfolder
            zip_members.append((sub + name(d), data))
    jsonl_bytes = ("\n".join(jsonl) + "\n").encode("utf-8") if jsonl else b""
    atomic_write_bytes(out / "corpus" / "docs.jsonl.gz", gzip.compress(jsonl_bytes, 6, mtime=0))
    atomic_write_bytes(out / "corpus" / "web.tar.gz", tar_gz_bytes(tar_members))
    atomic_write_bytes(out / "corpus" / "bundle.zip", zip_bytes(zip_members))
    (out / "corpus" / "txt").mkdir(parents=True, exist_ok=True)
    return {
        "documents": len(docs),
        "unique_documents": n_unique,
        "duplicates_planted": planted,
        "per_container": counts,
        "words": sum(nwords(d["text"].replace("\n\n", " ")) for d in docs),
    }


# --- IMDB (and the scoring inbox) ---------------------------------------------------------------


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
    return _join(paras, "<br /><br />")


def write_imdb(out: Path, params: SampleParams, lex: Lexicon) -> dict[str, Any]:
    rng = random.Random(f"{params.seed}:imdb")
    g = TextGen(lex, rng)
    counts: dict[str, int] = {}
    late_total = 0
    positions: list[int] = []
    for split, n in (("train", params.imdb_train), ("test", params.imdb_test)):
        n_pos = (n + 1) // 2
        for label, k in (("pos", n_pos), ("neg", n - n_pos)):
            flags = _late_flags(k, rng)
            for i, late in enumerate(flags):
                paras, pos = make_review(g, label, late)
                rating = rng.randint(7, 10) if label == "pos" else rng.randint(1, 4)
                path = out / "aclImdb" / split / label / f"{i}_{rating}.txt"
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


def write_score_inbox(out: Path, params: SampleParams, lex: Lexicon) -> dict[str, Any]:
    """Unlabeled reviews made like IMDB's, as an archive `score` reads; a couple are web pages.
    The labels go to a separate file so a user can check the predictions."""
    rng = random.Random(f"{params.seed}:score")
    g = TextGen(lex, rng)
    n = params.score_docs
    labels = ["pos"] * ((n + 1) // 2) + ["neg"] * (n // 2)
    rng.shuffle(labels)
    flags = _late_flags(n, rng)
    html_every = max(2, n // 2) if n >= 2 else n + 1  # a couple of .html members
    members, truth = [], {}
    for i, (label, late) in enumerate(zip(labels, flags, strict=True)):
        paras, _ = make_review(g, label, late)
        if i % html_every == html_every - 1:
            name = f"review_{i:04d}.html"
            data = _html_page(f"Review {i}", [" ".join(p) for p in paras], i)
        else:
            name = f"review_{i:04d}.txt"
            data = review_text(paras)
        members.append((name, data.encode("utf-8")))
        truth[name] = label
    atomic_write_bytes(out / "score" / "inbox.tar.gz", tar_gz_bytes(members))
    atomic_write_text(
        out / "score" / "inbox_labels.json", json.dumps(truth, indent=2, sort_keys=True) + "\n"
    )
    return {
        "documents": n,
        "html_members": sum(m[0].endswith(".html") for m in members),
        "pos": labels.count("pos"),
        "neg": labels.count("neg"),
    }


# --- Hyperpartisan ------------------------------------------------------------------------------


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


def write_hyperpartisan(out: Path, params: SampleParams, lex: Lexicon) -> dict[str, Any]:
    """Articles whose stance shows only in one paragraph of stance sentences (partisan cue words
    for hyperpartisan articles, measured ones for the rest), placed deep in most articles."""
    rng = random.Random(f"{params.seed}:hyperpartisan")
    g = TextGen(lex, rng)
    n = params.task_train + params.task_dev
    labels = [True] * ((n + 1) // 2) + [False] * (n // 2)
    rng.shuffle(labels)
    flags = _late_flags(n, rng)
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
    d = out / "hyperpartisan"
    atomic_write_text(
        d / "articles-training-byarticle.xml", head + "\n".join(articles) + "\n</articles>\n"
    )
    atomic_write_text(
        d / "ground-truth-training-byarticle.xml", head + "\n".join(truth) + "\n</articles>\n"
    )
    return {"articles": n, "hyperpartisan": sum(labels), "late": sum(flags)}


# --- WikiHop ------------------------------------------------------------------------------------

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
            f"{subj} is the {rng.choice(_ORDINALS)} studio album by {bridge}.",
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


def write_wikihop(out: Path, params: SampleParams, lex: Lexicon) -> dict[str, Any]:
    rng = random.Random(f"{params.seed}:wikihop")
    g = TextGen(lex, rng)
    counts = {}
    for split, n in (("train", params.task_train), ("dev", params.task_dev)):
        flags = _late_flags(n, rng)
        data = [_wikihop_example(g, f"WH_{split}_{i}", late) for i, late in enumerate(flags)]
        atomic_write_text(out / "qangaroo_v1.1" / "wikihop" / f"{split}.json", json.dumps(data))
        counts[split] = n
    return counts


# --- TriviaQA -----------------------------------------------------------------------------------

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


def write_triviaqa(out: Path, params: SampleParams, lex: Lexicon) -> dict[str, Any]:
    """Questions about a landmark, each answered by one sentence of its (long) Wikipedia-style
    evidence page that repeats the question's key phrase next to the answer; a second, answerless
    page about the landmark's city comes with a third of the questions."""
    rng = random.Random(f"{params.seed}:triviaqa")
    g = TextGen(lex, rng)
    root = out / "triviaqa"
    titles: set[str] = set()
    city_pages: dict[str, str] = {}
    counts: dict[str, int] = {}
    for split, n in (("train", params.task_train), ("dev", params.task_dev)):
        data = []
        for i, late in enumerate(_late_flags(n, rng)):
            while (title := g.landmark()) in titles:
                pass
            titles.add(title)
            city = title.rsplit(" ", 1)[0]
            questions, key, kind = rng.choice(_TRIVIA_KINDS)
            value, aliases, avoid = _trivia_answer(g, kind)
            g.exclude = avoid | {title}
            intro = g.sent("{T} is a {A} landmark in {C}, in the {G} region.", T=title, C=city)
            body, _ = g.paragraphs(
                ENCYCLOPEDIC + TOPICAL * 2, rng.randint(*ARTICLE_WORDS), (4, 9), T=title
            )
            key_sent = key.replace("{T}", title).replace("{ANS}", value)
            answer_sent = g.sent(rng.choice(_TRIVIA_FRAMES), KEY=key_sent)
            paras, _ = insert_block([[intro], *body], [answer_sent], late, rng, own_paragraph=False)
            fname = f"{title.replace(' ', '_')}.txt"
            atomic_write_text(root / "evidence" / "wikipedia" / fname, _join(paras) + "\n")
            pages = [{"DocSource": "TagMe", "Filename": fname, "Title": title}]
            if rng.random() < 0.33:
                if city not in city_pages:
                    g.exclude = set()
                    cp, _ = g.paragraphs(ENCYCLOPEDIC, rng.randint(300, 600), (4, 8))
                    lead = f"{city} is a city in the {g.pick(lex.regions)} region."
                    city_pages[city] = _join([[lead], *cp]) + "\n"
                    atomic_write_text(root / "evidence/wikipedia" / f"{city}.txt", city_pages[city])
                pages.append({"DocSource": "TagMe", "Filename": f"{city}.txt", "Title": city})
            g.exclude = set()
            prefix, source = rng.choice(_TRIVIA_SOURCES)
            norm = [triviaqa_normalize(a) for a in aliases]
            data.append(
                {
                    "Answer": {
                        "Aliases": aliases,
                        "MatchedWikiEntityName": value,
                        "NormalizedAliases": norm,
                        "NormalizedMatchedWikiEntityName": triviaqa_normalize(value),
                        "NormalizedValue": triviaqa_normalize(value),
                        "Type": "WikipediaEntity",
                        "Value": value,
                    },
                    "EntityPages": pages,
                    "Question": rng.choice(questions).replace("{T}", title),
                    "QuestionId": f"{prefix}_{split}_{i}",
                    "QuestionSource": source,
                }
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


# --- HotpotQA -----------------------------------------------------------------------------------


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


def _hotpot_example(g: TextGen, late: bool, level: str) -> dict[str, Any]:
    rng, lex = g.rng, g.lex
    y = lambda: str(rng.randint(1850, 2015))  # noqa: E731
    kind = rng.random()
    # gold: [(title, intro sentence or "" when the fact itself opens the paragraph, [facts])];
    # fake(): (title, templates) of a distractor stating the same relations for other entities
    if kind < 0.3:  # bridge: person -> company -> city
        p, o, c = g.person(), g.pick(lex.orgs), g.pick(lex.cities)
        g.exclude = {p, o, c, *p.split()}
        what, years = g.fill("{A} {N}"), rng.randint(2, 30)
        gold = [
            (p, f"{p} is a {what}.", [f"{p} worked for {o} for {years} years."]),
            (o, f"{o} is an organisation.", [f"{o} is a {g.fill('{A}')} company based in {c}."]),
        ]
        q = f"In which city is the company that {p} worked for based?"
        answer, qtype = c, "bridge"

        def fake() -> tuple[str, list[str]]:
            if rng.random() < 0.5:
                return g.person(), ["{S} worked for {O} for {D} years."]
            return g.pick(lex.orgs), ["{S} is a {A} company based in {C}."]

    elif kind < 0.6:  # bridge: album -> band -> city
        al, b, c = g.album(), g.pick(lex.bands), g.pick(lex.cities)
        g.exclude = {al, b, c}
        ordinal = rng.choice(_ORDINALS)
        gold = [
            (al, f"{al} is a record.", [f"{al} is the {ordinal} studio album by {b}."]),
            (b, f"{b} are a group.", [f"{b} is a {g.fill('{A}')} band formed in {c} in {y()}."]),
        ]
        q = f"In which city was the band that recorded {al} formed?"
        answer, qtype = c, "bridge"

        def fake() -> tuple[str, list[str]]:
            if rng.random() < 0.5:
                return g.album(), ["{S} is the {ORD} studio album by {B}."]
            return g.pick(lex.bands), ["{S} is a {A} band formed in {C} in {Y}."]

    elif kind < 0.8:  # comparison: founding years
        o1, o2 = rng.sample(lex.orgs, 2)
        y1, y2 = rng.sample(range(1850, 2015), 2)
        g.exclude = {o1, o2}
        gold = [
            (o1, f"{o1} is an organisation.", [f"{o1} was founded in {y1}."]),
            (o2, f"{o2} is an organisation.", [f"{o2} was founded in {y2}."]),
        ]
        q = f"Which was founded first, {o1} or {o2}?"
        answer, qtype = (o1 if y1 < y2 else o2), "comparison"

        def fake() -> tuple[str, list[str]]:
            return g.pick(lex.orgs), ["{S} was founded in {Y}."]

    else:  # comparison with a yes/no answer: nationality
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
        q = f"Were {p1} and {p2} of the same nationality?"
        answer, qtype = ("yes" if k1 == k2 else "no"), "comparison"

        def fake() -> tuple[str, list[str]]:
            return g.person(), ["{S} is a {A} {N} from {K}."]

    gold_paras = []
    for title, intro, facts in gold:
        if intro:
            sents, idx = _hotpot_paragraph(g, intro, facts, rng.randint(90, 150))
        else:  # the fact opens the paragraph, as a Wikipedia lead sentence would
            sents, idx = _hotpot_paragraph(g, facts[0], [], rng.randint(90, 150))
            idx = [0]
        gold_paras.append((title, sents, idx))
    taken = {t for t, _, _ in gold_paras}
    distractors = []
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
    g.exclude = set()
    # place the gold paragraphs: late = after distractors worth LATE_MIN_WORD words
    rng.shuffle(gold_paras)
    if late:
        acc, k = 0, 0
        while k < len(distractors) and acc < LATE_MIN_WORD:
            acc += sum(nwords(s.strip()) for s in distractors[k][1])
            k += 1
        first = rng.randint(k, len(distractors))
        second = rng.randint(first, len(distractors))
        context = (
            distractors[:first]
            + [gold_paras[0]]
            + distractors[first:second]
            + [gold_paras[1]]
            + distractors[second:]
        )
    else:
        context = gold_paras + distractors
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


def write_hotpotqa(out: Path, params: SampleParams, lex: Lexicon) -> dict[str, Any]:
    rng = random.Random(f"{params.seed}:hotpotqa")
    g = TextGen(lex, rng)
    counts = {}
    files = (
        ("train", params.task_train, "hotpot_train_v1.1.json"),
        ("dev", params.task_dev, "hotpot_dev_distractor_v1.json"),
    )
    for split, n, fname in files:
        data = []
        for late in _late_flags(n, rng):
            level = "hard" if split == "dev" else rng.choice(("easy", "medium", "hard"))
            data.append(_hotpot_example(g, late, level))
        atomic_write_text(out / "hotpotqa" / fname, json.dumps(data))
        counts[split] = n
        counts[f"{split}_yes_no"] = sum(d["answer"] in ("yes", "no") for d in data)
    return counts


# --- Entry point --------------------------------------------------------------------------------


def _prepare(out: Path, force: bool = False) -> None:
    """Make `out` ours and empty of a previous sample, so no stale file survives a smaller rerun.

    A directory that has content but no longdoc marker (`io.claim_output_dir`; the old
    `.longdoc-sample` marker counts) is refused unless `force`: the generator never deletes data
    it did not write (someone pointing --out at a real aclImdb must not lose it).
    """
    claim_output_dir(out, "sample", force=force)
    for name in OWNED:  # manifest first: a half-rewritten sample must not look complete
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def write_sample(params: SampleParams) -> dict[str, Any]:
    """Write the whole sample under `params.out`; return the summary also saved as manifest.json.

    Fully determined by `params` (same seed, same bytes). Takes a few seconds at the defaults.
    """
    out = Path(params.out)
    t0 = time.time()
    _prepare(out, params.force)
    lex = build_lexicon(params.seed)
    steps: list[tuple[str, Callable[[Path, SampleParams, Lexicon], dict[str, Any]]]] = [
        ("corpus", write_corpus),
        ("wikihop", write_wikihop),
        ("triviaqa", write_triviaqa),
        ("hotpotqa", write_hotpotqa),
        ("imdb", write_imdb),
        ("hyperpartisan", write_hyperpartisan),
        ("score", write_score_inbox),
    ]
    counts: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name, fn in steps:
        t = time.time()
        counts[name] = fn(out, params, lex)
        timings[name] = round(time.time() - t, 3)
        log.info("sample: %s written in %.1fs: %s", name, timings[name], counts[name])
    paths = {
        "corpus": "corpus",
        "wikihop": "qangaroo_v1.1/wikihop",
        "triviaqa": "triviaqa",
        "hotpotqa": "hotpotqa",
        "imdb": "aclImdb",
        "hyperpartisan": "hyperpartisan",
        "score": "score/inbox.tar.gz",
        "score_labels": "score/inbox_labels.json",
    }
    summary: dict[str, Any] = {
        "stage": "sample",
        "out": str(out),
        "params": params_dict(params),
        "counts": counts,
        "corpus_duplicates_planted": counts["corpus"]["duplicates_planted"],
        "paths": {k: str(out / v) for k, v in paths.items()},
        "sha256": {k: sha256_tree(out / v) for k, v in paths.items()},
        "placement": {
            "late_min_word": LATE_MIN_WORD,
            "early_max_word": EARLY_MAX_WORD,
            "late_fraction": LATE_FRACTION,
            "review_words": list(REVIEW_WORDS),
        },
        "cues": {
            "imdb_pos": list(lex.pos_cues),
            "imdb_neg": list(lex.neg_cues),
            "hyperpartisan_true": list(lex.partisan_cues),
            "hyperpartisan_false": list(lex.measured_cues),
        },
        "versions": versions(),
        "timings_s": {**timings, "total": round(time.time() - t0, 3)},
    }
    write_manifest(out, **summary)
    return summary
