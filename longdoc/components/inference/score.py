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
  memory holds one chunk (texts clipped to what the model reads) whatever the archive size.

How it resumes: the document stream is deterministic, and after each part the state file records
how many stream items are done. A part is written atomically *before* the state names it, and
error records carry their stream index, so after `kill -9` a rerun drops unnamed parts and error
records past the checkpoint, skips the items already done and scores each document exactly once.
A rerun of a finished run with the same inputs, model version and parameters does nothing; any
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
from longdoc.components.data.ingest import decode_entities, normalize
from longdoc.components.data.readers import Document, Rejected, iter_documents
from longdoc.components.inference.serving import (
    CLASSIFICATION,
    QA,
    Encoded,
    InferenceEngine,
    LongdocModel,
    is_empty_document,
)

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


def _model_name(uri: str) -> str:
    ref = uri.removeprefix("models:/")
    return ref.split("@", 1)[0].split("/", 1)[0] if uri.startswith("models:/") else uri


def load_engine(params: ScoreParams) -> tuple[InferenceEngine, str, str, str]:
    """(engine, model name, version, pinned uri): the URI resolved to one version, loaded once.

    Loading `models:/name/<version>` rather than the alias means a champion promoted mid-run
    cannot swap models between the version recorded and the weights used."""
    uri = params.model_uri
    try:
        version = tracking.resolve_model_version(uri)
    except mlflow.exceptions.MlflowException as exc:
        raise InputError(f"score model {uri}: {exc.message}") from exc
    name = _model_name(uri)
    pinned = f"models:/{name}/{version}" if uri.startswith("models:/") else uri
    try:
        pyfunc = mlflow.pyfunc.load_model(pinned)
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise InputError(f"score model {pinned}: cannot load ({exc})") from exc
    inner = pyfunc.unwrap_python_model()
    if not isinstance(inner, LongdocModel):
        raise InputError(f"score model {pinned}: not a longdoc model ({type(inner).__name__})")
    base = inner.engine
    engine = InferenceEngine(
        base.model,
        base.tokenizer,
        base.kind,
        max_len=params.max_len,
        device=params.device,
        bf16=params.bf16,
    )
    return engine, name, version, pinned


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
    params: ScoreParams, sources: list[Path], ingest: IngestParams
) -> Iterator[Document | Rejected]:
    return chain.from_iterable(
        iter_documents(
            src,
            max_member_bytes=ingest.max_member_bytes,
            max_total_bytes=ingest.max_total_bytes,
            text_field=params.text_field,
        )
        for src in sources
    )


def _score_chunk(
    engine: InferenceEngine, pending: list[_Pending], batch_tokens: int
) -> list[tuple[Encoded, dict[str, Any]] | str]:
    """(encoding, prediction) per pending document, or the reason it could not be scored.

    The chunk goes through in one call; if that fails (a document the tokenizer or the model
    chokes on, a batch that does not fit in accelerator memory), each document is retried alone
    so one bad document becomes one error record instead of failing the whole run."""

    def one_call(docs: list[_Pending]) -> list[tuple[Encoded, dict[str, Any]]]:
        questions = [p.question or "" for p in docs] if engine.kind == QA else None
        encoded = engine.encode([p.text for p in docs], questions)
        return list(zip(encoded, engine.run(encoded, batch_tokens), strict=True))

    try:
        return list(one_call(pending))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        log.warning(
            "a chunk of %d documents failed (%s); scoring them one by one", len(pending), exc
        )
    out: list[tuple[Encoded, dict[str, Any]] | str] = []
    for p in pending:
        try:
            out.append(one_call([p])[0])
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
    pending: list[_Pending] = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)
    per_source: dict[str, Counter] = field(default_factory=dict)
    infer_s: float = 0.0
    scored_now: int = 0  # in this run (the state counts every run)
    tokens_now: int = 0

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
    )


def _error(run: _Run, index: int, source: str, member: str, reason: str) -> None:
    run.errors.write(index, source=source, member=member, reason=reason)
    run.state["errors"] += 1
    run.per_source.setdefault(source, Counter())["errors"] += 1
    run.progress.add(0, errors=1)


def _admit(run: _Run, index: int, item: Document | Rejected) -> None:
    """The per-item step: queue stream item `index` for scoring, or record why it cannot be."""
    if isinstance(item, Rejected):
        _error(run, index, item.source, item.member, item.reason)
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
        _error(run, index, item.source, item.member, "empty document")
    elif qf and not (isinstance(question, str) and not is_empty_document(question)):
        _error(run, index, item.source, item.member, f"no {qf!r} field (question)")
    else:
        cap = run.engine.char_cap()  # None: windows read the whole text
        doc_id = sha256_bytes(text.encode())
        clipped = cap is not None and len(text) > cap
        run.pending.append(
            _Pending(index, item.source, item.member, doc_id, text[:cap], question, clipped)
        )


def _row(run: _Run, p: _Pending, enc: Encoded, pred: dict[str, Any], now: datetime) -> dict:
    """One predictions row; counts it."""
    truncated = enc.truncated or p.clipped
    if "label" in pred:
        run.labels[pred["label"]] += 1
    run.per_source.setdefault(p.source, Counter())["scored"] += 1
    run.state["tokens"] += enc.tokens
    run.state["truncated"] += int(truncated)
    run.state["windowed"] = run.state.get("windowed", 0) + int(len(enc.windows) > 1)
    run.scored_now += 1
    run.tokens_now += enc.tokens
    run.progress.add(0, scored=1, tokens=enc.tokens)
    return {
        "doc_id": p.doc_id,
        "source": p.source,
        "member": p.member,
        "tokens": enc.tokens,
        "truncated": truncated,
        "windows": len(enc.windows),
        **pred,
        "model_name": run.model["name"],
        "model_version": run.model["version"],
        "scored_at": now,
    }


def _score_pending(run: _Run) -> None:
    """The per-chunk step: score the pending documents into one new part (written whole
    before any checkpoint names it)."""
    t = time.perf_counter()
    scored = _score_chunk(run.engine, run.pending, run.params.batch_tokens)
    run.infer_s += time.perf_counter() - t
    now = datetime.now(UTC)
    rows = []
    for p, result in zip(run.pending, scored, strict=True):
        if isinstance(result, str):
            _error(run, p.index, p.source, p.member, result)
        else:
            rows.append(_row(run, p, *result, now))
    part = f"part-{len(run.state['parts']):05d}.parquet"
    schema = prediction_schema(run.engine.kind)
    with run.stage.part(run.preds_dir / part) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    run.state["parts"].append(part)
    run.state["scored"] += len(rows)
    run.pending.clear()


def _checkpoint(run: _Run, consumed: int) -> None:
    """Score the pending chunk into one part, then record everything up to `consumed`."""
    if run.pending:
        _score_pending(run)
    run.state.update(
        consumed=consumed,
        labels=dict(run.labels),
        per_source={k: dict(v) for k, v in run.per_source.items()},
    )
    run.stage.checkpoint(run.state)
    run.progress.maybe_log()


def _score_stream(run: _Run, sources: list[Path]) -> None:
    """Every stream item through `_admit`; a checkpoint per chunk of documents (or, for input
    that is mostly errors, per enough items to be worth one)."""
    resumed_at, chunk = run.state["consumed"], run.params.chunk_docs
    n_items = since_checkpoint = 0
    for index, item in enumerate(_stream(run.params, sources, run.ingest)):
        n_items = index + 1
        if index < resumed_at:
            continue  # done before the kill: read past it (reading is cheap, models are not)
        since_checkpoint += 1
        run.progress.add(1)
        _admit(run, index, item)
        if len(run.pending) >= chunk or since_checkpoint >= 4 * chunk:
            _checkpoint(run, index + 1)
            since_checkpoint = 0
    _checkpoint(run, max(n_items, resumed_at))


def _load_model(params: ScoreParams, tracking_params: TrackingParams):
    """(engine, model info, question field) after checking the model fits the params."""
    tracking.setup(tracking_params)
    engine, name, version, pinned = load_engine(params)
    if engine.kind == QA and not params.question_field:
        raise InputError(
            f"score model {pinned} answers questions: set score.question_field to the record "
            "field that holds each document's question"
        )
    if engine.kind == CLASSIFICATION and params.question_field:
        log.warning("%s is a classifier: score.question_field is ignored", pinned)
    model = {"uri": params.model_uri, "name": name, "version": version, "kind": engine.kind}
    return engine, model, params.question_field if engine.kind == QA else None


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
    for part in preds_dir.glob("part-*.parquet"):  # written, but the kill came before the state
        if part.name not in state["parts"]:
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
    return run


def score(
    params: ScoreParams, tracking_params: TrackingParams, *, ingest: IngestParams | None = None
) -> dict:
    """Score every document of `params.sources()` into `params.out`; returns the manifest.

    Documents are read and normalised with `ingest` (the configuration's `ingest` section;
    default `IngestParams()`), so a document's `doc_id` is its `doc_id` in the corpus.

    Writes `predictions.parquet/part-*.parquet`, `errors.jsonl` (source, member, reason) and
    `manifest.json` whose counts reconcile: inputs = scored + errors."""
    t0 = time.perf_counter()
    sources = [require_path(s, "score input") for s in params.sources()]
    # `_clean` deletes predictions and errors by name: only in a directory longdoc wrote. The
    # lock comes before the model loads, so a second run into `out` stops at once.
    out = claim_output_dir(params.out, "score", force=params.force, legacy=(STATE_FILE,))
    with Stage("score", out, STATE_FILE) as stage:
        engine, model, question_field = _load_model(params, tracking_params)
        inputs = [{"path": str(s), "sha256": sha256_tree(s)} for s in sources]
        ingest = ingest or IngestParams()
        stage.fingerprint = _fingerprint(params, inputs, model, ingest, engine)
        run = _start(stage, params, engine, model, question_field, ingest)
        if run is None:
            name, version = model["name"], model["version"]
            log.info("%s: every document already scored with %s v%s", out, name, version)
            return json.loads((out / "manifest.json").read_text())
        resumed_at = run.state["consumed"]
        _score_stream(run, sources)
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
        },
        "versions": versions("torch", "transformers", "mlflow"),
    }
    run.stage.finish(manifest, final_state={**state, "complete": True})
    return manifest
