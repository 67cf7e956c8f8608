"""The build-kernels stage: compile the TVM attention kernels `params.yaml` asks for, and point
the runtime at that cache so training and scoring load the compiled libraries."""

from __future__ import annotations

from longdoc import kernels
from longdoc.components.config import KernelsParams, params_dict
from longdoc.components.io import write_manifest


def build(params: KernelsParams) -> dict:
    summary = kernels.build_kernels(
        params.out, dtypes=params.dtypes, head_dims=params.head_dims, targets=params.targets
    )
    write_manifest(params.out, stage="build_kernels", params=params_dict(params), kernels=summary)
    use(params)
    return summary


def use(params: KernelsParams) -> None:
    """Make the tvm backend look for compiled kernels in `params.out`."""
    kernels.configure(cache_dir=params.out)
