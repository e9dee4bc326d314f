#!/usr/bin/env bash
# Every device check in one call (at most 8 minutes on an H200/H100: the stages' time limits sum to
# 475 s), logs streamed to $OUT as it goes. The peers are installed first (bench/peer_wheels.sh),
# so the triton check times Liger-Kernel's KL-only loss in its own process too:
#   1. triton backend: headline timing, also with VAOPD_TRITON_FUSED_VIEWS=1 and with cuBLAS
#      backward matmuls, the peers' KL-only case, a phase breakdown, then gradient filtering on
#      random, peaked, near-certain and mixed rows (time and gradient error against the default),
#      large-shape correctness, then the GPU test subset (bench/gpu_check.sh)
#   2. cuda backend: JIT build, kernel checks, contract matrix, objective kernels vs the torch
#      objective, large correctness, timing (also VAOPD_CUDA_HEAD_GRAD=native)
#   3. the trainer's demo on the GPU (bf16, 4 steps)
#   4. side-by-side runner, headline preset, every peer (Liger/CCE from .whl/ when carried)
# Run as: run(command="bash bench/gpu_all.sh", carry=[".whl"], timeout_s=600); then unpack results.tgz
# and the logs under bench/results/ with the card, versions and date.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
source bench/peer_wheels.sh
PYTEST_SECONDS="${PYTEST_SECONDS:-60}" timeout "${TRITON_SECONDS:-240}" bash bench/gpu_check.sh > "$OUT/triton_check.log" 2>&1
echo "triton check exit $?"; tail -n 75 "$OUT/triton_check.log"
timeout "${CUDA_SECONDS:-130}" python3 bench/gpu_check_cuda.py > "$OUT/cuda_check.log" 2>&1
echo "cuda check exit $?"; tail -n 25 "$OUT/cuda_check.log"
# The trainer's GPU path (never run on a GPU before): the demo config, bf16, 4 steps, triton loss.
timeout "${TRAINER_SECONDS:-45}" python3 -m vaopd_trainer --config configs/demo.yaml --max_steps 4 --save_steps 0 \
  --bf16 true --output_dir /tmp/vaopd-trainer-gpu > "$OUT/trainer_gpu.log" 2>&1
echo "trainer exit $?"; tail -n 12 "$OUT/trainer_gpu.log"
cp /tmp/vaopd-trainer-gpu/metrics.jsonl "$OUT/trainer_gpu_metrics.jsonl" 2>/dev/null || true
BUDGET="${COMPARE_SECONDS:-45}" timeout "$(( ${COMPARE_SECONDS:-45} + 15 ))" bash bench/gpu_compare.sh \
  > "$OUT/compare.log" 2>&1
echo "compare exit $?"; tail -n 40 "$OUT/compare.log"
# The device returns at most 8 files: pack everything but the logs into one archive.
(cd "$OUT" && find . -type f ! -name '*.log' ! -name results.tgz | tar czf results.tgz --remove-files -T - ) \
  && echo "packed $OUT/results.tgz"
