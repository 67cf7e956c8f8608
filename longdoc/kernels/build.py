"""``build_kernels``: compile the TVM kernel variants into a cache directory (pipeline stage
``build-kernels``). Thin re-export so ``import longdoc.kernels`` stays free of TVM."""

from __future__ import annotations

import os
from typing import Any


def build_kernels(
    out_dir: str | os.PathLike[str],
    dtypes: tuple[str, ...] = ("float32",),
    head_dims: tuple[int, ...] = (32,),
    targets: tuple[str, ...] = ("llvm",),
) -> dict[str, Any]:
    """Compile (or find cached) each dtype x head_dim x target variant into
    ``out_dir/<target-key>/`` with a ``manifest.json``; see ``kernels.tvm_backend``."""
    from . import tvm_backend

    return tvm_backend.build_kernels(out_dir, dtypes=dtypes, head_dims=head_dims, targets=targets)
