"""The fine-tuning tasks and their one registry.

A task is one module that ends with one `register_module(__name__, ...)` (or
`register(Task(...))`): its loader, official metric and prediction-file format, the kind of
adapter that windows, heads and aggregates it for fine-tuning, its default `finetune.tasks`
entry and the writer of its part of `longdoc sample`.
Config validation, the CLI, `dvc.yaml`'s stages, `longdoc sample` and the pipeline all read the
registry; nothing else lists task names.

The built-in tasks (`wikihop`, `triviaqa`, `hotpotqa`, `imdb`, `hyperpartisan`, `summarization`)
are imported on first use of the registry; so are the modules named by installed distributions
under the `longdoc.tasks` entry-point group. Any other module registers by being imported.
This module also holds the example types the loaders yield, which the fine-tuning adapters
consume.

What a registration carries (see `Task`):
    load(root, split) -> LoadResult   split is "train" or "dev"; malformed records are skipped
                                  and reported (file, index, reason), never fatal (triviaqa's
                                  also takes domain="wikipedia"|"web" and limit=N)
    evaluate(gold, predictions) -> dict   gold: the dev LoadResult's examples; predictions in the
                                  official prediction-file format (a dict)
    load_gold(path) -> LoadResult the gold examples for scoring, from the path a user gives
                                  `longdoc evaluate --gold` (the dev file, or the task root)
    load_predictions(path) -> dict    a prediction file, validated against the official format
    write_predictions(path, predictions)  validate, then write atomically
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

#: The built-in task modules, in the order the pipeline runs them.
BUILTIN = ("wikihop", "triviaqa", "hotpotqa", "imdb", "hyperpartisan", "summarization")
#: Distributions add tasks by naming their module under this entry-point group.
ENTRY_POINT_GROUP = "longdoc.tasks"


@dataclass(frozen=True)
class Task:
    """One fine-tuning task: everything the pipeline needs to know about it.

    `adapter` is the fine-tuning adapter: a kind of components.training.adapters.ADAPTERS
    ("classification": one label per document, `labels` naming them; "choice": WikiHop-style
    candidates; "span": extractive QA; "hotpot": span + yes/no + supporting facts) or a
    `TaskAdapter` subclass of the task's own. `data_dir` is where `longdoc sample` writes the
    task (relative to `sample.out`) and so the default `finetune.tasks.<name>.data`; `epochs` is
    that entry's default (None: `finetune.epochs`). `sample` writes the sample data:
    `sample(root, params: SampleParams, lex: synthetic.text.Lexicon) -> counts` with `root` =
    `sample.out / data_dir` (a callable, or "module:function" imported when the sample is
    written); None = the sample has no data for this task.
    """

    name: str
    load: Callable[..., LoadResult]
    evaluate: Callable[[list, dict], dict]
    load_gold: Callable[[Path], LoadResult]
    load_predictions: Callable[[Path], dict]
    write_predictions: Callable[[Path, dict], Any]
    primary_metric: str  # the dev metric that decides champion promotion
    adapter: str | type  # an adapter kind (see above) or a TaskAdapter subclass
    labels: tuple[str, ...] = ()  # classification: label names, index = class
    gold_path: str = ""  # what `longdoc evaluate --gold` takes (its --help)
    predictions_format: str = ""  # the official predictions file (its --help)
    data_dir: str = ""  # "" = the task's name
    epochs: int | None = None
    sample: Callable[..., dict] | str | None = None
    # further fields of the default `finetune.tasks` entry (core.config.FinetuneTask)
    finetune_defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def sample_dir(self) -> str:
        return self.data_dir or self.name

    def sample_writer(self) -> Callable[..., dict] | None:
        """The sample writer, imported if the registration names it as "module:function"."""
        if isinstance(self.sample, str):
            module, _, attr = self.sample.partition(":")
            return getattr(importlib.import_module(module), attr)
        return self.sample


_REGISTRY: dict[str, Task] = {}
_discovered = False


def register(task: Task) -> Task:
    """Add `task` to the registry (a module re-imported replaces its own entry); returns it."""
    if not task.name or not task.name.replace("_", "").isalnum():
        raise ValueError(f"task name {task.name!r}: use letters, digits and underscores")
    _REGISTRY[task.name] = task
    return task


def register_module(module_name: str, **fields: Any) -> Task:
    """Register the task a module defines by the conventional names: NAME, PRIMARY_METRIC,
    GOLD_PATH, PREDICTIONS_FORMAT and the functions load, evaluate, load_gold, load_predictions,
    write_predictions; `fields` gives the rest (adapter, labels, data_dir, epochs, sample)."""
    mod = sys.modules[module_name]
    functions = ("load", "evaluate", "load_gold", "load_predictions", "write_predictions")
    return register(
        Task(
            name=mod.NAME,
            primary_metric=mod.PRIMARY_METRIC,
            gold_path=mod.GOLD_PATH,
            predictions_format=mod.PREDICTIONS_FORMAT,
            **{f: getattr(mod, f) for f in functions},
            **fields,
        )
    )


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for name in BUILTIN:
        importlib.import_module(f"{__name__}.{name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(ep.value.partition(":")[0])


def task_names() -> tuple[str, ...]:
    """Every registered task: the built-in ones first, then in registration order."""
    _discover()
    return tuple(n for n in BUILTIN if n in _REGISTRY) + tuple(
        n for n in _REGISTRY if n not in BUILTIN
    )


def all_tasks() -> tuple[Task, ...]:
    return tuple(_REGISTRY[n] for n in task_names())


def unknown_task_message(name: str) -> str:
    return f"unknown task {name!r}; registered tasks: {', '.join(task_names())}"


def get_task(name: str) -> Task:
    """The registered task `name` (an InputError naming the registered ones if there is none)."""
    _discover()
    task = _REGISTRY.get(name)
    if task is None:
        from longdoc.components.core.io import InputError

        raise InputError(unknown_task_message(name))
    return task


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
class SummaryExample:
    """arXiv / PubMed summarization: an article and its reference abstract (sentences)."""

    id: str  # article_id
    article: str  # the article's sentences joined by spaces
    abstract: tuple[str, ...]  # the reference abstract's sentences, without <S> </S>

    @property
    def summary(self) -> str:
        return " ".join(self.abstract)


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
