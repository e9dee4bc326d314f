"""vaopd_kernels: memory-frugal VA-OPD / OPD losses computed straight from hidden states.

See README.md for the API table and docs/ for the math and the backends.
"""
from vaopd_kernels.api import (
    VAOPDLoss,
    linear_kl,
    linear_logprob,
    objective_from_coefficients,
    opd_coefficients,
    opd_objective,
    va_kl,
    va_opd_coefficients,
    va_opd_loss,
    va_opd_objective,
    visual_advantage,
    weighted_kl,
)
from vaopd_kernels.backends import available_backends
from vaopd_kernels.lm_head import LMHead
from vaopd_kernels.options import KernelOptions
from vaopd_kernels.results import Coefficients, ObjectiveResult, VAKLResult, VAOPDLossResult, WeightedKLResult

__all__ = [
    "linear_kl",
    "linear_logprob",
    "visual_advantage",
    "va_kl",
    "va_opd_coefficients",
    "opd_coefficients",
    "va_opd_objective",
    "opd_objective",
    "objective_from_coefficients",
    "va_opd_loss",
    "weighted_kl",
    "VAOPDLoss",
    "LMHead",
    "available_backends",
    "KernelOptions",
    "Coefficients",
    "VAKLResult",
    "ObjectiveResult",
    "VAOPDLossResult",
    "WeightedKLResult",
]
__version__ = "0.1.0"
