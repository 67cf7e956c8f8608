"""MLflow "model from code" entry of a zero-shot classifier (`inference.zeroshot`): MLflow copies
this file into the logged model and runs it on load, so nothing of ours is unpickled."""

import mlflow

from longdoc.components.inference.zeroshot import ZeroShotModel

mlflow.models.set_model(ZeroShotModel())
