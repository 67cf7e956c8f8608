"""The shared text machinery of the sample: one seeded lexicon, sentence templates, a template
filler, and the placement of decisive evidence early or late in a document.

Text is English-like but invented: English function words around pseudo-words built from
syllables by a seeded RNG, filled into sentence templates. One shared lexicon feeds the corpus and
all tasks, so the tokenizer trained on the corpus knows every word the tasks use, the sentiment and
stance cue words included (the corpus uses them in opinion sentences).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh")
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
    for w in " ".join(_LANDMARK_KINDS + ORDINALS + _WEEKDAYS + _MONTHS).split()
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
            "ORD": lambda: rng.choice(ORDINALS),
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


def late_flags(n: int, rng: random.Random) -> list[bool]:
    """Exactly round(LATE_FRACTION * n) late examples (all of them when n is tiny), shuffled."""
    n_early = int(round(n * (1 - LATE_FRACTION)))
    flags = [False] * n_early + [True] * (n - n_early)
    rng.shuffle(flags)
    return flags


def join_paragraphs(paras: list[list[str]], sep: str = "\n\n") -> str:
    return sep.join(" ".join(p) for p in paras)


def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")
