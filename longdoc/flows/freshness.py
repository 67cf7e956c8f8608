"""What each pipeline stage reads, writes and depends on: the one source of truth for both
`longdoc pipeline`'s skip logic and DVC (`dvc.yaml` is generated from it by
`longdoc dvc-yaml`; a test keeps the committed file equal to the generated one).

A stage is stale when any of these changed since it last finished: its parameters (the
params.yaml keys it lists), its data inputs (raw inputs hashed in full, upstream stage outputs
through their `manifest.json`, which is rewritten whenever the stage reruns) or its code (the
source files it runs). The pipeline compares a fingerprint of all three with the `.stage.json`
the stage wrote when it finished; DVC compares the same dependencies with `dvc.lock`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from longdoc.components.core.config import Params, params_dict
from longdoc.components.core.io import atomic_write_json, sha256_file, sha256_tree

STAGES = (
    "sample", "ingest", "tokenize", "build_kernels", "pretrain", "probe", "finetune", "score",
)  # fmt: skip
MARKER = ".stage.json"
PACKAGE = Path(__file__).resolve().parents[1]  # longdoc/
REPO = PACKAGE.parent

# The source a stage runs, beyond the orchestration every stage shares (config, io): a change
# here makes the stage stale for DVC and for the pipeline alike. Paths inside longdoc/.
CODE = {
    "sample": ("components/synthetic",),
    "ingest": ("components/data/ingest.py", "components/data/readers.py"),
    "tokenize": ("components/data/tokenize.py",),
    "build_kernels": ("kernels", "components/modeling/kernel_cache.py"),
    "pretrain": (
        "components/modeling/model.py",
        "components/training/pretrain.py",
        "components/training/common.py",
    ),
    "probe": (
        "components/inference/probe.py",
        "components/inference/lama.py",
        "components/inference/cloze.py",
        "components/modeling/model.py",
    ),
    "finetune": (
        "components/modeling",
        "components/training",
        "components/tasks",
    ),
    "score": ("components/inference/score.py", "components/inference/serving.py"),
}
# `score` with `score.zero_shot` set runs these too.
ZERO_SHOT_CODE = ("components/inference/zeroshot.py", "components/inference/cloze.py")
COMMANDS = {"build_kernels": "longdoc build-kernels", "finetune": "longdoc finetune --task {task}"}
# The params.yaml sections each stage reads (its own section last; finetune: see _finetune_spec).
SECTIONS = {
    "sample": ("sample",),
    "ingest": ("ingest",),
    "tokenize": ("tokenize",),
    "build_kernels": ("kernels",),
    "pretrain": ("model", "pretrain"),
    "probe": ("probe",),
    "score": ("score",),
}


@dataclass(frozen=True)
class StageSpec:
    """One DVC stage / one pipeline step. `values` maps the params.yaml keys the stage reads
    (DVC tracks them) to their validated values (the pipeline hashes them); `task` is the
    fine-tuning task of a `finetune_<task>` stage."""

    name: str
    stage: str
    cmd: str
    out: Path
    values: dict[str, Any]
    inputs: tuple[Path, ...]
    code: tuple[Path, ...]
    metrics: Path | None = None
    task: str | None = None


def _upstream(out: Path) -> Path:
    """An upstream stage's output is represented by its manifest (rewritten on every rerun)."""
    return Path(out) / "manifest.json"


def spec(stage: str, p: Params) -> StageSpec:
    """The spec of `stage` under `p` (finetune: the task `p.finetune.task`)."""
    code = tuple(Path("longdoc") / c for c in CODE[stage])
    if stage == "finetune":
        return _finetune_spec(p, code)
    keys = SECTIONS[stage]
    values = {k: params_dict(getattr(p, k)) for k in keys}
    inputs: list[Path] = []
    metrics = None
    if stage == "ingest":
        inputs += p.ingest.sources
    elif stage == "tokenize":
        inputs.append(_upstream(p.tokenize.corpus))
        if p.tokenize.base_tokenizer:
            inputs.append(p.tokenize.base_tokenizer)
    elif stage == "pretrain":
        inputs += [_upstream(p.pretrain.shards), _upstream(p.kernels.out)]
        if p.pretrain.base:
            inputs.append(p.pretrain.base)
        metrics = p.pretrain.metrics
    elif stage == "probe":
        inputs += _probe_inputs(p)
        metrics = p.probe.metrics
    elif stage == "score" and p.score.zero_shot:  # the classifier's definition and model
        classifier = p.zeroshot.classifiers[p.score.zero_shot]
        values[f"zeroshot.classifiers.{p.score.zero_shot}"] = params_dict(classifier)
        inputs += [*p.score.sources(), *_checkpoint_input(p, classifier.model)]
        code += tuple(Path("longdoc") / c for c in ZERO_SHOT_CODE)
    elif stage == "score":
        inputs += p.score.sources()
        task = _model_task(p)
        if task is not None:  # a longdoc-<task> model this pipeline trains: its run is a dep
            inputs.append(_upstream(p.finetune.for_task(task).out))
    out = getattr(p, keys[-1]).out  # the stage's own section (last) names its output
    cmd = COMMANDS.get(stage, f"longdoc {stage}")
    return StageSpec(stage, stage, cmd, out, values, tuple(inputs), code, metrics)


def _probe_inputs(p: Params) -> list[Path]:
    """The facts, prompts and vocabulary files, and the checkpoint (`_checkpoint_input`)."""
    q = p.probe
    inputs = [q.relations, q.facts, *q.prompts]
    inputs += [path for path in (q.train_facts, q.common_vocab) if path is not None]
    return inputs + _checkpoint_input(p, q.model)


def _checkpoint_input(p: Params, model: str) -> list[Path]:
    """A checkpoint given as a directory: pretrain's output through its manifest, any other
    directory whole; an MLflow URI cannot be hashed (nothing)."""
    if ":/" in model:
        return []
    path = Path(model)
    return [_upstream(path) if path == p.pretrain.out else path]


def _finetune_spec(p: Params, code: tuple[Path, ...]) -> StageSpec:
    f = p.finetune
    # Only this task's entry of `tasks`: editing another task must not make this one stale.
    # task/data/out/metrics are this run's resolution of that entry (inputs and out below).
    per_run = ("tasks", "task", "data", "out", "metrics")
    values = {f"finetune.{k}": v for k, v in params_dict(f).items() if k not in per_run}
    values[f"finetune.tasks.{f.task}"] = params_dict(f)["tasks"].get(f.task)
    inputs = (f.data, _upstream(f.base), _upstream(p.kernels.out))
    return StageSpec(
        f"finetune_{f.task}",
        "finetune",
        COMMANDS["finetune"].format(task=f.task),
        f.out,
        values,
        inputs,
        code,
        f.metrics,
        f.task,
    )


def _model_task(p: Params) -> str | None:
    """The task whose registered model `score.model_uri` names, when it is one of ours."""
    prefix = "models:/longdoc-"
    if not p.score.model_uri.startswith(prefix):
        return None
    task = p.score.model_uri.removeprefix(prefix).split("@")[0].split("/")[0]
    return task if task in p.finetune.tasks else None


def pipeline_specs(p: Params) -> list[StageSpec]:
    """Every stage the pipeline (and `dvc repro`) runs, in order: one finetune per task."""
    out = []
    for stage in STAGES:
        if stage == "finetune":
            tasks = [p.finetune.for_task(t) for t in p.finetune.tasks]
            out += [spec(stage, p.model_copy(update={"finetune": f})) for f in tasks]
        else:
            out.append(spec(stage, p))
    return out


def reads_output_of(b: StageSpec, a: StageSpec) -> bool:
    """Whether stage `b` reads what stage `a` writes: an input at or under `a`'s output."""
    out = Path(a.out).resolve()
    return any(p == out or out in p.parents for p in (Path(i).resolve() for i in b.inputs))


def waves(specs: list[StageSpec]) -> list[list[StageSpec]]:
    """`specs` (in pipeline order) cut into runs of consecutive stages none of which reads
    another's output: the stages of one wave may run side by side once the earlier waves are
    done (after pretrain: probe and every fine-tuning task)."""
    out: list[list[StageSpec]] = []
    for s in specs:
        if out and not any(reads_output_of(s, a) for a in out[-1]):
            out[-1].append(s)
        else:
            out.append([s])
    return out


def input_bytes(s: StageSpec) -> int:
    """The size on disk of what a stage reads (a missing input counts 0)."""
    total = 0
    for path in map(Path, s.inputs):
        files = path.rglob("*") if path.is_dir() else [path]
        total += sum(f.stat().st_size for f in files if f.is_file())
    return total


def _code_files(paths: tuple[Path, ...]) -> list[Path]:
    files: list[Path] = []
    for rel in paths:
        path = REPO / rel
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def fingerprint(s: StageSpec) -> str:
    h = hashlib.sha256(json.dumps(s.values, sort_keys=True, default=str).encode())
    for path in s.inputs:
        h.update(str(path).encode())
        if path.is_file():
            h.update(sha256_file(path).encode())
        elif path.is_dir():
            h.update(sha256_tree(path).encode())
        else:
            h.update(b"<missing>")
    for path in _code_files(s.code):
        h.update(str(path.relative_to(REPO)).encode() + sha256_file(path).encode())
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


# --- dvc.yaml ------------------------------------------------------------------------------------

HEADER = """\
# Generated by `longdoc dvc-yaml` from params.yaml and the stage specs in
# longdoc/flows/freshness.py (the same ones `longdoc pipeline` uses to skip fresh stages).
# Do not edit: change params.yaml and run `longdoc dvc-yaml` (a test checks they agree).
"""


def _dvc_dep(path: Path) -> str:
    """DVC tracks an upstream stage's whole output directory, the pipeline its manifest."""
    return str(path.parent if path.name == "manifest.json" else path)


def _has_key(raw: dict, key: str) -> bool:
    *parents, last = key.split(".")
    node: Any = raw
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return isinstance(node, dict) and last in node


def dvc_yaml(p: Params, params_file: Path | str = "params.yaml") -> str:
    """dvc.yaml for the pipeline under `p` (read from `params_file`)."""
    path = Path(params_file)
    raw = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    stages: dict[str, dict] = {}
    for s in pipeline_specs(p):
        entry: dict[str, Any] = {
            "cmd": s.cmd,
            "deps": [_dvc_dep(d) for d in s.inputs] + [str(c) for c in s.code],
        }
        # Only keys present in params.yaml: DVC refuses a missing one, and a key left out is the
        # built-in default, which changes only with the code (a dependency already).
        params = [k for k in s.values if _has_key(raw, k)]
        if params:
            entry["params"] = params
        entry["outs"] = [str(s.out)]
        if s.metrics:  # cached like an output, so that `dvc push`/`dvc pull` carry it too
            entry["metrics"] = [str(s.metrics)]
        stages[s.name] = entry
    body = yaml.safe_dump({"stages": stages}, sort_keys=False, default_flow_style=False)
    return HEADER + body


def dvc_yaml_is_current(p: Params, path: Path | str = "dvc.yaml") -> bool:
    path = Path(path)
    return path.exists() and path.read_text() == dvc_yaml(p, path.with_name("params.yaml"))
