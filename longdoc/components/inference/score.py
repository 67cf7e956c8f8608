"""Batch scoring: every document of archives, directories or record files through a registered
model, streamed, resumable, with nothing lost without a record.

Documents are read with the ingest stage's readers, so anything ingest accepts can be scored,
and anything it would reject lands in `errors.jsonl` with the reason instead of stopping the run.

How it stays fast and bounded:

- the model (`models:/longdoc-<task>@champion` by default) is resolved to a concrete version and
  loaded once; scoring drives its `InferenceEngine` directly (see `components.inference.serving`):
  documents are tokenized in one call per chunk, sorted by length and batched by a token budget,
  so batches pad to almost nothing; `torch.inference_mode`, CUDA when present, optional bf16;
- documents stream through in chunks of `chunk_docs`: each chunk becomes one Parquet part, so
  memory holds one chunk (texts clipped to what the model reads) whatever the archive size;
- each chunk is one work unit (`components.core.units`): scored in this process by default, or
  by a Dask worker when the flow passes a Dask-backed runner, with a few chunks in flight. A
  worker loads the pinned model version once per process (`score_unit`); reading, admitting,
  counting and checkpointing stay here, in stream order, so the output is the same either way.

How it resumes: the document stream is deterministic, and after each part the state file records
how many stream items are done. A part is written atomically *before* the state names it, and
error records carry their stream index, so after `kill -9` a rerun drops unnamed parts and error
records past the checkpoint, skips the items already done and scores each document exactly once.
A chunk scored ahead of an earlier one (several in flight) has its part written and named in
the state's `ahead` at once, so a rerun after `kill -9` reuses every chunk that was scored. A
rerun of a finished run with the same inputs, model version and parameters does nothing; any
change starts over.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq

from longdoc.components.core import tracking
from longdoc.components.core.config import IngestParams, ScoreParams, TrackingParams, params_dict
from longdoc.components.core.io import (
    InputError,
    claim_output_dir,
    require_path,
    sha256_bytes,
    sha256_tree,
    versions,
)
from longdoc.components.core.stage import Progress, SideLog, Stage, fingerprint, reconcile
from longdoc.components.core.units import INLINE, UnitRunner, run_units
from longdoc.components.data.ingest import decode_entities, normalize
from longdoc.components.data.readers import (
    Document,
    ReadPosition,
    Rejected,
    input_bytes,
    iter_documents,
)
from longdoc.components.inference.serving import (
    CLASSIFICATION,
    QA,
    SUMMARIZATION,
    Encoded,
    InferenceEngine,
    LongdocModel,
    checkpoint_kind,
    is_empty_document,
)
from longdoc.components.inference.summarize import SummaryEngine
from longdoc.kernels import settings as kernel_settings

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.parquet"  # a directory of parts: pyarrow reads it as one table
STATE_FILE = ".score-state.json"
ERRORS = "errors.jsonl"
_ERRORS_PART = "errors.partial.jsonl"
_PROGRESS_EVERY_S = 10.0

_DOCUMENT_FIELDS = [
    ("doc_id", pa.string()),  # sha256 of the normalised text, as ingest's doc_id
    ("source", pa.string()),
    ("member", pa.string()),
    ("tokens", pa.int32()),  # tokens the model read (one window's specials + the text's)
    ("truncated", pa.bool_()),  # some of the document was not read (a truncating model)
    ("windows", pa.int32()),  # windows of max_len tokens the document was read as
]
_PREDICTION_FIELDS = {
    CLASSIFICATION: [
        ("label", pa.string()),
        ("probabilities", pa.list_(pa.float32())),  # in id2label order
    ],
    QA: [
        ("answer", pa.string()),
        ("score", pa.float32()),  # P(start) x P(end) of the answer span
    ],
    SUMMARIZATION: [
        ("summary", pa.string()),  # generated with the settings in the manifest's model
    ],
}
_MODEL_FIELDS = [
    ("model_name", pa.string()),
    ("model_version", pa.string()),
    ("scored_at", pa.timestamp("ms", tz="UTC")),
]


def prediction_schema(kind: str) -> pa.Schema:
    """The predictions table of a `kind` model: only that kind's columns, so a classifier's
    table has no all-null `answer`/`score` and a QA model's no `label`/`probabilities`."""
    return pa.schema(_DOCUMENT_FIELDS + _PREDICTION_FIELDS[kind] + _MODEL_FIELDS)


@dataclass
class _Pending:
    index: int
    source: str
    member: str
    doc_id: str
    text: str
    question: str | None
    clipped: bool


@dataclass
class _Unit:
    """Stream items [start, end) as one work unit: the documents to score and the items
    rejected on admission (index, source, member, reason). `part` names the predictions part
    its documents go to (None: nothing to score)."""

    start: int
    end: int = 0
    pending: list[_Pending] = field(default_factory=list)
    rejected: list[tuple[int, str, str, str]] = field(default_factory=list)
    part: str | None = None


def _model_name(uri: str) -> str:
    ref = uri.removeprefix("models:/")
    return ref.split("@", 1)[0].split("/", 1)[0] if uri.startswith("models:/") else uri


def load_engine(params: ScoreParams) -> tuple[InferenceEngine, str, str, str]:
    """(engine, model name, version, pinned uri): the URI resolved to one version, loaded once.

    Loading `models:/name/<version>` rather than the alias means a champion promoted mid-run
    cannot swap models between the version recorded and the weights used. A checkpoint
    directory (HF format, e.g. `data/checkpoints/summarization`) is its own model: its
    "version" is a hash of its files, so new weights in the same directory start over."""
    name, version, pinned = pin_model(params)
    generation = params.generation.given()
    engine = _load_pinned(pinned, params.max_len, params.device, params.bf16, generation)
    return engine, name, version, pinned


def pin_model(params: ScoreParams) -> tuple[str, str, str]:
    """(model name, version, pinned uri) of `params.model_uri`, without loading it."""
    uri = params.model_uri
    if _is_checkpoint_dir(uri):
        pinned = str(Path(uri).resolve())
        return uri, sha256_tree(Path(pinned))[:16], pinned
    try:
        version = tracking.resolve_model_version(uri)
    except mlflow.exceptions.MlflowException as exc:
        raise InputError(f"score model {uri}: {exc.message}") from exc
    name = _model_name(uri)
    return name, version, f"models:/{name}/{version}" if uri.startswith("models:/") else uri


def _is_checkpoint_dir(uri: str) -> bool:
    """An HF-format checkpoint directory (config.json), not an MLflow model directory."""
    path = Path(uri)
    return (path / "config.json").is_file() and not (path / "MLmodel").exists()


def _load_pinned(
    pinned: str,
    max_len: int | None,
    device: str,
    bf16: bool,
    generation: dict[str, Any] | None = None,
) -> InferenceEngine:
    """The engine of a pinned model version (or checkpoint directory) under this run's
    settings; `generation` replaces a summarizer's saved settings (other kinds have none)."""
    if _is_checkpoint_dir(pinned):
        return _checkpoint_engine(pinned, max_len, device, bf16, generation)
    try:
        pyfunc = mlflow.pyfunc.load_model(pinned)
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        checkpoint = _registered_checkpoint(pinned)
        if checkpoint is None:
            raise InputError(f"score model {pinned}: cannot load ({exc})") from exc
        return _checkpoint_engine(checkpoint, max_len, device, bf16, generation)
    inner = pyfunc.unwrap_python_model()
    if not isinstance(inner, LongdocModel):
        raise InputError(f"score model {pinned}: not a longdoc model ({type(inner).__name__})")
    settings = {"max_len": max_len, "device": device, "bf16": bf16}
    if isinstance(inner.engine, SummaryEngine):
        return inner.engine.reconfigured(**settings, generation=generation)
    _no_generation(pinned, generation)
    return inner.engine.reconfigured(**settings)


def _registered_checkpoint(pinned: str) -> str | None:
    """The local copy of a registered version that is a bare checkpoint directory (how
    fine-tuning registered models no pyfunc served, summarizers included until they had one),
    or None."""
    if not pinned.startswith("models:/"):
        return None
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=pinned)
    except (mlflow.exceptions.MlflowException, OSError):
        return None
    return local if _is_checkpoint_dir(local) else None


def _checkpoint_engine(
    path: str, max_len: int | None, device: str, bf16: bool, generation: dict[str, Any] | None
) -> InferenceEngine:
    try:
        kind = checkpoint_kind(path)
        if kind == SUMMARIZATION:
            return SummaryEngine.from_checkpoint(
                path, max_len=max_len, device=device, bf16=bf16, generation=generation
            )
        _no_generation(path, generation)
        return InferenceEngine.from_checkpoint(path, max_len=max_len, device=device, bf16=bf16)
    except (ValueError, OSError) as exc:
        raise InputError(f"score model {path}: cannot load ({exc})") from exc


def _no_generation(model: str, generation: dict[str, Any] | None) -> None:
    if generation:
        log.warning("%s writes no text: score.generation %s is ignored", model, generation)


@dataclass(frozen=True)
class EngineSpec:
    """What a worker process needs to load the engine the calling process loaded: the pinned
    model version, where its registry is, and every setting that changes predictions (the
    kernel cache decides whether the tvm backend runs)."""

    model_uri: str  # models:/name/<version>, never an alias (or a checkpoint directory)
    tracking_uri: str
    registry_uri: str
    max_len: int | None
    device: str
    bf16: bool
    kernel_cache: str
    generation: tuple[tuple[str, Any], ...] = ()  # a summarizer's replaced settings


_ENGINES: dict[EngineSpec, InferenceEngine] = {}  # per process: loaded once, reused by units
_MAX_ENGINES = 2  # a long-lived worker serving a new champion drops the oldest


def _portable_uri(uri: str) -> str:
    """A store URI another process can use whatever its working directory (sqlite paths)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri.removeprefix(prefix)).is_absolute():
        return prefix + str(Path(uri.removeprefix(prefix)).resolve())
    return uri


def engine_spec(params: ScoreParams, pinned: str) -> EngineSpec:
    return EngineSpec(
        model_uri=pinned,
        tracking_uri=_portable_uri(mlflow.get_tracking_uri()),
        registry_uri=_portable_uri(mlflow.get_registry_uri()),
        max_len=params.max_len,
        device=params.device,
        bf16=params.bf16,
        kernel_cache=str(kernel_settings.cache_dir().resolve()),
        generation=tuple(sorted(params.generation.given().items())),
    )


def _engine(spec: EngineSpec) -> InferenceEngine:
    engine = _ENGINES.get(spec)
    if engine is None:
        # A worker process points MLflow at the stage's stores; an in-process runner already
        # does, and must not pin the registry URI globally (it would outlive this stage).
        if _portable_uri(mlflow.get_tracking_uri()) != spec.tracking_uri:
            tracking.set_store(spec.tracking_uri)
        if _portable_uri(mlflow.get_registry_uri()) != spec.registry_uri:
            mlflow.set_registry_uri(spec.registry_uri)
        kernel_settings.configure(cache_dir=spec.kernel_cache)
        generation = dict(spec.generation)
        engine = _load_pinned(spec.model_uri, spec.max_len, spec.device, spec.bf16, generation)
        while len(_ENGINES) >= _MAX_ENGINES:
            _ENGINES.pop(next(iter(_ENGINES)))
        _ENGINES[spec] = engine
    return engine


@dataclass(frozen=True)
class EngineShape:
    """What the stage's process needs of an engine that only workers load (a remote runner):
    the kind, how it reads a text (the fingerprint's `read`, the clip), a summarizer's
    generation settings. It stands in for the engine in `_Run`."""

    kind: str
    max_len: int | None
    windows: bool
    window_overlap: int
    cap: int | None  # char_cap(): the characters of a text that can matter
    generation: dict[str, Any] | None = None

    def char_cap(self) -> int | None:
        return self.cap


def describe_unit(spec: EngineSpec) -> EngineShape:
    """A unit that loads the engine where it runs (kept for the units after it) and says what
    it is: how the stage's process learns the model's shape without loading it too."""
    engine = _engine(spec)
    generation = engine.generation if isinstance(engine, SummaryEngine) else None
    return EngineShape(
        engine.kind,
        engine.max_len,
        engine.windows,
        engine.window_overlap,
        engine.char_cap(),
        generation,
    )


def score_unit(
    spec: EngineSpec, texts: list[str], questions: list[str] | None, batch_tokens: int
) -> tuple[float, list[tuple[int, bool, int, dict[str, Any]] | str]]:
    """One unit's heavy work, wherever it runs: the seconds it took to score, and per document
    (tokens read, truncated, windows, prediction) or the reason it could not be scored. The
    engine is loaded once per process (the calling process registers its own), so a worker
    pays the model load once and only the first unit's seconds include it."""
    engine = _engine(spec)
    t = time.perf_counter()
    scored = _score_chunk(engine, texts, questions, batch_tokens)
    return time.perf_counter() - t, [
        r if isinstance(r, str) else (r[0].tokens, r[0].truncated, len(r[0].windows), r[1])
        for r in scored
    ]


def _fingerprint(
    params: ScoreParams,
    inputs: list[dict[str, str]],
    model: dict,
    ingest: IngestParams | None = None,
    engine: InferenceEngine | None = None,
) -> str:
    """What the predictions depend on; batch sizes and the device do not change them."""
    relevant = {
        k: v
        for k, v in params_dict(params).items()
        if k in ("max_len", "bf16", "text_field", "question_field")
    }
    if ingest is not None:  # the normalisation decides the text (and doc_id)
        relevant["ingest"] = {"whitespace": ingest.whitespace, "decode": ingest.decode_entities}
    if engine is not None:  # how long documents are read
        relevant["read"] = [engine.max_len, engine.windows, engine.window_overlap]
    # the columns too: parts written with another table layout are never mixed with new ones
    columns = prediction_schema(model["kind"]).names
    return fingerprint(
        params=relevant,
        inputs=inputs,
        model=model,
        columns=columns,
        code=versions("torch", "transformers"),
    )


def _clean(out: Path) -> None:
    preds = out / PREDICTIONS
    if preds.is_dir():
        shutil.rmtree(preds)
    elif preds.exists():  # a single file from older versions
        preds.unlink()
    for name in (ERRORS, _ERRORS_PART, "manifest.json", STATE_FILE):
        (out / name).unlink(missing_ok=True)


def _stream(
    params: ScoreParams,
    sources: list[Path],
    ingest: IngestParams,
    position: ReadPosition | None = None,
) -> Iterator[Document | Rejected]:
    return chain.from_iterable(
        iter_documents(
            src,
            max_member_bytes=ingest.max_member_bytes,
            max_total_bytes=ingest.max_total_bytes,
            text_field=params.text_field,
            position=position,
        )
        for src in sources
    )


def _score_chunk(
    engine: InferenceEngine, texts: list[str], questions: list[str] | None, batch_tokens: int
) -> list[tuple[Encoded, dict[str, Any]] | str]:
    """(encoding, prediction) per pending document, or the reason it could not be scored.

    The chunk goes through in one call; if that fails (a document the tokenizer or the model
    chokes on, a batch that does not fit in accelerator memory), each document is retried alone
    so one bad document becomes one error record instead of failing the whole run."""

    def one_call(rows: list[int]) -> list[tuple[Encoded, dict[str, Any]]]:
        qs = [questions[i] for i in rows] if questions is not None else None
        encoded = engine.encode([texts[i] for i in rows], qs)
        return list(zip(encoded, engine.run(encoded, batch_tokens), strict=True))

    try:
        return list(one_call(list(range(len(texts)))))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        log.warning("a chunk of %d documents failed (%s); scoring them one by one", len(texts), exc)
    out: list[tuple[Encoded, dict[str, Any]] | str] = []
    for i in range(len(texts)):
        try:
            out.append(one_call([i])[0])
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            out.append(f"scoring failed: {type(exc).__name__}: {exc}")
    return out


@dataclass
class _Run:
    """What the per-item and per-chunk steps of one scoring run share. `state` is the
    checkpointed part (a JSON dict); the rest is rebuilt on resume."""

    params: ScoreParams
    stage: Stage
    engine: InferenceEngine
    model: dict[str, str]
    state: dict[str, Any]
    errors: SideLog
    progress: Progress
    question_field: str | None
    ingest: IngestParams = field(default_factory=IngestParams)
    spec: EngineSpec | None = None  # how a worker loads this run's engine
    next_part: int = 0  # the part the next unit with documents writes
    labels: Counter = field(default_factory=Counter)
    per_source: dict[str, Counter] = field(default_factory=dict)
    infer_s: float = 0.0
    scored_now: int = 0  # in this run (the state counts every run)
    tokens_now: int = 0
    units_scored: int = 0  # units scored in this run
    units_reused: int = 0  # units scored by a killed run, their parts reused

    @property
    def preds_dir(self) -> Path:
        return self.stage.out / PREDICTIONS


def _new_state(stage: Stage) -> dict[str, Any]:
    return stage.new_state(
        consumed=0,
        parts=[],
        scored=0,
        errors=0,
        tokens=0,
        truncated=0,
        windowed=0,
        labels={},
        per_source={},
        runs=0,
        ahead={},  # parts of units scored before the units ahead of them were committed
    )


def _error(run: _Run, index: int, source: str, member: str, reason: str) -> None:
    run.errors.write(index, source=source, member=member, reason=reason)
    run.state["errors"] += 1
    run.per_source.setdefault(source, Counter())["errors"] += 1
    run.progress.add(0, errors=1)


def _admit(run: _Run, unit: _Unit, index: int, item: Document | Rejected) -> None:
    """The per-item step: add stream item `index` to `unit`'s documents, or to its rejects."""
    if isinstance(item, Rejected):
        unit.rejected.append((index, item.source, item.member, item.reason))
        return
    # cleaned as the configured ingest cleans the corpus, so the model sees the same kind of
    # text it was trained on and a document's doc_id is its id in the corpus
    ingest = run.ingest
    text = item.text
    if ingest.decode_entities and not item.entities_decoded:
        text = decode_entities(text)
    text = normalize(text, ingest.whitespace)
    qf = run.question_field
    question = item.meta.get(qf) if qf else None
    if is_empty_document(text):  # the served model refuses the same documents
        unit.rejected.append((index, item.source, item.member, "empty document"))
    elif qf and not (isinstance(question, str) and not is_empty_document(question)):
        unit.rejected.append((index, item.source, item.member, f"no {qf!r} field (question)"))
    else:
        cap = run.engine.char_cap()  # None: windows read the whole text
        doc_id = sha256_bytes(text.encode())
        clipped = cap is not None and len(text) > cap
        unit.pending.append(
            _Pending(index, item.source, item.member, doc_id, text[:cap], question, clipped)
        )


def _row(run: _Run, p: _Pending, result: tuple, now: datetime, tally: dict[str, Any]) -> dict:
    """One predictions row; counts it in its unit's `tally`."""
    tokens, enc_truncated, windows, pred = result
    truncated = enc_truncated or p.clipped
    if "label" in pred:
        tally["labels"][pred["label"]] = tally["labels"].get(pred["label"], 0) + 1
    tally["per_source"][p.source] = tally["per_source"].get(p.source, 0) + 1
    tally["scored"] += 1
    tally["tokens"] += tokens
    tally["truncated"] += int(truncated)
    tally["windowed"] += int(windows > 1)
    run.scored_now += 1
    run.tokens_now += tokens
    run.progress.add(0, scored=1, tokens=tokens)
    return {
        "doc_id": p.doc_id,
        "source": p.source,
        "member": p.member,
        "tokens": tokens,
        "truncated": truncated,
        "windows": windows,
        **pred,
        "model_name": run.model["name"],
        "model_version": run.model["version"],
        "scored_at": now,
    }


def _cut_units(run: _Run, sources: list[Path]) -> Iterator[_Unit]:
    """The stream after the checkpoint, every item through `_admit`, cut into units: a unit
    closes at `chunk_docs` documents (or, for input that is mostly errors, at enough items to
    be worth a checkpoint). The cut depends on the items alone, so a resumed run, which starts
    at a unit boundary, cuts the rest exactly as the first run did. Runs in `run_units`'
    reader thread: it touches only the units it builds and `run.next_part`."""
    resumed_at, chunk = run.state["consumed"], run.params.chunk_docs
    unit, n_items = _Unit(resumed_at), resumed_at
    run.progress.input = position = ReadPosition(input_bytes(sources))  # the ETA's base
    for index, item in enumerate(_stream(run.params, sources, run.ingest, position)):
        if index < resumed_at:
            continue  # done before the kill: read past it (reading is cheap, models are not)
        n_items = index + 1
        _admit(run, unit, index, item)
        if len(unit.pending) >= chunk or n_items - unit.start >= 4 * chunk:
            yield _close_unit(run, unit, n_items)
            unit = _Unit(n_items)
    if n_items > unit.start:
        yield _close_unit(run, unit, n_items)


def _close_unit(run: _Run, unit: _Unit, end: int) -> _Unit:
    unit.end = end
    if unit.pending:
        unit.part = f"part-{run.next_part:05d}.parquet"
        run.next_part += 1
    return unit


def _unit_work(run: _Run, unit: _Unit) -> tuple[Any, tuple] | None:
    """The call that scores `unit`, or None: nothing to score, or scored before a kill."""
    if unit.part is None:
        return None
    done = run.state["ahead"].get(unit.part)
    if done is not None and done["end"] == unit.end:
        run.units_reused += 1
        return None
    run.state["ahead"].pop(unit.part, None)
    texts = [p.text for p in unit.pending]
    questions = [p.question or "" for p in unit.pending] if run.engine.kind == QA else None
    return score_unit, (run.spec, texts, questions, run.params.batch_tokens)


def _unit_scored(run: _Run, unit: _Unit, result: tuple[float, list]) -> None:
    """A unit's results, as soon as they arrive (in any order): its part is written whole,
    then the state names it in `ahead` with what its commit will count."""
    seconds, scored = result
    run.infer_s += seconds
    now = datetime.now(UTC)
    rows, failed = [], []
    tally = {"scored": 0, "tokens": 0, "truncated": 0, "windowed": 0}
    tally |= {"labels": {}, "per_source": {}}
    for p, res in zip(unit.pending, scored, strict=True):
        if isinstance(res, str):
            failed.append((p.index, p.source, p.member, res))
        else:
            rows.append(_row(run, p, res, now, tally))
    schema = prediction_schema(run.engine.kind)
    with run.stage.part(run.preds_dir / unit.part) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    run.state["ahead"][unit.part] = {"end": unit.end, "failed": failed, **tally}
    run.stage.checkpoint(run.state)
    run.units_scored += 1
    unit.pending = []  # the texts are no longer needed


def _commit_unit(run: _Run, unit: _Unit) -> None:
    """In stream order: the unit's error records and counts, then a checkpoint up to its end."""
    run.progress.add(unit.end - unit.start)
    for index, source, member, reason in unit.rejected:
        _error(run, index, source, member, reason)
    if unit.part is not None:
        done = run.state["ahead"].pop(unit.part)
        for index, source, member, reason in done["failed"]:
            _error(run, index, source, member, reason)
        for key in ("scored", "tokens", "truncated", "windowed"):
            run.state[key] = run.state.get(key, 0) + done[key]
        run.labels.update(done["labels"])
        for source, n in done["per_source"].items():
            run.per_source.setdefault(source, Counter())["scored"] += n
        run.state["parts"].append(unit.part)
    run.state.update(
        consumed=unit.end,
        labels=dict(run.labels),
        per_source={k: dict(v) for k, v in run.per_source.items()},
    )
    run.stage.checkpoint(run.state)
    run.progress.maybe_log()


def _score_stream(run: _Run, sources: list[Path], runner: UnitRunner) -> None:
    """Every unit scored on `runner`, its part written when it is done, committed in order."""
    run_units(
        runner,
        _cut_units(run, sources),
        lambda unit: _unit_work(run, unit),
        lambda unit, result: _unit_scored(run, unit, result),
        lambda unit: _commit_unit(run, unit),
    )


def _load_model(params: ScoreParams, tracking_params: TrackingParams, runner: UnitRunner = INLINE):
    """(engine, model info, question field, pinned URI) after checking the model fits the
    params. With a remote runner the workers load the model (each once, for its units) and the
    "engine" here is the `EngineShape` the first of them reports: no second copy in memory."""
    tracking.setup(tracking_params)
    if runner.remote:
        name, version, pinned = pin_model(params)
        engine = runner.submit(describe_unit, engine_spec(params, pinned)).result()
    else:
        engine, name, version, pinned = load_engine(params)
    if engine.kind == QA and not params.question_field:
        raise InputError(
            f"score model {pinned} answers questions: set score.question_field to the record "
            "field that holds each document's question"
        )
    if engine.kind != QA and params.question_field:
        log.warning("%s answers no questions: score.question_field is ignored", pinned)
    model = {"uri": params.model_uri, "name": name, "version": version, "kind": engine.kind}
    if isinstance(engine, SummaryEngine | EngineShape) and engine.kind == SUMMARIZATION:
        model["generation"] = engine.generation  # what decides the summaries (and the fingerprint)
    return engine, model, params.question_field if engine.kind == QA else None, pinned


def _resume(stage: Stage) -> dict[str, Any] | None:
    """The state to go on from: None when a finished run with this fingerprint stands."""
    state = stage.load_state()
    if state and state.get("complete"):
        if (stage.out / "manifest.json").exists():
            return None
        state = None  # finished but its manifest is gone: start over rather than guess
    if state is None:
        _clean(stage.out)
        state = _new_state(stage)
    preds_dir = stage.out / PREDICTIONS
    preds_dir.mkdir(exist_ok=True)
    ahead = state.setdefault("ahead", {})  # (absent from states of earlier versions)
    for part in preds_dir.glob("part-*.parquet"):  # written, but the kill came before the state
        if part.name not in state["parts"] and part.name not in ahead:
            part.unlink()
    state["runs"] += 1
    if state["consumed"]:
        log.info(
            "resuming %s after %d input items (%d parts)",
            stage.out,
            state["consumed"],
            len(state["parts"]),
        )
    return state


def _start(
    stage: Stage,
    params: ScoreParams,
    engine,
    model,
    question_field,
    ingest: IngestParams | None = None,
) -> _Run | None:
    state = _resume(stage)
    if state is None:
        return None
    errors = stage.side_log(_ERRORS_PART)
    state["errors"] = errors.truncate(state["consumed"])
    progress = Progress("score", "items", every_s=_PROGRESS_EVERY_S, rated=("tokens",))
    progress.skip(state["consumed"])
    progress.add(0, scored=state["scored"], errors=state["errors"])
    run = _Run(params, stage, engine, model, state, errors.open(), progress, question_field)
    run.ingest = ingest or IngestParams()
    run.labels.update(state["labels"])
    run.per_source = {k: Counter(v) for k, v in state["per_source"].items()}
    run.next_part = len(state["parts"])
    return run


def score(
    params: ScoreParams,
    tracking_params: TrackingParams,
    *,
    ingest: IngestParams | None = None,
    runner: UnitRunner = INLINE,
) -> dict:
    """Score every document of `params.sources()` into `params.out`; returns the manifest.

    Documents are read and normalised with `ingest` (the configuration's `ingest` section;
    default `IngestParams()`), so a document's `doc_id` is its `doc_id` in the corpus. Each
    chunk is one unit on `runner` (default: scored here, in order; the flows pass a Dask-backed
    runner for `runner.kind: dask`); the output does not depend on the runner.

    Writes `predictions.parquet/part-*.parquet`, `errors.jsonl` (source, member, reason) and
    `manifest.json` whose counts reconcile: inputs = scored + errors."""
    t0 = time.perf_counter()
    sources = [require_path(s, "score input") for s in params.sources()]
    # `_clean` deletes predictions and errors by name: only in a directory longdoc wrote. The
    # lock comes before the model loads, so a second run into `out` stops at once.
    out = claim_output_dir(params.out, "score", force=params.force, legacy=(STATE_FILE,))
    with Stage("score", out, STATE_FILE) as stage:
        engine, model, question_field, pinned = _load_model(params, tracking_params, runner)
        inputs = [{"path": str(s), "sha256": sha256_tree(s)} for s in sources]
        ingest = ingest or IngestParams()
        stage.fingerprint = _fingerprint(params, inputs, model, ingest, engine)
        run = _start(stage, params, engine, model, question_field, ingest)
        if run is None:
            name, version = model["name"], model["version"]
            log.info("%s: every document already scored with %s v%s", out, name, version)
            return json.loads((out / "manifest.json").read_text())
        resumed_at = run.state["consumed"]
        run.spec = engine_spec(params, pinned)
        if isinstance(engine, InferenceEngine):  # units run here use the engine loaded above
            _ENGINES[run.spec] = engine
        try:
            _score_stream(run, sources, runner)
        finally:
            _ENGINES.pop(run.spec, None)
        return _finish(run, inputs, resumed_at, time.perf_counter() - t0)


def _finish(run: _Run, inputs: list[dict], resumed_at: int, seconds: float) -> dict:
    """Publish errors.jsonl, check the counts reconcile, write the manifest last."""
    state, schema = run.state, prediction_schema(run.engine.kind)
    if not state["parts"]:  # an input with no scorable document: still a readable, empty table
        with run.stage.part(run.preds_dir / "part-00000.parquet") as tmp:
            pq.write_table(schema.empty_table(), tmp)
        state["parts"].append("part-00000.parquet")
    run.progress.maybe_log(force=True)
    n_errors = run.errors.finalize(run.stage.out / ERRORS)
    counts = {"inputs": state["consumed"], "scored": state["scored"], "errors": n_errors}
    reconcile("score", counts, "inputs", "scored", "errors")
    manifest = {
        "stage": "score",
        "inputs": inputs,
        "model": run.model,
        "model_uri": run.params.model_uri,
        "model_version": run.model["version"],
        "params": params_dict(run.params),
        "counts": counts,
        **{k: state[k] for k in ("per_source", "labels", "tokens", "truncated", "parts", "runs")},
        "windowed": state.get("windowed", 0),  # documents read as more than one window
        "this_run": {
            "resumed_after_items": resumed_at,
            "scored": run.scored_now,
            "tokens": run.tokens_now,
            "seconds": round(seconds, 2),
            "docs_per_s": round(run.scored_now / max(seconds, 1e-9), 2),
            "model_tokens_per_s": round(run.tokens_now / max(run.infer_s, 1e-9)),
            "units_scored": run.units_scored,  # chunks scored by this run
            "units_reused": run.units_reused,  # chunks a killed run had scored
        },
        "versions": versions("torch", "transformers", "mlflow"),
    }
    run.stage.finish(manifest, final_state={**state, "complete": True})
    return manifest
