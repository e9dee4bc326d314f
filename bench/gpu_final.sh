#!/usr/bin/env bash
# A short device run for what the longer checks have not covered yet: the cuda backend's first
# run (JIT build, kernel checks, large bf16 correctness, headline timing), then the KL-only
# configuration against Liger-Kernel at the headline shape. Logs stream to $OUT as they go.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
timeout "${CUDA_SECONDS:-150}" python3 bench/gpu_check_cuda.py --steps op_checks,large_correctness,timing \
  > "$OUT/cuda_check.log" 2>&1
echo "cuda check exit $?"; tail -n 40 "$OUT/cuda_check.log"
VAOPD_TRITON_AUTOTUNE=0 PRESET=qwen3vl-2b-8b BUDGET="${COMPARE_SECONDS:-70}" \
  timeout "$(( ${COMPARE_SECONDS:-70} + 10 ))" bash bench/gpu_compare.sh --impls vaopd-triton,liger-triton,liger \
  --tasks kl --reps 3 > "$OUT/compare.log" 2>&1
echo "compare exit $?"; tail -n 25 "$OUT/compare.log"
