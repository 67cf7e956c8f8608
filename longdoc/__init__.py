"""longdoc: a reproducible pipeline for long-document transformers.

Three layers, imports pointing down only:

- `longdoc.flows`: Prefect flows and the `longdoc` command line (orchestration only);
- `longdoc.components`: the domain library (data, models, training, tasks, inference);
- `longdoc.kernels`: attention compute (patterns, references, PyTorch and TVM kernels).

They live under one name because `kernels`, `components` and `flows` are generic top-level names
that other distributions install (transformers >= 5.25 requires Hugging Face's `kernels`).
Importing `longdoc` itself is free: nothing below is imported until asked for.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("longdoc")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
