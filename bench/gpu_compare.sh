#!/usr/bin/env bash
# The GPU side-by-side run: qwen3vl-2b-8b preset (N=8192, Ds=2048, Dt=4096, V=151936, bf16),
# every implementation incl. Liger-Kernel and Cut Cross-Entropy, in under 3 minutes.
#
# The GPU machine has no network: the peers travel as wheels in .whl/ (see docs/benchmarks.md):
#   python3 -m pip download --no-deps -d .whl liger-kernel==0.8.5 cut-cross-entropy==25.1.1
# Results go to $OUT/<machine-tag>/ (OUT defaults to bench/results). Extra args go to bench.compare.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
PRESET="${PRESET:-qwen3vl-2b-8b}"
BUDGET="${BUDGET:-170}"

if ls .whl/*.whl >/dev/null 2>&1; then
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
       --target /tmp/site .whl/*.whl; then
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_compare: peer wheels failed to install; their rows will say 'not installed'" >&2
  fi
else
  echo "gpu_compare: no .whl/ folder; liger/cce rows will say 'not installed'" >&2
fi

export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python3 -m bench.compare --preset "$PRESET" --budget "$BUDGET" --out "$OUT" "$@"
