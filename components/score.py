"""Batch scoring: every document of an archive or directory through a registered model.

Documents are read with the ingest stage's readers, so anything ingest accepts can be scored,
and anything it would reject lands in `errors.jsonl` with the reason instead of stopping the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components import tracking
from components.config import IngestParams, ScoreParams, TrackingParams, params_dict
from components.ingest import Document, iter_documents, normalize
from components.io import atomic_path, atomic_write_text, require_path, sha256_tree, write_manifest

log = logging.getLogger(__name__)

PREDICTION_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("member", pa.string()),
        ("label", pa.string()),
        ("probabilities", pa.list_(pa.float32())),
        ("model_version", pa.string()),
    ]
)


def score(params: ScoreParams, tracking_params: TrackingParams) -> dict:
    """Write `params.out/predictions.parquet` and `errors.jsonl`; returns the manifest dict."""
    t0 = time.perf_counter()
    source = require_path(params.source, "score source")
    tracking.setup(tracking_params)
    version = tracking.resolve_model_version(params.model_uri)
    model = mlflow.pyfunc.load_model(params.model_uri)

    rows: dict[str, list] = {name: [] for name in PREDICTION_SCHEMA.names}
    errors: list[dict] = []

    def flush(batch: list[tuple[str, Document]]) -> None:
        pred = model.predict(
            pd.DataFrame({"text": [t for t, _ in batch]}), params={"max_len": params.max_len}
        )
        for (text, doc), label, probs in zip(
            batch, pred["label"], pred["probabilities"], strict=True
        ):
            rows["doc_id"].append(hashlib.sha256(text.encode()).hexdigest())
            rows["source"].append(doc.source)
            rows["member"].append(doc.member)
            rows["label"].append(str(label))
            rows["probabilities"].append([float(p) for p in probs])
            rows["model_version"].append(version)
        log.info("scored %d documents (%d errors so far)", len(rows["doc_id"]), len(errors))
        batch.clear()

    # Documents stream through in batches: an archive is never held in memory whole.
    batch: list[tuple[str, Document]] = []
    for item in iter_documents(source, max_member_bytes=IngestParams().max_member_bytes):
        if not isinstance(item, Document):
            errors.append({"source": item.source, "member": item.member, "reason": item.reason})
            continue
        text = normalize(item.text)
        if not text:
            errors.append(
                {"source": item.source, "member": item.member, "reason": "empty document"}
            )
            continue
        batch.append((text, item))
        if len(batch) == params.batch_size:
            flush(batch)
    if batch:
        flush(batch)

    out = Path(params.out)
    with atomic_path(out / "predictions.parquet") as tmp:
        pq.write_table(pa.table(rows, schema=PREDICTION_SCHEMA), tmp)
    atomic_write_text(out / "errors.jsonl", "".join(json.dumps(e) + "\n" for e in errors))
    scored = len(rows["doc_id"])
    counts = {"inputs": scored + len(errors), "scored": scored, "errors": len(errors)}
    label_counts = pd.Series(rows["label"], dtype="object").value_counts().to_dict()
    manifest = {
        "stage": "score",
        "inputs": {"source": str(source), "sha256": sha256_tree(source)},
        "model_uri": params.model_uri,
        "model_version": version,
        "params": params_dict(params),
        "counts": counts,
        "labels": label_counts,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_manifest(out, **manifest)
    return manifest
