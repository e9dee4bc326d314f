"""KernelOptions: the backends' tuning knobs and approximate modes, passed as ``options=``.

Every field has a default that gives the exact result; a backend reads the fields that concern it
and ignores the others. Nothing here is read from the environment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


def check_count(name: str, value, optional: bool = True) -> Optional[int]:
    """``value``, checked to be an int >= 1 (or None when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int{' or None' if optional else ''}, got {value!r}")
    return value


def _one_of(name: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


@dataclass(frozen=True)
class KernelOptions:
    """How a backend computes, never what: with the defaults every backend is exact. The fields
    (README's table): working-memory caps (``chunk_budget_bytes`` torch/cuda, ``vocab_tile`` torch,
    ``triton_workspace_bytes``), and variants not yet timed on a GPU (``fused_views``,
    ``backward_gemm="cublas"`` triton, ``head_grad="native"`` cuda) including one APPROXIMATE
    mode, ``gradient_filter_eps`` (triton: skip blocks of d loss / d logits below eps x the row's
    largest probability)."""

    chunk_budget_bytes: Optional[int] = None
    vocab_tile: Optional[int] = None
    triton_workspace_bytes: int = 32 << 20
    fused_views: bool = False
    backward_gemm: str = "triton"
    head_grad: str = "fp32"
    gradient_filter_eps: Optional[float] = None

    def __post_init__(self):
        check_count("chunk_budget_bytes", self.chunk_budget_bytes)
        check_count("vocab_tile", self.vocab_tile)
        check_count("triton_workspace_bytes", self.triton_workspace_bytes, optional=False)
        if not isinstance(self.fused_views, bool):
            raise ValueError(f"fused_views: expected True or False, got {self.fused_views!r}")
        _one_of("backward_gemm", self.backward_gemm, ("triton", "cublas"))
        _one_of("head_grad", self.head_grad, ("fp32", "native"))
        eps = self.gradient_filter_eps
        if eps is not None:
            if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
                raise ValueError(f"gradient_filter_eps: expected a finite number >= 0 or None, got {eps!r}")
            if self.backward_gemm != "triton":
                raise ValueError("gradient_filter_eps: the filter needs backward_gemm='triton' "
                                 f"(cuBLAS cannot skip blocks), got backward_gemm={self.backward_gemm!r}")


def resolve_options(options) -> KernelOptions:
    """``options`` checked (None: the defaults)."""
    if options is None:
        return KernelOptions()
    if not isinstance(options, KernelOptions):
        raise TypeError(f"options: expected vaopd_kernels.KernelOptions or None, got {type(options).__name__}")
    return options
