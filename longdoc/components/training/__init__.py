"""Training: continued pretraining (`pretrain`), fine-tuning next to a truncated baseline
(`finetune`), overlapping windows over long inputs (`windows`), what each kind of task feeds
the model and reads back (`adapters`) and pieces both loops share (`common`). May import
`core`, `data`, `modeling`, `tasks` and `inference.serving` (to log a servable model)."""
