"""MLflow "model from code" entry of an LED summarizer (`inference.summarize`): MLflow copies
this file into the logged model and runs it on load, so nothing of ours is unpickled."""

import mlflow

from longdoc.components.inference.summarize import SummaryModel

mlflow.models.set_model(SummaryModel())
