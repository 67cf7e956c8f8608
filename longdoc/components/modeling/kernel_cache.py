"""The build-kernels stage: compile the TVM attention kernels `params.yaml` asks for, and point
the runtime at that cache so training and scoring load the compiled libraries."""

from __future__ import annotations

from longdoc import kernels
from longdoc.components.core.config import KernelsParams, params_dict
from longdoc.components.core.io import claim_output_dir, write_manifest


def build(params: KernelsParams) -> dict:
    # The cache overwrites manifest.json and <target>/ files by name: only in a dir longdoc wrote.
    claim_output_dir(params.out, "build_kernels", force=params.force)
    summary = kernels.build_kernels(
        params.out, dtypes=params.dtypes, head_dims=params.head_dims, targets=params.targets
    )
    write_manifest(params.out, stage="build_kernels", params=params_dict(params), kernels=summary)
    use(params)
    return summary


def use(params: KernelsParams) -> None:
    """Make the tvm backend look for compiled kernels in `params.out`."""
    kernels.configure(cache_dir=params.out)
