"""What each pipeline stage reads, writes and depends on, so a rerun can skip unchanged stages.

A stage is fresh when its output directory holds a `.stage.json` whose fingerprint equals the
hash of (the stage's parameters, its inputs). Upstream stage outputs are represented by their
`manifest.json`, which changes whenever they are rewritten; raw inputs (archives, task data) are
hashed in full.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from longdoc.components.config import Params, params_dict
from longdoc.components.io import atomic_write_json, sha256_file, sha256_tree

STAGES = ("sample", "ingest", "tokenize", "build_kernels", "pretrain", "finetune", "score")
MARKER = ".stage.json"


@dataclass(frozen=True)
class StageSpec:
    name: str
    out: Path
    params: dict
    inputs: tuple[Path, ...]


def spec(stage: str, p: Params) -> StageSpec:
    if stage == "sample":
        return StageSpec(stage, p.sample.out, params_dict(p.sample), ())
    if stage == "ingest":
        return StageSpec(stage, p.ingest.out, params_dict(p.ingest), tuple(p.ingest.sources))
    if stage == "tokenize":
        inputs = [p.tokenize.corpus / "manifest.json"]
        if p.tokenize.base_tokenizer:
            inputs.append(p.tokenize.base_tokenizer)
        return StageSpec(stage, p.tokenize.out, params_dict(p.tokenize), tuple(inputs))
    if stage == "build_kernels":
        # The kernel sources, not the directory: __pycache__ must not make the stage stale.
        # Located, not imported: importing longdoc.kernels would load torch for a freshness check.
        sources = tuple(sorted((Path(__file__).parents[1] / "kernels").glob("*.py")))
        return StageSpec(stage, p.kernels.out, params_dict(p.kernels), sources)
    if stage == "pretrain":
        inputs = [p.pretrain.shards / "manifest.json"]
        if p.pretrain.base:
            inputs.append(p.pretrain.base)
        cfg = {"pretrain": params_dict(p.pretrain), "model": params_dict(p.model)}
        return StageSpec(stage, p.pretrain.out, cfg, tuple(inputs))
    if stage == "finetune":
        inputs = (p.finetune.data, p.finetune.base / "manifest.json")
        # Only this task's entry of `tasks`: editing another task must not make this one stale.
        cfg = params_dict(p.finetune)
        cfg["tasks"] = {p.finetune.task: cfg["tasks"].get(p.finetune.task)}
        return StageSpec(stage, p.finetune.out, cfg, inputs)
    if stage == "score":
        # The registered champion lives in MLflow, not in a file: the finetune manifest names
        # the version it registered, so a new champion makes scoring stale.
        inputs = (*p.score.sources(), p.finetune.out / "manifest.json")
        return StageSpec(stage, p.score.out, params_dict(p.score), inputs)
    raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")


def fingerprint(s: StageSpec) -> str:
    h = hashlib.sha256(json.dumps(s.params, sort_keys=True).encode())
    for path in s.inputs:
        h.update(str(path).encode())
        if path.is_file():
            h.update(sha256_file(path).encode())
        elif path.is_dir():
            h.update(sha256_tree(path).encode())
        else:
            h.update(b"<missing>")
    return h.hexdigest()


def is_fresh(s: StageSpec) -> bool:
    marker = Path(s.out) / MARKER
    if not marker.exists() or not (Path(s.out) / "manifest.json").exists():
        return False
    try:
        return json.loads(marker.read_text()).get("fingerprint") == fingerprint(s)
    except (OSError, ValueError):
        return False


def mark_done(s: StageSpec) -> None:
    atomic_write_json(Path(s.out) / MARKER, {"stage": s.name, "fingerprint": fingerprint(s)})
