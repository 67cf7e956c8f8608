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
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
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
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    claim_output_dir,
    require_path,
    sha256_bytes,
    sha256_tree,
    versions,
    write_manifest,
)
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
_CHARS_PER_TOKEN_CAP = 64  # as serving: text past max_len * 64 chars can never be read

_DOCUMENT_FIELDS = [
    ("doc_id", pa.string()),  # sha256 of the normalised text, as ingest's doc_id
    ("source", pa.string()),
    ("member", pa.string()),
    ("tokens", pa.int32()),  # tokens the model read (after truncation)
    ("truncated", pa.bool_()),  # the document was longer than max_len tokens
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


def _fingerprint(params: ScoreParams, inputs: list[dict[str, str]], model: dict) -> str:
    """What the predictions depend on; batch sizes and the device do not change them."""
    relevant = {
        k: v
        for k, v in params_dict(params).items()
        if k in ("max_len", "bf16", "text_field", "question_field")
    }
    # the columns too: parts written with another table layout are never mixed with new ones
    columns = prediction_schema(model["kind"]).names
    blob = json.dumps(
        {"params": relevant, "inputs": inputs, "model": model, "columns": columns}, sort_keys=True
    )
    return sha256_bytes(blob.encode())


def _clean(out: Path) -> None:
    preds = out / PREDICTIONS
    if preds.is_dir():
        shutil.rmtree(preds)
    elif preds.exists():  # a single file from older versions
        preds.unlink()
    for name in (ERRORS, _ERRORS_PART, "manifest.json", STATE_FILE):
        (out / name).unlink(missing_ok=True)


def _load_state(out: Path, fingerprint: str) -> dict[str, Any] | None:
    try:
        state = json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if state.get("fingerprint") == fingerprint else None


def _truncate_errors(path: Path, consumed: int) -> int:
    """Keep the error records of items before `consumed` (a kill can leave later ones, or a torn
    last line); returns how many were kept."""
    kept: list[str] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                break
            if rec["_i"] < consumed:
                kept.append(json.dumps(rec, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(kept))
    return len(kept)


def _stream(params: ScoreParams, sources: list[Path]) -> Iterator[Document | Rejected]:
    ingest = IngestParams()
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


def score(params: ScoreParams, tracking_params: TrackingParams) -> dict:
    """Score every document of `params.sources()` into `params.out`; returns the manifest.

    Writes `predictions.parquet/part-*.parquet`, `errors.jsonl` (source, member, reason) and
    `manifest.json` whose counts reconcile: inputs = scored + errors."""
    t0 = time.perf_counter()
    sources = [require_path(s, "score input") for s in params.sources()]
    # `_clean` deletes predictions and errors by name: only in a directory longdoc wrote (checked
    # now, before the model loads; claimed and marked below).
    claim_output_dir(params.out, "score", force=params.force, legacy=(STATE_FILE,), create=False)
    tracking.setup(tracking_params)
    engine, name, version, pinned = load_engine(params)
    if engine.kind == QA and not params.question_field:
        raise InputError(
            f"score model {pinned} answers questions: set score.question_field to the record "
            "field that holds each document's question"
        )
    if engine.kind == CLASSIFICATION and params.question_field:
        log.warning("%s is a classifier: score.question_field is ignored", pinned)
    question_field = params.question_field if engine.kind == QA else None

    out = claim_output_dir(params.out, "score", force=params.force, legacy=(STATE_FILE,))
    inputs = [{"path": str(s), "sha256": sha256_tree(s)} for s in sources]
    model_info = {"uri": params.model_uri, "name": name, "version": version, "kind": engine.kind}
    fingerprint = _fingerprint(params, inputs, model_info)
    state = _load_state(out, fingerprint)
    if state and state.get("complete"):
        if (out / "manifest.json").exists():
            log.info("%s: every document already scored with %s v%s", out, name, version)
            return json.loads((out / "manifest.json").read_text())
        state = None  # finished but its manifest is gone: start over rather than guess
    if state is None:
        _clean(out)
        state = {
            "fingerprint": fingerprint,
            "consumed": 0,
            "parts": [],
            "scored": 0,
            "errors": 0,
            "tokens": 0,
            "truncated": 0,
            "labels": {},
            "per_source": {},
            "runs": 0,
        }
    preds_dir = out / PREDICTIONS
    preds_dir.mkdir(exist_ok=True)
    for part in preds_dir.glob("part-*.parquet"):  # written, but the kill came before the state
        if part.name not in state["parts"]:
            part.unlink()
    errors_path = out / _ERRORS_PART
    state["errors"] = _truncate_errors(errors_path, state["consumed"])
    state["runs"] += 1
    resumed_at = state["consumed"]
    if resumed_at:
        log.info(
            "resuming %s after %d input items (%d parts)", out, resumed_at, len(state["parts"])
        )

    labels = Counter(state["labels"])
    per_source: dict[str, Counter] = {k: Counter(v) for k, v in state["per_source"].items()}
    cap = engine.max_len * _CHARS_PER_TOKEN_CAP
    schema = prediction_schema(engine.kind)
    pending: list[_Pending] = []
    errors_file = open(errors_path, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
    progress = {"t": time.perf_counter(), "docs": 0, "tokens": 0, "infer_s": 0.0, "logged": 0.0}
    since_checkpoint = 0

    def error(index: int, source: str, member: str, reason: str) -> None:
        rec = {"_i": index, "source": source, "member": member, "reason": reason}
        errors_file.write(json.dumps(rec, ensure_ascii=False) + "\n")
        state["errors"] += 1
        per_source.setdefault(source, Counter())["errors"] += 1

    def checkpoint(consumed: int) -> None:
        """Score the pending chunk into one part, then record everything up to `consumed`."""
        if pending:
            t = time.perf_counter()
            scored = _score_chunk(engine, pending, params.batch_tokens)
            progress["infer_s"] += time.perf_counter() - t
            now = datetime.now(UTC)
            rows = []
            for p, result in zip(pending, scored, strict=True):
                if isinstance(result, str):
                    error(p.index, p.source, p.member, result)
                    continue
                enc, pred = result
                rows.append(
                    {
                        "doc_id": p.doc_id,
                        "source": p.source,
                        "member": p.member,
                        "tokens": len(enc.input_ids),
                        "truncated": enc.truncated or p.clipped,
                        **pred,
                        "model_name": name,
                        "model_version": version,
                        "scored_at": now,
                    }
                )
                if "label" in pred:
                    labels[pred["label"]] += 1
                per_source.setdefault(p.source, Counter())["scored"] += 1
                state["tokens"] += len(enc.input_ids)
                state["truncated"] += int(enc.truncated or p.clipped)
                progress["tokens"] += len(enc.input_ids)
            part = f"part-{len(state['parts']):05d}.parquet"
            with atomic_path(preds_dir / part) as tmp:
                pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
            state["parts"].append(part)
            state["scored"] += len(rows)
            progress["docs"] += len(rows)
            pending.clear()
        errors_file.flush()
        os.fsync(errors_file.fileno())
        state.update(
            consumed=consumed,
            labels=dict(labels),
            per_source={k: dict(v) for k, v in per_source.items()},
        )
        atomic_write_json(out / STATE_FILE, state)
        elapsed = time.perf_counter() - progress["t"]
        if progress["docs"] and elapsed - progress["logged"] >= _PROGRESS_EVERY_S:
            progress["logged"] = elapsed
            log.info(
                "scored %d documents (%.1f docs/s, %.0f tokens/s), %d errors",
                state["scored"],
                progress["docs"] / max(elapsed, 1e-9),
                progress["tokens"] / max(elapsed, 1e-9),
                state["errors"],
            )

    n_items = 0
    try:
        for index, item in enumerate(_stream(params, sources)):
            n_items = index + 1
            if index < resumed_at:
                continue  # done before the kill: read past it (reading is cheap, models are not)
            since_checkpoint += 1
            if isinstance(item, Rejected):
                error(index, item.source, item.member, item.reason)
            else:
                # cleaned as ingest cleans training text (its defaults), so the model sees
                # the same kind of text it was trained on
                raw = item.text if item.entities_decoded else decode_entities(item.text)
                text = normalize(raw)
                question = item.meta.get(question_field) if question_field else None
                if is_empty_document(text):  # the served model refuses the same documents
                    error(index, item.source, item.member, "empty document")
                elif question_field and not (
                    isinstance(question, str) and not is_empty_document(question)
                ):
                    error(
                        index, item.source, item.member, f"no {question_field!r} field (question)"
                    )
                else:
                    pending.append(
                        _Pending(
                            index,
                            item.source,
                            item.member,
                            sha256_bytes(text.encode()),
                            text[:cap],
                            question,
                            len(text) > cap,
                        )
                    )
            # A chunk of documents, or (for input that is mostly errors) enough items to be
            # worth a checkpoint.
            if len(pending) >= params.chunk_docs or since_checkpoint >= 4 * params.chunk_docs:
                checkpoint(index + 1)
                since_checkpoint = 0
        checkpoint(max(n_items, resumed_at))
    finally:
        errors_file.close()

    if not state["parts"]:  # an input with no scorable document: still a readable, empty table
        part = "part-00000.parquet"
        with atomic_path(preds_dir / part) as tmp:
            pq.write_table(schema.empty_table(), tmp)
        state["parts"].append(part)

    n_errors = 0
    with atomic_path(out / ERRORS) as tmp, open(tmp, "w", encoding="utf-8") as dst:
        with open(errors_path, encoding="utf-8") as src:  # streamed: errors can be millions
            for line in src:
                rec = json.loads(line)
                rec.pop("_i")
                dst.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n_errors += 1
    seconds = time.perf_counter() - t0
    counts = {"inputs": state["consumed"], "scored": state["scored"], "errors": n_errors}
    if counts["inputs"] != counts["scored"] + counts["errors"]:  # a bug, never bad input
        raise RuntimeError(f"score counts do not reconcile: {counts}")
    manifest = {
        "stage": "score",
        "inputs": inputs,
        "model": model_info,
        "model_uri": params.model_uri,
        "model_version": version,
        "params": params_dict(params),
        "counts": counts,
        "per_source": state["per_source"],
        "labels": state["labels"],
        "tokens": state["tokens"],
        "truncated": state["truncated"],
        "parts": state["parts"],
        "runs": state["runs"],
        "this_run": {
            "resumed_after_items": resumed_at,
            "scored": progress["docs"],
            "tokens": progress["tokens"],
            "seconds": round(seconds, 2),
            "docs_per_s": round(progress["docs"] / max(seconds, 1e-9), 2),
            "model_tokens_per_s": round(progress["tokens"] / max(progress["infer_s"], 1e-9)),
        },
        "versions": versions("torch", "transformers", "mlflow"),
    }
    write_manifest(out, **manifest)
    state["complete"] = True
    atomic_write_json(out / STATE_FILE, state)
    errors_path.unlink(missing_ok=True)
    return manifest
