"""The MLflow model and the inference engine behind it and behind batch scoring.

Why pyfunc: `models:/longdoc-<task>@champion` then loads with one call anywhere the project is
installed (`mlflow.pyfunc.load_model`, `mlflow models serve`), and the input/output contract does
not depend on how the checkpoint is stored. The model is logged "from code"
(`components/mlflow_model.py`), so loading rebuilds it from this module instead of unpickling.

Three kinds of checkpoint are served, chosen from `config.architectures`:

- sequence classification: a `text` column in; `label` + `probabilities` out;
- extractive QA: `text` (the context) + `question` in; `answer` + `score` out;
- summarization (an LED, `inference.summarize`): a `text` column in; `summary` out;

and all answer `tokens` (how many the model read), `truncated` and `windows`, as batch
scoring's rows do.
Every row is checked before anything runs: a null, non-string or empty text (or question), an
empty batch or an out-of-range param is refused with an `MlflowException(INVALID_PARAMETER_VALUE)`
naming each bad row, which `mlflow models serve` turns into an HTTP 400 with that message and no
stack trace. `is_empty_document` is the one rule for "empty" that `longdoc score` applies too.

`InferenceEngine` is the fast path both the pyfunc `predict` and `inference.score` use: every
document is tokenized once (one batched tokenizer call), cut into the windows fine-tuning reads
(training.adapters: the same functions, the window settings the checkpoint was fine-tuned with,
recorded in its config by training.windows.record_window_settings), the windows of all documents
are sorted by length and cut into batches by a token budget (rows x longest row <=
`batch_tokens`, so sorted neighbours pad to nearly nothing), the forward runs under
`torch.inference_mode`, on CUDA when present, optionally in bf16, and each document's windows are
put back together as fine-tuning's dev predictions are (classification: logits averaged; QA: the
best span over all windows). A checkpoint without recorded settings (fine-tuned before they were
recorded) is read as it always was served: truncated at `max_len`.
"""

from __future__ import annotations

import json
import numbers
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array

from longdoc.components.data.ingest import normalize
from longdoc.components.training.adapters import (
    MAX_ANSWER_TOKENS,
    MAX_QUESTION_TOKENS,
    Encoded,
    Window,
    aggregate_class_logits,
    best_window_span,
    classification_encoded,
    span_score,
    span_text,
    span_windows,
)
from longdoc.components.training.windows import window_settings

CLASSIFICATION, QA, SUMMARIZATION = "classification", "qa", "summarization"
_ARCHITECTURES = {
    "LongformerForSequenceClassification": CLASSIFICATION,
    "LongformerForQuestionAnswering": QA,
    "LEDForConditionalGeneration": SUMMARIZATION,
}
# The "from code" file MLflow runs to rebuild a logged model of each kind (nothing unpickled).
_MODEL_CODE = {
    CLASSIFICATION: "mlflow_model.py",
    QA: "mlflow_model.py",
    SUMMARIZATION: "mlflow_summarizer.py",
}

# Packages the served model imports, pinned to the versions it was logged with (MLflow would
# otherwise import and run the model to infer them). torch's local tag (+cpu, +cu124) is dropped
# so the same pin matches the CPU and the CUDA build.
SERVING_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "pandas", "mlflow")

DEFAULT_BATCH_TOKENS = 16384
__all__ = ["MAX_ANSWER_TOKENS", "Encoded"]  # one limit and one type, from training.adapters
# Truncating engines clip texts to max_len * this many chars before tokenizing (no real
# tokenizer averages more than 64 characters a token, so the clip never changes the kept tokens);
# `longdoc score` clips with the same number.
CHARS_PER_TOKEN_CAP = 64
MIN_CONTEXT_TOKENS = 16  # a QA window must leave this many tokens for the text (as fine-tuning)
MIN_MAX_LEN = 8  # the shortest `max_len` a request may ask for: specials + a few words
_EMPTY_PROBE_CHARS = 4096
_MAX_ROW_ERRORS = 50  # bad rows listed one by one in a refusal; the rest are counted


def is_empty_document(text: str) -> bool:
    """True when nothing readable is left once ingest's normalisation has run (only whitespace,
    control characters, byte-order marks): `longdoc score` records such a document as an error
    and the served model refuses it, so both call the same documents empty.

    A readable character in the first few KB settles it (normalisation only removes characters),
    so a long document costs one short probe, not a pass over all of it."""
    return not normalize(text[:_EMPTY_PROBE_CHARS]) and not normalize(text)


def serving_requirements() -> list[str]:
    """`pkg==version` for every package the served model needs, from this environment."""
    pins = []
    for name in SERVING_PACKAGES:
        pins.append(f"{name}=={metadata.version(name).split('+', 1)[0]}")
    return pins


def checkpoint_kind(checkpoint: Path | str) -> str:
    """`classification`, `qa` or `summarization`, from `config.json`'s architectures."""
    path = Path(checkpoint) / "config.json"
    try:
        archs = json.loads(path.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the model config ({exc})") from exc
    for arch in archs:
        if arch in _ARCHITECTURES:
            return _ARCHITECTURES[arch]
    raise ValueError(
        f"{path}: architectures {archs} cannot be served; expected one of "
        f"{', '.join(_ARCHITECTURES)}"
    )


def token_budget_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches: sorted by length, each batch's rows x longest row within
    `batch_tokens` (a longer single document still gets a batch of its own).

    Why: padding costs as much compute as real tokens; sorting makes neighbours nearly equal in
    length, so a batch pads to almost nothing, and the budget keeps activation memory flat
    whether a batch is 64 short documents or 2 long ones."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def padded_windows(
    windows: list[Window], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, global_attention_mask) of `windows`, right-padded to the
    longest, on `device`."""
    width = max(len(w.ids) for w in windows)
    ids = torch.full((len(windows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    glob = torch.zeros((len(windows), width), dtype=torch.long)
    for row, window in enumerate(windows):
        n = len(window.ids)
        ids[row, :n] = torch.tensor(window.ids)
        mask[row, :n] = 1
        glob[row, window.global_positions] = 1
    return ids.to(device), mask.to(device), glob.to(device)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class InferenceEngine:
    """A loaded checkpoint (model + tokenizer) that turns documents into predictions.

    `max_len` caps the window width the checkpoint was fine-tuned with (its recorded
    `max_len`, else the model's positions); `windows` / `window_overlap` default to the recorded
    settings (older checkpoints: no windows, i.e. truncation at `max_len`)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        kind: str,
        *,
        max_len: int | None = None,
        device: str = "auto",
        bf16: bool = False,
        windows: bool | None = None,
        window_overlap: int | None = None,
    ) -> None:
        self.kind = kind
        self.tokenizer = tokenizer
        self.device = pick_device(device)
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        config = model.config
        limit = int(config.max_position_embeddings) - 2  # RoBERTa positions start at pad + 1
        settings = window_settings(config) or {}
        limit = min(limit, int(settings.get("max_len", limit)))
        self.max_len = min(max_len, limit) if max_len else limit
        self.windows = bool(settings.get("windows", False)) if windows is None else windows
        self.window_overlap = int(
            settings.get("window_overlap", 0) if window_overlap is None else window_overlap
        )
        if kind == CLASSIFICATION:
            self.labels = [str(config.id2label[i]) for i in range(config.num_labels)]

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Path | str,
        *,
        max_len: int | None = None,
        device: str = "auto",
        bf16: bool = False,
        windows: bool | None = None,
        window_overlap: int | None = None,
    ) -> InferenceEngine:
        from transformers import AutoTokenizer

        from longdoc.components.modeling.model import (
            LongformerForQuestionAnswering,
            LongformerForSequenceClassification,
            quiet_loading,
        )

        kind = checkpoint_kind(checkpoint)
        if kind == SUMMARIZATION:
            raise ValueError(f"{checkpoint}: an LED summarizer; load it with a SummaryEngine")
        model_cls = (
            LongformerForSequenceClassification
            if kind == CLASSIFICATION
            else LongformerForQuestionAnswering
        )
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        with quiet_loading():
            model = model_cls.from_pretrained(checkpoint)
        return cls(
            model,
            tokenizer,
            kind,
            max_len=max_len,
            device=device,
            bf16=bf16,
            windows=windows,
            window_overlap=window_overlap,
        )

    def reconfigured(
        self, *, max_len: int | None = None, device: str = "auto", bf16: bool = False
    ) -> InferenceEngine:
        """The same model read the same way (the recorded window settings) under new run
        settings: what batch scoring does with a loaded pyfunc model's engine. Engines of other
        kinds (inference.zeroshot) override it."""
        return InferenceEngine(
            self.model, self.tokenizer, self.kind, max_len=max_len, device=device, bf16=bf16
        )

    def char_cap(self, max_len: int | None = None) -> int | None:
        """How many characters of a text can matter: max_len * 64 when truncating; None (all)
        with windows, which read the whole text."""
        if self.windows:
            return None
        return (min(max_len, self.max_len) if max_len else self.max_len) * CHARS_PER_TOKEN_CAP

    # ------------------------------------------------------------------ tokenizing

    def encode(
        self, texts: list[str], questions: list[str] | None = None, max_len: int | None = None
    ) -> list[Encoded]:
        """Tokenize a list of documents (one fast-tokenizer call: it runs in parallel) and cut
        each into the windows fine-tuning reads (training.adapters), or into its first window
        when the engine truncates. Each result carries `tokens` (read) and `truncated`."""
        limit = min(max_len, self.max_len) if max_len else self.max_len  # per call: no shared state
        cap = self.char_cap(limit)
        clipped = [t[:cap] for t in texts] if cap else list(texts)
        max_windows = None if self.windows else 1
        tok = self.tokenizer
        cls, sep = tok.cls_token_id, tok.sep_token_id
        out = []
        if self.kind == CLASSIFICATION:
            ids = tok(clipped, add_special_tokens=False)["input_ids"] if clipped else []
            for i, (row, text) in enumerate(zip(ids, texts, strict=True)):
                enc = classification_encoded(
                    str(i), list(row), cls, sep, limit, self.window_overlap, max_windows
                )
                enc.truncated = enc.truncated or (cap is not None and len(text) > cap)
                out.append(enc)
            return out
        if questions is None:
            raise ValueError("a QA model needs a question for every document")
        q_ids = tok(list(questions), add_special_tokens=False)["input_ids"] if clipped else []
        ctx = tok(clipped, add_special_tokens=False, return_offsets_mapping=True) if clipped else {}
        for i, text in enumerate(clipped):
            tokens = list(ctx["input_ids"][i])
            offsets = [tuple(o) for o in ctx["offset_mapping"][i]]
            windows = span_windows(
                list(q_ids[i]), tokens, offsets, text, 0, cls, sep, limit,
                self.window_overlap, max_windows,
            )  # fmt: skip
            prefix = min(len(q_ids[i]), MAX_QUESTION_TOKENS) + 3
            read = len(tokens) if self.windows else min(len(tokens), limit - prefix - 1)
            enc = Encoded(str(i), windows, segments=[text], tokens=prefix + read + 1)
            enc.truncated = read < len(tokens) or (cap is not None and len(texts[i]) > cap)
            out.append(enc)
        return out

    # ------------------------------------------------------------------ inference

    def run(
        self, docs: list[Encoded], batch_tokens: int = DEFAULT_BATCH_TOKENS
    ) -> list[dict[str, Any]]:
        """Predictions for `docs`, in their order: {label, probabilities} or {answer, score}.

        The windows of all documents are batched together by the token budget; each
        document's window outputs are then combined exactly as fine-tuning's dev predictions
        combine them (training.adapters)."""
        pad = self.tokenizer.pad_token_id
        items = [(d, w) for d, doc in enumerate(docs) for w in range(len(doc.windows))]
        outputs: dict[tuple[int, int], Any] = {}
        lengths = [len(docs[d].windows[w].ids) for d, w in items]
        for batch in token_budget_batches(lengths, batch_tokens):
            windows = [docs[items[i][0]].windows[items[i][1]] for i in batch]
            ids, mask, glob = padded_windows(windows, pad, self.device)
            with torch.inference_mode():
                out = self.model(input_ids=ids, attention_mask=mask, global_attention_mask=glob)
            if self.kind == CLASSIFICATION:
                logits = out.logits.float().cpu()
                for row, i in enumerate(batch):
                    outputs[items[i]] = logits[row]
            else:
                start, end = out.start_logits.float().cpu(), out.end_logits.float().cpu()
                for row, i in enumerate(batch):
                    outputs[items[i]] = (start[row], end[row])
        results = []
        for d, doc in enumerate(docs):
            rows = [outputs[(d, w)] for w in range(len(doc.windows))]
            if self.kind == CLASSIFICATION:
                probs = torch.softmax(aggregate_class_logits(torch.stack(rows)), -1).tolist()
                label = self.labels[max(range(len(probs)), key=probs.__getitem__)]
                results.append({"label": label, "probabilities": probs})
            else:
                results.append(_best_answer(doc, rows))
        return results

    def predict_texts(
        self,
        texts: list[str],
        questions: list[str] | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        max_len: int | None = None,
    ) -> list[dict[str, Any]]:
        return self.run(self.encode(texts, questions, max_len), batch_tokens)


def _best_answer(doc: Encoded, rows: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """The best span over all windows of one document, decoded as fine-tuning decodes its dev
    predictions (whole words, at most MAX_ANSWER_TOKENS tokens, start + end logit compared
    across windows); its score is P(start) x P(end), both softmaxes over every window."""
    width = max(len(w.ids) for w in doc.windows)
    start = torch.zeros((len(rows), width))
    end = torch.zeros((len(rows), width))
    for i, (s, e) in enumerate(rows):
        n = len(doc.windows[i].ids)
        start[i, :n], end[i, :n] = s[:n], e[:n]
    best, w, s, e = best_window_span(doc, start, end, width)
    if best == float("-inf"):
        return {"answer": "", "score": 0.0}
    answer = span_text(doc, doc.windows[w], s, e)
    return {"answer": answer, "score": span_score(doc, start, end, width, best)}


class LongdocModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around an HF-format checkpoint directory (model + tokenizer)."""

    def load_context(self, context) -> None:
        self.engine = InferenceEngine.from_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Predictions for every row, or an `MlflowException(INVALID_PARAMETER_VALUE)` (HTTP 400
        when served) that names every bad row and bad param: nothing is scored until all are
        good, so a client never has to match partial output to its rows."""
        engine = self.engine
        max_len, batch_tokens = checked_params(params or {}, engine.max_len)
        texts, questions = checked_rows(model_input, engine, max_len)
        docs = engine.encode(texts, questions, max_len)
        preds = engine.run(docs, batch_tokens)
        for pred, doc in zip(preds, docs, strict=True):
            pred["tokens"] = doc.tokens
            pred["truncated"] = doc.truncated
            pred["windows"] = len(doc.windows)
        return pd.DataFrame(preds, columns=output_columns(engine.kind))


LongdocClassifier = LongdocModel  # the name models logged before the QA kind import


_REAL_PARAMS = frozenset({"length_penalty"})  # request params that are not whole numbers

_KIND_COLUMNS = {
    CLASSIFICATION: ["label", "probabilities"],
    QA: ["answer", "score"],
    SUMMARIZATION: ["summary"],
}


def output_columns(kind: str) -> list[str]:
    """A served model's answer columns: its kind's, then what it read."""
    return [*_KIND_COLUMNS[kind], "tokens", "truncated", "windows"]


def refuse(problems: list[str], what: str) -> MlflowException:
    shown = problems[:_MAX_ROW_ERRORS]
    more = len(problems) - len(shown)
    lines = [what, *(f"  {p}" for p in shown)] + ([f"  ... and {more} more"] if more else [])
    return MlflowException.invalid_parameter_value("\n".join(lines))


def checked_params(params: dict[str, Any], model_max_len: int) -> tuple[int, int]:
    """(max_len, batch_tokens) from a request's params, or a refusal naming each bad one.
    A `max_len` above the model's positions reads as many as it has (the signature's default,
    4096, asks for "all of them")."""
    problems = []
    values = {}
    for name, default, low in (
        ("max_len", model_max_len, MIN_MAX_LEN),
        ("batch_tokens", DEFAULT_BATCH_TOKENS, 1),
    ):
        value = params.get(name)
        if value is None:
            values[name] = default
        elif isinstance(value, bool) or not isinstance(value, numbers.Integral):
            problems.append(f"param {name}={value!r}: expected a whole number >= {low}")
        elif value < low:
            problems.append(f"param {name}={value}: must be at least {low}")
        else:
            values[name] = int(value)
    if problems:
        raise refuse(problems, "invalid params:")
    return min(values["max_len"], model_max_len), values["batch_tokens"]


def _cell_problem(value: Any, column: str) -> str | None:
    """Why one cell cannot be read as text, or None when it can."""
    if value is None or (not isinstance(value, str) and _is_missing(value)):
        return f"{column!r} is null"
    if not isinstance(value, str):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        return f"{column!r} must be a string, not {type(value).__name__} ({shown})"
    if is_empty_document(value):
        return f"{column!r} is empty (nothing but whitespace or control characters)"
    return None


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists, arrays: not a scalar missing value
        return False


def checked_rows(
    model_input: pd.DataFrame, engine: InferenceEngine, max_len: int
) -> tuple[list[str], list[str] | None]:
    """The texts (and for QA the questions) of a request, or a refusal with one line per bad
    row: a null, non-string or empty text or question, or (QA) a question that leaves no room
    for the context within `max_len` tokens (a question is cut to MAX_QUESTION_TOKENS tokens and
    must leave MIN_CONTEXT_TOKENS a window, as in fine-tuning)."""
    if not isinstance(model_input, pd.DataFrame):
        model_input = pd.DataFrame(model_input)
    columns = ["text", "question"] if engine.kind == QA else ["text"]
    missing = [c for c in columns if c not in model_input.columns]
    if missing:
        raise refuse(
            [f"no {c!r} column" for c in missing],
            f"this {engine.kind} model reads the columns {columns}:",
        )
    if len(model_input) == 0:
        raise MlflowException.invalid_parameter_value(
            "the batch is empty: send at least one row with a 'text'"
        )
    cells = {c: model_input[c].tolist() for c in columns}
    reasons: dict[int, list[str]] = {}
    for row in range(len(model_input)):
        for c in columns:
            if (reason := _cell_problem(cells[c][row], c)) is not None:
                reasons.setdefault(row, []).append(reason)
    if engine.kind == QA:
        tok = engine.tokenizer
        room = max_len - tok.num_special_tokens_to_add(pair=True) - MIN_CONTEXT_TOKENS
        rows = [r for r, q in enumerate(cells["question"]) if isinstance(q, str)]
        # clipped as texts are: a question past max_len * 64 characters is too long anyway
        clipped = [cells["question"][r][: max_len * CHARS_PER_TOKEN_CAP] for r in rows]
        ids = tok(clipped, add_special_tokens=False)["input_ids"] if rows else []
        for row, question_ids in zip(rows, ids, strict=True):
            if min(len(question_ids), MAX_QUESTION_TOKENS) > room:
                reasons.setdefault(row, []).append(
                    f"the question is {len(question_ids)} tokens, which leaves no room for the "
                    f"text within max_len={max_len} tokens"
                )
    if reasons:
        problems = [f"row {row}: {'; '.join(reasons[row])}" for row in sorted(reasons)]
        raise refuse(problems, f"{len(problems)} of {len(model_input)} rows cannot be scored:")
    return cells["text"], cells["question"] if engine.kind == QA else None


def model_signature(kind: str, extra_params: dict[str, Any] | None = None) -> ModelSignature:
    """The input/output contract of a served model of `kind`. `extra_params` (name -> default)
    are further request params (a summarizer's generation settings, defaulting to the
    checkpoint's own) and may replace the default `max_len`; `length_penalty` is a real number,
    every other param a whole number."""
    defaults = {"max_len": 4096, "batch_tokens": DEFAULT_BATCH_TOKENS, **(extra_params or {})}
    params = ParamSchema(
        [
            ParamSpec(name, "double" if name in _REAL_PARAMS else "long", value)
            for name, value in defaults.items()
        ]
    )
    read = [ColSpec("long", "tokens"), ColSpec("boolean", "truncated"), ColSpec("long", "windows")]
    text = ColSpec("string", "text")
    if kind == CLASSIFICATION:
        inputs = Schema([text])
        outputs = Schema(
            [ColSpec("string", "label"), ColSpec(Array("double"), "probabilities"), *read]
        )
    elif kind == QA:
        inputs = Schema([text, ColSpec("string", "question")])
        outputs = Schema([ColSpec("string", "answer"), ColSpec("double", "score"), *read])
    else:
        inputs = Schema([text])
        outputs = Schema([ColSpec("string", "summary"), *read])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def input_example(kind: str) -> pd.DataFrame:
    """A one-row request of `kind`, logged with the model: MLflow shows it as the model's
    example request and, at logging time, serves it once through the logged model, so a model
    that cannot answer its own example is reported then rather than at the first request."""
    text = "A long document: a review, a report or an article, of up to thousands of tokens."
    if kind == QA:
        return pd.DataFrame({"text": [text], "question": ["What kind of document is this?"]})
    return pd.DataFrame({"text": [text]})


def log_longdoc_model(
    checkpoint: Path, registered_name: str | None
) -> mlflow.models.model.ModelInfo:
    """Log `checkpoint` (a classification, QA or LED summarization checkpoint) as the active
    run's pyfunc model, registering it when a name is given; the signature follows the
    checkpoint's kind (a summarizer's params default to its encoder positions and its saved
    generation settings)."""
    kind = checkpoint_kind(checkpoint)
    extra = None
    if kind == SUMMARIZATION:
        from longdoc.components.inference.summarize import summarizer_param_defaults

        extra = summarizer_param_defaults(checkpoint)
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name(_MODEL_CODE[kind])),
        artifacts={"checkpoint": str(checkpoint)},
        signature=model_signature(kind, extra),
        input_example=input_example(kind),
        pip_requirements=serving_requirements(),
        registered_model_name=registered_name,
        metadata={"longdoc_kind": kind},
    )
