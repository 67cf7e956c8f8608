"""Inference: the MLflow pyfunc model and its engine (`serving`, `mlflow_model`), the LED
summarizer's (`summarize`, `mlflow_summarizer`), batch scoring of archives (`score`), scoring
prediction files with the official metrics (`evaluate`), LAMA-style knowledge probing (`probe`,
reading `lama` files) and zero-shot classification (`zeroshot`), both through masked-LM cloze
queries (`cloze`).
May import `core`, `data`, `modeling`, `tasks` and `training`'s windows and adapters (so a
served model reads documents exactly as fine-tuning evaluated them)."""
