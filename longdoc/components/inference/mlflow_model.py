"""MLflow "model from code" entry: MLflow copies this file into the logged model and runs it on
load, so the model is rebuilt from code instead of unpickled (no cloudpickle of our objects)."""

import mlflow

from longdoc.components.inference.serving import LongdocModel

mlflow.models.set_model(LongdocModel())
