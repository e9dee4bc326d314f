"""Backend registry.

A backend is a module that implements the *backend contract* on already validated inputs
(see ``docs/backends.md``). ``api.py`` is the only caller; backends never validate user input
again and never import each other.

The contract (all row tensors packed [N, ...]; ``vocab_size`` is a resolved int; gradients
reach ``student_hidden``/``student_weight`` only; outputs are float32, or float64 for float64
inputs; every function also takes ``options``, a checked ``KernelOptions``, by keyword):

- ``linear_kl(sh, sw, th, tw, *, divergence, beta, temperature, vocab_size) -> [N]``
  differentiable per-token divergence ("reverse" | "forward" | "jsd").
- ``linear_logprob(h, w, targets, *, temperature, vocab_size) -> [N]`` differentiable.
- ``teacher_logprobs(th, tw, targets, th_degraded, *, vocab_size) -> (lp, lp_degraded | None)``
  no grad, T = 1; one call so a fused backend reads each weight tile once for both views.
- ``va_kl(sh, sw, th, tw, targets, th_degraded, *, vocab_size) -> VAKLResult`` reverse KL
  (differentiable) + all per-token statistics, T = 1.
- ``weighted_kl(sh, sw, th, tw, targets, th_degraded, token_weights, *, vocab_size)
  -> (loss, VAKLResult)``: loss = sum(token_weight * KL) where ``token_weight =
  token_weights(visual_advantage or None)`` is asked for as soon as VA is known, so a backend
  can form the gradients during the forward call and have nothing to recompute in backward.
  Only ``loss`` carries gradients; the result's tensors are detached.
- optional ``va_opd_weights(visual_advantage, cu_seqlens, prompt_ids, *, high_fraction, high_weight,
  temperature, eps, num_prompts) -> objective.TokenWeights``: the backend's own VA-OPD
  coefficients (the cuda backend's kernels); without it ``objective.va_opd_weights`` is used.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict, List

import torch

# name -> module path; order is the preference order of "auto" on CUDA.
_BACKEND_MODULES: Dict[str, str] = {
    "reference": "vaopd_kernels.backends.reference",
    "torch": "vaopd_kernels.backends.torch_chunked",
    "triton": "vaopd_kernels.backends.triton",
    "cuda": "vaopd_kernels.backends.cuda",
}


def _load(name: str) -> ModuleType:
    return importlib.import_module(_BACKEND_MODULES[name])


def backend_unavailable_reason(name: str) -> str | None:
    """None when backend ``name`` can run here, else a human-readable reason."""
    try:
        module = _load(name)
    except ImportError as exc:  # optional dependency missing (triton, compiled extension)
        return f"import failed: {exc}"
    reason = getattr(module, "unavailable_reason", None)
    return reason() if callable(reason) else None


def available_backends() -> List[str]:
    """Names of the backends that can run on this machine."""
    return [name for name in _BACKEND_MODULES if backend_unavailable_reason(name) is None]


def resolve_backend(name: str, device: torch.device) -> ModuleType:
    """The backend module for ``name`` ("auto" picks the fastest that runs on ``device``)."""
    if name == "auto":
        if device.type == "cuda" and backend_unavailable_reason("triton") is None:
            name = "triton"
        else:
            name = "torch"
    if name not in _BACKEND_MODULES:
        raise ValueError(
            f"backend: expected one of {['auto', *_BACKEND_MODULES]}, got {name!r}"
        )
    reason = backend_unavailable_reason(name)
    if reason is not None:
        raise RuntimeError(f"backend={name!r} is not available on this machine: {reason}")
    module = _load(name)
    supports = getattr(module, "supports_device", None)
    if supports is not None and not supports(device):
        raise RuntimeError(f"backend={name!r} cannot run on device {device}")
    return module
