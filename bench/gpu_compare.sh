#!/usr/bin/env bash
# The GPU side-by-side run: qwen3vl-2b-8b preset (N=8192, Ds=2048, Dt=4096, V=151936, bf16),
# every implementation incl. Liger-Kernel and Cut Cross-Entropy, in under 3 minutes.
#
# The peers travel as wheels in .whl/ (bench/peer_wheels.sh, docs/benchmarks.md).
# Results go to $OUT/<machine-tag>/ (OUT defaults to bench/results). Extra args go to bench.compare.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
PRESET="${PRESET:-qwen3vl-2b-8b}"
BUDGET="${BUDGET:-170}"

source bench/peer_wheels.sh

export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python3 -m bench.compare --preset "$PRESET" --budget "$BUDGET" --out "$OUT" "$@"
