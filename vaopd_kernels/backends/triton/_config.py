"""Switches shared by the Triton kernels (read once, at import, like TRITON_INTERPRET itself).

- ``INTERPRET``: Triton's CPU interpreter is active (``TRITON_INTERPRET=1`` before import). Its
  ``tl.dot`` is wrong on bf16 operands and row-position dependent, so ``_tiles.dot`` replaces it
  there by an in-order fp32 sum, and one small fixed tile configuration replaces autotuning.
- ``POISON``: fill every kernel output with NaN before launch so unwritten memory shows up in
  tests (``VAOPD_TRITON_POISON=1`` or set the attribute).
- ``FORCE_SPLITS``: vocabulary splits per token tile for the forward statistics (None = heuristic);
  tests force > 1 to exercise the logaddexp merge on small shapes.
- ``AUTOTUNE``: ``VAOPD_TRITON_AUTOTUNE=0`` keeps only the first (default) configuration.
- ``ALLOW_TF32``: fp32 inputs use IEEE fp32 dots by default (exact); True allows TF32.
- ``DZ_WORKSPACE_BYTES``: the backward's only [rows, vocab-chunk] buffer (default 32 MiB).
- ``FILTER_EPS``: gradient filtering (``VAOPD_TRITON_FILTER_EPS``, e.g. ``2**-12``; default None
  = off). The backward skips, in both of its matmuls, the ``FLAG_BLOCK`` x ``FLAG_BLOCK`` blocks of
  d loss / d logits whose every entry, before the row weight, is below eps x the row's largest
  student probability in magnitude (as Cut Cross-Entropy does for softmax blocks); for reverse KL
  it also skips the teacher's recompute on tiles where that provably drops nothing more
  (``kl_backward.teacher_skip_threshold``), and it visits rows grouped by confidence so that
  blocks hold rows alike. Off until a GPU run shows it faster; its error is
  measured by tests/test_triton_backend.py and bench/gpu_check.py, its reach by bench/filter_reach.py.
- ``BACKWARD_GEMM``: ``"triton"`` (default) or ``"cublas"`` (``VAOPD_TRITON_BACKWARD_GEMM``): who runs
  the backward's two matmuls (d head = dz^T h, d hidden += dz W). cuBLAS writes the same outputs
  in place (fp32 accumulation, no extra buffer); gradient filtering needs the Triton matmuls. The
  default stays until a GPU run times both.
- ``FUSED_VIEWS``: ``weighted_kl`` (``va_opd_loss``) scores student, teacher and pixelated teacher
  in one statistics pass (``VAOPD_TRITON_FUSED_VIEWS=1``) instead of the teacher views first and
  then student + teacher: 29% fewer forward GEMM FLOPs at Ds = 2048, Dt = 4096, but a kernel with
  three logit tiles live. Off until an H100/H200 run shows it faster (``bench/gpu_all.sh``).

No kernel uses atomics: every output element has one writer, so results are deterministic (with
``BACKWARD_GEMM="cublas"``, as deterministic as cuBLAS is on one GPU).
"""
from __future__ import annotations

import os

import torch
import triton

from vaopd_kernels.backends._common import env_choice, env_number

INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"
POISON: bool = os.environ.get("VAOPD_TRITON_POISON", "0") == "1"
FORCE_SPLITS = None
AUTOTUNE: bool = os.environ.get("VAOPD_TRITON_AUTOTUNE", "1") != "0"
ALLOW_TF32: bool = False
FILTER_EPS = env_number("VAOPD_TRITON_FILTER_EPS", None)
# Granularity of the filter map: divides every tile size of the kernels (the interpreter's are small).
FLAG_BLOCK: int = 16 if INTERPRET else 64
BACKWARD_GEMM: str = env_choice("VAOPD_TRITON_BACKWARD_GEMM", "triton", ("triton", "cublas"))
FUSED_VIEWS: bool = os.environ.get("VAOPD_TRITON_FUSED_VIEWS", "0") == "1"
DZ_WORKSPACE_BYTES: int = int(env_number("VAOPD_TRITON_WORKSPACE_MB", 32) * (1 << 20))


def _fast_bench(fn, quantiles=None, **_):
    # short autotuning runs: the kernels are long (tens of ms at the headline shape)
    return triton.testing.do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


def autotune(configs, interpreter_config, key, ampere_configs=(), **kwargs):
    """triton.autotune over ``configs`` on a GPU, one fixed config under the interpreter.
    ``ampere_configs``: further candidates tried only on GPUs before Hopper (sm_8x), where the
    Hopper-tuned ones can spill."""
    if INTERPRET:
        configs, ampere_configs = [interpreter_config], ()
    elif not AUTOTUNE:
        configs, ampere_configs = configs[:1], ()
    if ampere_configs:
        hopper_only = list(configs)

        def for_this_gpu(candidates, named_args, **_):
            return candidates if torch.cuda.get_device_capability()[0] < 9 else hopper_only
        kwargs["prune_configs_by"] = {"early_config_prune": for_this_gpu}
    return triton.autotune(configs=list(configs) + list(ampere_configs), key=key, do_bench=_fast_bench, **kwargs)


def cfg(num_warps, num_stages, **meta):
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)
