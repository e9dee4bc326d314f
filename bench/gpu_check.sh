#!/usr/bin/env bash
# GPU check for the triton backend: GPU test subset, then large-shape correctness + headline timings.
# Usage: bash bench/gpu_check.sh   (OUT=<dir> to choose where gpu_check.json goes)
set -u
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
# Headline numbers first (gpu_check.json is saved after every case), then the small-shape test
# matrix on the GPU (first config only: no autotuning per test shape; each test shape compiles its
# own kernels, so it is capped; SIGINT still prints pytest's summary).
python bench/gpu_check.py "$@"
VAOPD_TRITON_AUTOTUNE=0 timeout -s INT "${PYTEST_SECONDS:-90}" python -m pytest -q -x tests/test_triton_backend.py \
  tests/test_objective_native.py 2>&1 | tail -15
