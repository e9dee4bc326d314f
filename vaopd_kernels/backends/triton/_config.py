"""Switches shared by the Triton kernels (from ``vaopd_kernels.environment``, once, at import, as
Triton reads TRITON_INTERPRET).

- ``INTERPRET``: Triton's CPU interpreter is active (``TRITON_INTERPRET=1`` before import). Its
  ``tl.dot`` is wrong on bf16 operands and row-position dependent, so ``_tiles.dot`` replaces it
  there by an in-order fp32 sum, and one small fixed tile configuration replaces autotuning.
- ``POISON``: fill every kernel output with NaN before launch so unwritten memory shows up in
  tests (``VAOPD_TRITON_POISON=1`` or set the attribute).
- ``FORCE_SPLITS``: vocabulary splits per token tile for the forward statistics (None = heuristic);
  tests force > 1 to exercise the logaddexp merge on small shapes.
- ``AUTOTUNE``: ``VAOPD_TRITON_AUTOTUNE=0`` keeps only the first (default) configuration.
- ``FLAG_BLOCK``: granularity of the gradient filter's block map (``KernelOptions.gradient_filter_eps``);
  divides every tile size of the kernels (the interpreter's are small).

The numerical options (workspace, fused views, backward matmuls, gradient filter) are
``KernelOptions`` fields, passed with each call.
"""
from __future__ import annotations

import torch
import triton

from vaopd_kernels import environment

INTERPRET: bool = environment.triton_interpret()
POISON: bool = environment.triton_poison()
FORCE_SPLITS = None
AUTOTUNE: bool = environment.triton_autotune()
FLAG_BLOCK: int = 16 if INTERPRET else 64


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
