"""What a backend is: two primitives over validated, packed inputs.

- ``scan(views, *, divergence, beta, row_weight, options) -> RowStats``: one sweep over the
  vocabulary for every view present, yielding the per-row statistics (the divergence between the
  student and teacher views, the target log-probs of each view, the student's entropy) and, when
  ``row_weight`` is given, the gradients of ``sum(row_weight * q)`` (q = the divergence, or the
  student's target log-prob when there is no teacher) w.r.t. the student's hidden states and head.
- ``gradients(saved, row_weight, *, options) -> Grads``: those gradients again for other row
  weights, from what a scan saved (the backward pass of a per-token output).

A backend module also has ``FUSES_VIEWS`` (its VA-OPD loss scores all views in one scan) and,
optionally, ``unavailable_reason() -> str | None`` and ``supports_device(device)`` (without them it
runs anywhere) and ``va_opd_coefficients(...)`` (its own objective coefficients). Everything above
the primitives (the public ops, autograd, VA, coefficients, reductions) lives in ``vaopd_kernels.ops``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Tuple

import torch

from vaopd_kernels.options import KernelOptions

Grads = Tuple[torch.Tensor, torch.Tensor]  # (d hidden [N, Ds], d head [V or V_head, Ds])


class Divergence(enum.IntEnum):
    """The per-token divergence; its values are the kernels' codes (triton/_codes.py, csrc's enum)."""

    REVERSE = 0  # KL(p_s || p_t), the paper's
    FORWARD = 1  # KL(p_t || p_s)
    JSD = 2      # generalized Jensen-Shannon (TRL's convention), 0 < beta < 1


@dataclass
class Views:
    """The logit views a scan reads, all packed [N, ...] on one device."""

    vocab_size: int
    student: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # (hidden, head)
    teacher: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    degraded: Optional[torch.Tensor] = None  # the teacher's hidden states on the degraded image
    targets: Optional[torch.Tensor] = None
    temperature: float = 1.0
    # also KL(p_teacher || p_degraded) per row (RowStats.visual_divergence), from the sums the scan
    # keeps for both teacher views anyway; asked for with a degraded view and no divergence or REVERSE
    visual_divergence: bool = False

    @property
    def floats(self):
        return [t for pair in (self.student, self.teacher) if pair for t in pair] + \
            ([self.degraded] if self.degraded is not None else [])


@dataclass
class RowStats:
    """A scan's [N] results (None where not asked for), in the backend's compute dtype."""

    kl: Optional[torch.Tensor] = None  # the divergence asked for
    student_logprob: Optional[torch.Tensor] = None
    teacher_logprob: Optional[torch.Tensor] = None
    degraded_logprob: Optional[torch.Tensor] = None
    student_entropy: Optional[torch.Tensor] = None
    visual_divergence: Optional[torch.Tensor] = None  # KL(p_teacher || p_degraded), when asked for
    grads: Optional[Grads] = None  # when the scan was given row weights
    saved: Any = None  # what ``gradients`` needs (backend-specific)


class Backend(Protocol):
    FUSES_VIEWS: bool

    def scan(self, views: Views, *, divergence: Optional[Divergence], beta: float,
             row_weight: Optional[torch.Tensor], options: KernelOptions) -> RowStats: ...

    def gradients(self, saved: Any, row_weight: torch.Tensor, *, options: KernelOptions) -> Grads: ...


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64 (the oracle/gradcheck path), else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
