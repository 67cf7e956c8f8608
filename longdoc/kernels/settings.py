"""Runtime settings of the kernels package (where compiled TVM kernels are cached)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CACHE_DIR = Path("data/kernels")

_settings: dict[str, Path] = {"cache_dir": DEFAULT_CACHE_DIR}


def configure(cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Set where the ``tvm`` backend looks for (and writes) compiled kernels.

    The default is ``data/kernels`` relative to the current directory, the output of the
    pipeline's ``build-kernels`` stage.
    """
    if cache_dir is not None:
        _settings["cache_dir"] = Path(cache_dir)


def cache_dir() -> Path:
    return _settings["cache_dir"]
