"""The five fine-tuning tasks: loaders for their files as distributed, official metrics and
prediction-file formats. One module per task (`imdb`, `hyperpartisan`, `wikihop`, `triviaqa`,
`hotpotqa`); this module holds the example types they yield, which the fine-tuning code consumes.

Each task module exposes:
    NAME: str                     the task name used on the CLI and in `longdoc-<task>`
    PRIMARY_METRIC: str           the dev metric that decides champion promotion
    GOLD_PATH, PREDICTIONS_FORMAT: str   what `longdoc evaluate` takes, for its --help
    load(root, split) -> LoadResult   split is "train" or "dev"; malformed records are skipped
                                  and reported (file, index, reason), never fatal (triviaqa's
                                  also takes domain="wikipedia"|"web" and limit=N)
    evaluate(gold, predictions) -> dict   gold: the dev LoadResult's examples; predictions in the
                                  official prediction-file format (a dict)
    load_gold(path) -> LoadResult the gold examples for scoring, from the path a user gives
                                  `longdoc evaluate --gold` (the dev file, or the task root)
    load_predictions(path) -> dict    a prediction file, validated against the official format
    write_predictions(path, predictions)  validate, then write atomically

`task_module(name)` returns the module for a task name; `TASKS` lists the names.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

TASKS = ("wikihop", "triviaqa", "hotpotqa", "imdb", "hyperpartisan")


def task_module(name: str) -> ModuleType:
    """The module implementing task `name` (imported lazily: each pulls in only what it needs)."""
    if name not in TASKS:
        from longdoc.components.core.io import InputError

        raise InputError(f"unknown task {name!r}; expected one of: {', '.join(TASKS)}")
    return importlib.import_module(f"longdoc.components.tasks.{name}")


@dataclass(frozen=True)
class ClassificationExample:
    """IMDB, Hyperpartisan: one document, one label (index into the task's LABELS)."""

    id: str
    text: str
    label: int | None


@dataclass(frozen=True)
class ChoiceExample:
    """WikiHop: pick one of `candidates` for `query` given the `supports` documents."""

    id: str
    query: str
    candidates: tuple[str, ...]
    supports: tuple[str, ...]
    answer: int | None  # index into candidates


@dataclass(frozen=True)
class Document:
    title: str
    text: str


@dataclass(frozen=True)
class SpanExample:
    """TriviaQA: extract an answer span from the evidence `documents`."""

    id: str  # QuestionId
    question: str
    documents: tuple[Document, ...]
    answers: tuple[str, ...]  # Value first, then the aliases (all count as correct)
    # what the official script scores against: NormalizedAliases (+ normalized HumanAnswers);
    # empty = normalize `answers`
    normalized: tuple[str, ...] = ()


@dataclass(frozen=True)
class HotpotExample:
    """HotpotQA (distractor): answer span or yes/no, plus supporting sentences."""

    id: str
    question: str
    context: tuple[tuple[str, tuple[str, ...]], ...]  # (title, sentences)
    answer: str | None
    supporting_facts: tuple[tuple[str, int], ...]  # (title, sentence index)
    type: str | None  # "comparison" | "bridge"
    level: str | None


@dataclass(frozen=True)
class Skipped:
    """A malformed record that a loader left out, and why."""

    file: str
    index: int  # position of the record in its file (or -1 for a whole-file problem)
    reason: str


@dataclass
class LoadResult:
    examples: list = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    # records kept despite a problem worth knowing (e.g. a HotpotQA supporting fact that names a
    # sentence outside the context, as a few in the real train set do)
    notes: list[Skipped] = field(default_factory=list)
