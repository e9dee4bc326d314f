"""Result containers returned by the public API (plain dataclasses, tensors + python floats)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch


@dataclass
class VAKLResult:
    """Per-token outputs of :func:`vaopd_kernels.va_kl`; every tensor is [N].

    ``kl`` (reverse KL) is differentiable w.r.t. the student's hidden states and head; the rest
    are detached statistics.
    """

    kl: torch.Tensor
    visual_advantage: Optional[torch.Tensor]
    student_logprob: torch.Tensor
    teacher_logprob: torch.Tensor
    student_entropy: torch.Tensor


@dataclass
class WeightedKLResult:
    """What :func:`vaopd_kernels.weighted_kl` returns.

    ``loss == (token_weight * kl).sum()``, differentiable w.r.t. the student's hidden states and
    head; the rest are detached [N] statistics: the per-token reverse KL and, when ``targets``
    were given (else None), the student's log-prob of them and its entropy.
    """

    loss: torch.Tensor
    kl: torch.Tensor
    student_logprob: Optional[torch.Tensor] = None
    student_entropy: Optional[torch.Tensor] = None


@dataclass
class Coefficients:
    """An objective's detached per-token coefficients: its loss is ``sum(token_weight * KL)``.

    ``token_weight`` [N] and ``rollout_weight`` [R] float64, the precision the objective's loss and
    metrics are formed in (:func:`vaopd_kernels.objective_from_coefficients`); ``high_mask`` [N] marks
    each rollout's top-VA group (all False for OPD); ``visual_advantage`` [N] float64 is the VA they
    came from (None for OPD), for the metrics.
    """

    token_weight: torch.Tensor
    rollout_weight: torch.Tensor
    high_mask: torch.Tensor
    visual_advantage: Optional[torch.Tensor]


@dataclass
class ObjectiveResult:
    """The reduction of per-token KL to the (VA-)OPD loss.

    ``loss == (token_weight * token_kl).sum()``; ``token_weight`` and ``rollout_weight`` are
    detached; ``high_mask`` marks each rollout's top-VA group (all False for OPD).
    """

    loss: torch.Tensor
    token_weight: torch.Tensor
    rollout_weight: torch.Tensor
    high_mask: torch.Tensor
    metrics: Dict[str, float] = field(default_factory=dict)


@dataclass
class VAOPDLossResult:
    """Everything :func:`vaopd_kernels.va_opd_loss` computed: the loss and its ingredients."""

    loss: torch.Tensor
    kl: torch.Tensor
    visual_advantage: Optional[torch.Tensor]
    token_weight: torch.Tensor
    rollout_weight: torch.Tensor
    high_mask: torch.Tensor
    student_logprob: torch.Tensor
    teacher_logprob: torch.Tensor
    student_entropy: torch.Tensor
    metrics: Dict[str, float] = field(default_factory=dict)
