"""Attention compute for longdoc: patterns, a dense oracle, a banded PyTorch path and TVM kernels.

``import longdoc.kernels`` is cheap: TVM is imported only when a ``tvm`` kernel is built or run.
"""

from .api import attention, available_backends, fused_dense_pays, select_backend
from .build import build_kernels
from .patterns import BlockLocal, Dense, Fixed, Pattern, SlidingWindow, Strided
from .settings import configure

__all__ = [
    "attention",
    "available_backends",
    "build_kernels",
    "configure",
    "fused_dense_pays",
    "select_backend",
    "Pattern",
    "SlidingWindow",
    "BlockLocal",
    "Strided",
    "Fixed",
    "Dense",
]
