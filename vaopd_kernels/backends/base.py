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

# (d hidden [N, Ds], d head [V or V_head, Ds], d bias [V or V_head] or None without a bias)
Grads = Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]


@dataclass(frozen=True)
class LogitTransform:
    """What a head does to its raw logits r = W h before the temperature (``lm_head.LMHead``):
    z = c tanh(s (r + b) / c), or s (r + b) without a soft-cap c. The default is the identity."""

    bias: Optional[torch.Tensor] = None  # [V_head]
    scale: float = 1.0
    softcap: Optional[float] = None

    @property
    def is_identity(self) -> bool:
        return self.bias is None and self.scale == 1.0 and self.softcap is None

    def apply(self, raw: torch.Tensor, cols: slice = slice(None)) -> torch.Tensor:
        """z for raw logits of vocabulary columns ``cols`` (a new tensor unless the identity)."""
        if self.bias is not None:
            raw = raw + self.bias[cols].to(raw.dtype)
        if self.scale != 1.0:
            raw = raw * self.scale
        if self.softcap is not None:
            raw = torch.tanh(raw / self.softcap) * self.softcap
        return raw

    def chain_(self, grad: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``grad`` = dL/dz turned into dL/dr in place, with dz/dr = s (1 - (z / c)^2) read from z."""
        if self.softcap is not None:
            grad.mul_(1.0 - (z / self.softcap).square())
        return grad.mul_(self.scale) if self.scale != 1.0 else grad


IDENTITY = LogitTransform()


class Divergence(enum.IntEnum):
    """The per-token divergence; its values are the kernels' codes (triton/_codes.py, csrc's enum)."""

    REVERSE = 0  # KL(p_s || p_t), the paper's
    FORWARD = 1  # KL(p_t || p_s)
    JSD = 2      # generalized Jensen-Shannon (TRL's convention), 0 < beta < 1


@dataclass
class Views:
    """The logit views a scan reads, all packed [N, ...] on one device."""

    vocab_size: int
    student: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # (hidden, head weight)
    teacher: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    # each head's logit transform (the degraded view reads the teacher's head); the student's bias
    # is the only one that gets a gradient
    student_transform: LogitTransform = IDENTITY
    teacher_transform: LogitTransform = IDENTITY
    degraded: Optional[torch.Tensor] = None  # the teacher's hidden states on the degraded image
    targets: Optional[torch.Tensor] = None
    temperature: float = 1.0
    # also KL(p_teacher || p_degraded) per row (RowStats.visual_divergence), from the sums the scan
    # keeps for both teacher views anyway; asked for with a degraded view and no divergence or REVERSE
    visual_divergence: bool = False
    student_entropy: bool = False  # the student's entropy also without targets (linear_kl's return_entropy)

    @property
    def floats(self):
        biases = [t.bias for t in (self.student_transform, self.teacher_transform) if t.bias is not None]
        return [t for pair in (self.student, self.teacher) if pair for t in pair] + \
            ([self.degraded] if self.degraded is not None else []) + biases


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
