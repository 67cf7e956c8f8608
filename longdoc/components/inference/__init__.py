"""Inference: the MLflow pyfunc model and its engine (`serving`, `mlflow_model`), batch scoring
of archives (`score`) and scoring prediction files with the official metrics (`evaluate`).
May import `core`, `data`, `modeling` and `tasks`."""
