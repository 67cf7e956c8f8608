"""Models: the long encoder (`model`, drop-in for transformers' Longformer classes, attention
through `longdoc.kernels`), the long encoder–decoder (`led`, drop-in for transformers' LED
classes, its encoder on `model`'s attention layer), task heads (`heads`), short-to-long
conversion (`convert`: RoBERTa -> Longformer, BART -> LED) and the
build-kernels stage (`kernel_cache`). May import `core`, `data` (tokenizers) and the kernels."""
