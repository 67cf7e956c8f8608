"""Zero-shot classification with a masked LM and a prompt (`longdoc score --zero-shot NAME`).

No labelled data: the document is followed by a prompt with a `<mask>` ("In short, is this a
positive review or a negative review? It was <mask>."), and each label is scored by how likely
its verbalizer words are at the mask (Schick & Schuetze's cloze classification; label
descriptions in the prompt as Puri & Catanzaro 2019):

- a window is `<s> document tokens <prompt with mask> </s>` with global attention on the prompt
  and the mask, so the mask reads the whole window whatever the local attention window;
- a label's score in a window is log sum_w P(w at the mask) over its words (each word must be one
  token, " word"), normalised over the labels;
- long documents are cut into the windows fine-tuned classifiers read (`training.windows.
  window_starts`, `window_overlap` shared) and the windows' label scores are combined as
  fine-tuned classification combines its windows' logits (`training.adapters.
  aggregate_class_logits`: the mean);
- calibration ("calibrate before use", Zhao et al. 2021): the label probabilities are divided by
  those the same prompt gets after an empty document (a content-free input), i.e. the
  document's normalised label scores minus the empty document's, then a softmax.

The classifier is logged and registered in MLflow as `longdoc-zeroshot-<name>`: a pyfunc model
(`mlflow_zeroshot.py`, logged from code) with the pretrained checkpoint and the classifier's
definition as artifacts and exactly the signature of a fine-tuned classifier, so `longdoc score`,
the `batch-score` deployment and `mlflow models serve` take it unchanged. The same definition on
the same checkpoint reuses its registered version (a fingerprint tag), so a rerun of scoring
resumes instead of starting over against a new version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import torch

from longdoc.components.core.config import (
    IngestParams,
    ScoreParams,
    TrackingParams,
    ZeroShotClassifier,
)
from longdoc.components.core.io import InputError, sha256_tree
from longdoc.components.inference.cloze import (
    ClozeRow,
    MaskedLM,
    check_masked_lm,
    resolve_checkpoint,
)
from longdoc.components.inference.serving import (
    CLASSIFICATION,
    DEFAULT_BATCH_TOKENS,
    Encoded,
    InferenceEngine,
    LongdocModel,
    input_example,
    model_signature,
    serving_requirements,
)
from longdoc.components.training.adapters import Window, aggregate_class_logits
from longdoc.components.training.windows import window_starts

log = logging.getLogger(__name__)

FINGERPRINT_TAG = "longdoc_zeroshot_fingerprint"


def registered_name(name: str) -> str:
    return f"longdoc-zeroshot-{name}"


def labels_phrase(descriptions: list[str]) -> str:
    """ "a, b or c": the label descriptions as the prompt's {labels}."""
    if len(descriptions) == 1:
        return descriptions[0]
    return ", ".join(descriptions[:-1]) + " or " + descriptions[-1]


class ZeroShotEngine(InferenceEngine):
    """The scoring engine's interface (encode, run, the window settings) over a masked LM."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        spec: ZeroShotClassifier,
        *,
        max_len: int | None = None,
        device: str = "auto",
        bf16: bool = False,
    ) -> None:
        window = min(max_len, spec.max_len) if max_len else spec.max_len
        super().__init__(
            model, tokenizer, CLASSIFICATION, max_len=window, device=device, bf16=bf16,
            windows=True, window_overlap=spec.window_overlap,
        )  # fmt: skip
        self.spec = spec
        self.lm = MaskedLM(self.model, tokenizer, device)
        self.labels = list(spec.labels)
        self.verbalizers = self._verbalizers()
        before, after = self._prompt_text()
        self.prompt_before = self.lm.ids(before) if before.strip() else []
        self.prompt_after = self.lm.ids(after)
        self.prompt = [*self.prompt_before, tokenizer.mask_token_id, *self.prompt_after]
        if self.max_len - 2 - len(self.prompt) < 8:
            raise InputError(f"the prompt is {len(self.prompt)} tokens: no room for a document")
        self._empty: torch.Tensor | None = None

    @classmethod
    def from_spec(
        cls, checkpoint: Path, spec: ZeroShotClassifier, **settings: Any
    ) -> ZeroShotEngine:
        from transformers import AutoTokenizer

        from longdoc.components.modeling.model import LongformerForMaskedLM, quiet_loading

        check_masked_lm(checkpoint)
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        with quiet_loading():
            model = LongformerForMaskedLM.from_pretrained(checkpoint)
        return cls(model, tokenizer, spec, **settings)

    def reconfigured(
        self, *, max_len: int | None = None, device: str = "auto", bf16: bool = False
    ) -> ZeroShotEngine:
        return ZeroShotEngine(
            self.model, self.tokenizer, self.spec, max_len=max_len, device=device, bf16=bf16
        )

    def _prompt_text(self) -> tuple[str, str]:
        """The prompt around the mask, as running text after the document (a leading space)."""
        phrase = labels_phrase([label.description for label in self.spec.labels.values()])
        text = " " + self.spec.template.replace("{labels}", phrase).strip()
        before, after = text.split("{mask}")
        return before.rstrip(), after  # the space before the mask belongs to the word

    def _verbalizers(self) -> list[list[int]]:
        """Per label, the token ids of its words; a word that is several tokens is left out
        (logged), and a label left with none is refused."""
        out = []
        for name, label in self.spec.labels.items():
            ids = []
            for word in label.words:
                tokens = self.lm.ids(" " + word.strip())
                if len(tokens) == 1:
                    ids.append(tokens[0])
                else:
                    log.warning(
                        "zero-shot label %s: %r is %d tokens; left out", name, word, len(tokens)
                    )
            if not ids:
                raise InputError(
                    f"zero-shot label {name!r}: none of {label.words} is a single token of this "
                    "model's vocabulary"
                )
            out.append(ids)
        return out

    # ---------------------------------------------------------------- the engine's interface

    def encode(
        self, texts: list[str], questions: list[str] | None = None, max_len: int | None = None
    ) -> list[Encoded]:
        """Each document as windows of `<s> document part + prompt </s>`, global attention on
        the prompt (mask included)."""
        limit = min(max_len, self.max_len) if max_len else self.max_len
        width = limit - 2 - len(self.prompt)
        if width < 1:
            raise InputError(f"max_len={limit} leaves no room for a document beside the prompt")
        tok = self.tokenizer
        ids = tok(list(texts), add_special_tokens=False)["input_ids"] if texts else []
        out = []
        for i, row in enumerate(ids):
            starts = window_starts(len(row), width, min(self.window_overlap, width // 2))
            windows = [self._window(list(row[s : s + width])) for s in starts]
            read = min(len(row), starts[-1] + width)
            enc = Encoded(str(i), windows, tokens=read + 2 + len(self.prompt))
            enc.truncated = read < len(row)
            out.append(enc)
        return out

    def _window(self, doc: list[int]) -> Window:
        first = 1 + len(doc)
        ids = [self.tokenizer.cls_token_id, *doc, *self.prompt, self.tokenizer.sep_token_id]
        return Window(ids=ids, global_positions=list(range(first, first + len(self.prompt))))

    def _mask_position(self, window: Window) -> int:
        return len(window.ids) - 2 - len(self.prompt_after)

    def label_scores(self, windows: list[Window], batch_tokens: int) -> torch.Tensor:
        """(windows, labels) log-probabilities of the labels at each window's mask, normalised
        over the labels."""
        rows = [ClozeRow(w.ids, self._mask_position(w), w.global_positions) for w in windows]
        lp = self.lm.mask_log_probs(rows, batch_tokens)
        scores = torch.stack([torch.logsumexp(lp[:, ids], -1) for ids in self.verbalizers], -1)
        return torch.log_softmax(scores, -1)

    def empty_scores(self) -> torch.Tensor:
        """The label scores after an empty document (the calibration reference), once."""
        if self._empty is None:
            self._empty = self.label_scores([self._window([])], DEFAULT_BATCH_TOKENS)[0]
        return self._empty

    def run(
        self, docs: list[Encoded], batch_tokens: int = DEFAULT_BATCH_TOKENS
    ) -> list[dict[str, Any]]:
        windows = [w for doc in docs for w in doc.windows]
        scores = self.label_scores(windows, batch_tokens) if windows else torch.empty(0)
        results, at = [], 0
        for doc in docs:
            doc_scores = aggregate_class_logits(scores[at : at + len(doc.windows)])
            at += len(doc.windows)
            if self.spec.calibrate:
                doc_scores = doc_scores - self.empty_scores()
            probs = torch.softmax(doc_scores.double(), -1).tolist()
            best = max(range(len(probs)), key=probs.__getitem__)
            results.append({"label": self.labels[best], "probabilities": probs})
        return results


class ZeroShotModel(LongdocModel):
    """The pyfunc model: a fine-tuned classifier's `predict` (checks, params, output columns)
    over a `ZeroShotEngine`."""

    def load_context(self, context) -> None:
        spec_path = Path(context.artifacts["zeroshot"])
        spec = ZeroShotClassifier.model_validate_json(spec_path.read_text(encoding="utf-8"))
        self.engine = ZeroShotEngine.from_spec(Path(context.artifacts["checkpoint"]), spec)


def _fingerprint(checkpoint: Path, spec: ZeroShotClassifier) -> str:
    body = json.dumps(spec.model_dump(mode="json", exclude={"model"}), sort_keys=True)
    return hashlib.sha256(f"{sha256_tree(checkpoint)}:{body}".encode()).hexdigest()


def _existing_version(name: str, fingerprint: str) -> str | None:
    client = mlflow.MlflowClient()
    for v in client.search_model_versions(f"name='{name}'"):
        if v.tags.get(FINGERPRINT_TAG) == fingerprint:
            return str(v.version)
    return None


def register_zero_shot(name: str, spec: ZeroShotClassifier, tracking_params: TrackingParams) -> str:
    """`models:/longdoc-zeroshot-<name>/<version>`: the registered version of this definition
    on this checkpoint, logged (in a `zeroshot-<name>` run) and registered when there is none."""
    from longdoc.components.core import tracking

    tracking.setup(tracking_params)
    checkpoint = resolve_checkpoint(spec.model)
    engine = ZeroShotEngine.from_spec(checkpoint, spec, device="cpu")  # checks the words now
    reg, fingerprint = registered_name(name), _fingerprint(checkpoint, spec)
    version = _existing_version(reg, fingerprint)
    if version is None:
        with mlflow.start_run(run_name=f"zeroshot-{name}"), tempfile.TemporaryDirectory() as tmp:
            mlflow.set_tag("stage", "zeroshot")
            mlflow.log_params({"zeroshot.name": name, "zeroshot.model": spec.model})
            mlflow.log_dict(spec.model_dump(mode="json"), "zeroshot.json")
            spec_file = Path(tmp) / "zeroshot.json"
            spec_file.write_text(spec.model_dump_json(indent=2), encoding="utf-8")
            info = log_zero_shot_model(checkpoint, spec_file, reg)
        version = str(info.registered_model_version)
        mlflow.MlflowClient().set_model_version_tag(reg, version, FINGERPRINT_TAG, fingerprint)
        log.info("zero-shot %s: registered %s version %s", name, reg, version)
    log.info("zero-shot %s: verbalizer ids %s", name, engine.verbalizers)
    return f"models:/{reg}/{version}"


def log_zero_shot_model(
    checkpoint: Path, spec_file: Path, registered: str | None
) -> mlflow.models.model.ModelInfo:
    """Log the active run's pyfunc zero-shot model (signature of a fine-tuned classifier)."""
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("mlflow_zeroshot.py")),
        artifacts={"checkpoint": str(checkpoint), "zeroshot": str(spec_file)},
        signature=model_signature(CLASSIFICATION),
        input_example=input_example(CLASSIFICATION),
        pip_requirements=serving_requirements(),
        registered_model_name=registered,
        metadata={"longdoc_kind": "zeroshot"},
    )


def score_zero_shot(
    params: ScoreParams,
    spec: ZeroShotClassifier,
    tracking_params: TrackingParams,
    *,
    ingest: IngestParams | None = None,
    runner: Any = None,
) -> dict:
    """`longdoc score --zero-shot NAME`: register the classifier (or find its version), then
    batch scoring exactly as with a fine-tuned model (on `runner`, as `score` takes it)."""
    from longdoc.components.inference.score import score

    uri = register_zero_shot(params.zero_shot or "default", spec, tracking_params)
    pinned = params.model_copy(update={"model_uri": uri})
    if runner is None:
        return score(pinned, tracking_params, ingest=ingest)
    return score(pinned, tracking_params, ingest=ingest, runner=runner)
