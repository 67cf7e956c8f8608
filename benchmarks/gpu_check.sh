#!/usr/bin/env bash
# The tvm backend's CUDA kernels on this machine's GPU (issue 18): build for its architecture,
# check forward and gradients against the float64 reference, then time them against
# FlexAttention and dense SDPA at 4k / 16k / 64k tokens. Details: benchmarks/gpu_check.py.
# Exit codes: 0 done, 1 a result off the reference, 2 no GPU, 3 TVM's CUDA runtime did not load.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" benchmarks/gpu_check.py "$@"
