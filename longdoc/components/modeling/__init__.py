"""Models: the long encoder (`model`, drop-in for transformers' Longformer classes, attention
through `longdoc.kernels`), task heads (`heads`), short-to-long conversion (`convert`) and the
build-kernels stage (`kernel_cache`). May import `core`, `data` (tokenizers) and the kernels."""
