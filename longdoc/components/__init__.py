"""The domain library: plain Python on torch, transformers, pyarrow, spaCy and MLflow; never
Prefect (orchestration lives in `longdoc.flows`). Its sub-packages follow the pipeline:

- `core`: configuration, file helpers (atomic writes, manifests, output ownership), MLflow.
- `data`: reading archives (`readers`), the ingest and tokenize stages.
- `modeling`: the long encoder, task heads, short-to-long conversion, the kernel build stage.
- `training`: pretraining, fine-tuning, windows over long inputs, per-task-kind adapters.
- `tasks`: one module per fine-tuning task (official formats and metrics).
- `inference`: the served model, batch scoring, `longdoc evaluate`.
- `synthetic`: the embedded sample data generator.

Imports point down and sideways within this layer (inference -> training -> modeling ->
core), and down to `longdoc.kernels`; nothing here imports `longdoc.flows`.
"""
