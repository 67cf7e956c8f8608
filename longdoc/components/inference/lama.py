"""LAMA-format facts and LPAQA-format prompts, read as distributed.

LAMA (Petroni et al. 2019, facebookresearch/LAMA) ships `relations.jsonl` (one relation a line:
`relation`, `template` such as "[X] was born in [Y] .", `label`, `type`, ...) and per relation a
JSON-lines file of facts (`data/TREx/P19.jsonl`: `sub_label`, `obj_label`, `predicate_id`,
optionally `uuid`, `sub_uri`, `obj_uri`, `evidences`). LPAQA (Jiang et al. 2020, jzbjyb/LPAQA)
publishes its mined and paraphrased prompts as JSON-lines files too (`prompt/mine/P19.jsonl`:
`relation`, `template`). Any other field is ignored.

A malformed line (not JSON, not an object, a required field missing or not a string, a template
without exactly one [X] and one [Y], a fact whose predicate_id differs from its file's relation)
is skipped and reported as `Skipped(file, line, reason)`; it never stops the load.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longdoc.components.core.io import InputError


@dataclass(frozen=True)
class Skipped:
    file: str
    line: int  # 1-based
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class Relation:
    id: str
    template: str  # the manual prompt
    label: str = ""
    type: str = ""


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    object: str
    uuid: str = ""


@dataclass(frozen=True)
class Prompt:
    relation: str
    template: str
    source: str  # "manual", or where the prompt came from (the folder of its file: mine, ...)


@dataclass
class Loaded:
    """What a load produced: the records, and every line it skipped with the reason."""

    items: list[Any] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def template_problem(template: str) -> str | None:
    """Why `template` cannot be a cloze prompt, or None: it needs exactly one [X] and one [Y]."""
    for slot in ("[X]", "[Y]"):
        if template.count(slot) != 1:
            return f"template {template!r} must contain {slot} exactly once"
    return None


def _records(path: Path, skipped: list[Skipped]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every JSON object line of `path`; blank lines are allowed."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from exc
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            skipped.append(Skipped(str(path), n, f"not valid JSON ({exc.msg})"))
            continue
        if not isinstance(obj, dict):
            skipped.append(
                Skipped(str(path), n, f"expected a JSON object, got {type(obj).__name__}")
            )
            continue
        yield n, obj


def _strings(obj: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """Why the required `keys` of `obj` are not all non-empty strings, or None."""
    for key in keys:
        value = obj.get(key)
        if value is None:
            return f"no {key!r}"
        if not isinstance(value, str) or not value.strip():
            return f"{key!r} must be a non-empty string, not {value!r}"
    return None


def load_relations(path: Path | str) -> Loaded:
    """The relations of a LAMA `relations.jsonl` (items: `Relation`, in file order; a relation
    listed twice keeps its first line)."""
    path = Path(path)
    out = Loaded()
    seen: set[str] = set()
    for n, obj in _records(path, out.skipped):
        reason = _strings(obj, ("relation", "template")) or template_problem(obj["template"])
        if reason is None and obj["relation"] in seen:
            reason = f"relation {obj['relation']!r} already listed"
        if reason is not None:
            out.skipped.append(Skipped(str(path), n, reason))
            continue
        seen.add(obj["relation"])
        label, kind = obj.get("label", ""), obj.get("type", "")
        out.items.append(
            Relation(obj["relation"], obj["template"], str(label or ""), str(kind or ""))
        )
    return out


def load_facts(path: Path | str, relation: str) -> Loaded:
    """The facts of one relation's LAMA file (items: `Fact`). A fact whose `predicate_id`
    names another relation is skipped (a file put in the wrong place must not mix relations)."""
    path = Path(path)
    out = Loaded()
    for n, obj in _records(path, out.skipped):
        reason = _strings(obj, ("sub_label", "obj_label", "predicate_id"))
        if reason is None and obj["predicate_id"] != relation:
            reason = f"predicate_id {obj['predicate_id']!r} is not this file's {relation!r}"
        if reason is not None:
            out.skipped.append(Skipped(str(path), n, reason))
            continue
        uuid = obj.get("uuid")
        out.items.append(
            Fact(
                relation, obj["sub_label"], obj["obj_label"], uuid if isinstance(uuid, str) else ""
            )
        )
    return out


def load_fact_dir(
    root: Path | str, relations: list[Relation]
) -> tuple[dict[str, list[Fact]], list[Skipped]]:
    """Every relation's facts from `root/<relation>.jsonl` (LAMA's data/TREx layout); a relation
    without a file has no facts (LAMA's relations.jsonl lists relations of several corpora)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory of <relation>.jsonl fact files")
    facts: dict[str, list[Fact]] = {}
    skipped: list[Skipped] = []
    for rel in relations:
        path = root / f"{rel.id}.jsonl"
        if path.is_file():
            loaded = load_facts(path, rel.id)
            facts[rel.id] = loaded.items
            skipped += loaded.skipped
    return facts, skipped


def load_prompts(paths: list[Path] | list[str]) -> Loaded:
    """Extra prompts (items: `Prompt`) from LPAQA-style JSON-lines files, or from every
    `*.jsonl` under a directory (in sorted order); `source` is the file's folder name."""
    out = Loaded()
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.rglob("*.jsonl"))
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{p}: no such prompt file or directory")
    for path in files:
        for n, obj in _records(path, out.skipped):
            reason = _strings(obj, ("relation", "template")) or template_problem(obj["template"])
            if reason is not None:
                out.skipped.append(Skipped(str(path), n, reason))
                continue
            out.items.append(Prompt(obj["relation"], obj["template"], path.parent.name))
    return out


def load_common_vocab(path: Path | str) -> set[str]:
    """LAMA's common vocabulary file: one word a line (blank lines ignored)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the common vocabulary ({exc})") from exc
    return {w.strip() for w in lines if w.strip()}
