"""The MLflow model: a fine-tuned long classifier packaged as an `mlflow.pyfunc` model.

Why pyfunc: `models:/longdoc-<task>@champion` then loads with one call anywhere MLflow runs, and
the input/output contract (a `text` column in, `label` + `probabilities` out) does not depend on
how the checkpoint is stored.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array

# Packages the served model needs; listed explicitly so MLflow does not import and run the model
# to infer them.
SERVING_REQUIREMENTS = ["torch", "transformers", "tokenizers", "safetensors", "pandas", "mlflow"]


def predict_texts(model, tokenizer, texts: list[str], max_len: int, batch_size: int = 8):
    """Class probabilities for `texts`, truncated to `max_len` tokens, batched by length."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    probs: list[list[float] | None] = [None] * len(texts)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx],
                truncation=True,
                max_length=max_len,
                padding=True,
                return_tensors="pt",
            )
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            for i, p in zip(idx, torch.softmax(logits.float(), -1).tolist(), strict=True):
                probs[i] = p
    return probs


class LongdocClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around an HF-format checkpoint directory (model + tokenizer)."""

    def load_context(self, context) -> None:
        from transformers import AutoTokenizer

        from components.model import LongformerForSequenceClassification
        from components.training import quiet_loading

        ckpt = Path(context.artifacts["checkpoint"])
        self.tokenizer = AutoTokenizer.from_pretrained(ckpt)
        with quiet_loading():
            self.model = LongformerForSequenceClassification.from_pretrained(ckpt)
        self.max_len = int(self.model.config.max_position_embeddings - 2)
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = model_input["text"].astype(str).tolist()
        max_len = int((params or {}).get("max_len", self.max_len))
        probs = predict_texts(self.model, self.tokenizer, texts, min(max_len, self.max_len))
        labels = [self.labels[max(range(len(p)), key=p.__getitem__)] for p in probs]
        return pd.DataFrame({"label": labels, "probabilities": probs})


def log_classifier(checkpoint: Path, registered_name: str | None) -> mlflow.models.model.ModelInfo:
    """Log `checkpoint` as the active run's pyfunc model, registering it when a name is given."""
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "text")]),
        outputs=Schema([ColSpec("string", "label"), ColSpec(Array("double"), "probabilities")]),
        params=ParamSchema([ParamSpec("max_len", "long", 4096)]),
    )
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("mlflow_model.py")),
        artifacts={"checkpoint": str(checkpoint)},
        signature=signature,
        pip_requirements=SERVING_REQUIREMENTS,
        registered_model_name=registered_name,
    )
