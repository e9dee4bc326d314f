"""LMHead: an LM head as the kernels read it, the projection plus what a model does to its logits.

logits = c * tanh(s * (W h + b) / c) / T, with b the head's bias (none: 0), s ``logit_scale``,
c ``final_logit_softcapping`` (none: no tanh) and T the call's temperature. That is what
transformers computes for Gemma 2/3/3n, PaliGemma (soft-cap), Cohere (scale), Falcon-H1, Granite,
MiniCPM3 (multipliers) and heads with a bias, and what TRL's chunked divergence takes per side.
A plain tensor passed where a head is accepted is ``LMHead(weight)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from vaopd_kernels.backends.base import LogitTransform


@dataclass(frozen=True)
class LMHead:
    """``weight`` [V_head, D]; ``bias`` [V_head] or None (the student's gets its gradient);
    ``logit_scale`` a finite number; ``final_logit_softcapping`` None or > 0."""

    weight: torch.Tensor
    bias: Optional[torch.Tensor] = None
    logit_scale: float = 1.0
    final_logit_softcapping: Optional[float] = None

    @property
    def transform(self) -> LogitTransform:
        return LogitTransform(self.bias, float(self.logit_scale),
                              None if self.final_logit_softcapping is None else float(self.final_logit_softcapping))

    def detach(self) -> "LMHead":
        """The same head with its tensors detached (a teacher's)."""
        return LMHead(self.weight.detach(), None if self.bias is None else self.bias.detach(), self.logit_scale,
                      self.final_logit_softcapping)

    @classmethod
    def from_model(cls, model) -> "LMHead":
        """``model``'s output projection with its bias, and the logit scale and soft-cap of its text
        config (``logit_scale``, ``output_multiplier``, ``lm_head_multiplier``, ``logits_scaling``,
        ``final_logit_softcapping``). Raises ValueError for a model without output embeddings."""
        head = model.get_output_embeddings()
        if head is None or getattr(head, "weight", None) is None:
            raise ValueError(f"model: {type(model).__name__} has no output embeddings (LM head)")
        config = model.config.get_text_config()
        return cls(head.weight, getattr(head, "bias", None), logit_scale_of(config),
                   getattr(config, "final_logit_softcapping", None))


def as_lm_head(value) -> LMHead:
    """``value`` if it is an LMHead, else the plain head of a weight tensor (no checks)."""
    return value if isinstance(value, LMHead) else LMHead(value)


def logit_scale_of(config) -> float:
    """The multiplier a transformers text config applies to the logits before any soft-cap.

    Cohere calls it ``logit_scale``, Muse Glimmer ``output_multiplier``, Falcon-H1
    ``lm_head_multiplier``; Granite and MiniCPM3 divide by ``logits_scaling``, which HyperCLOVA X
    multiplies by. None (e.g. MPT's ``logit_scale``) means unscaled."""
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        value = getattr(config, name, None)
        if value is not None:
            return float(value)
    scaling = getattr(config, "logits_scaling", None)
    if scaling is not None:
        return float(scaling) if getattr(config, "model_type", None) == "hyperclovax" else 1.0 / float(scaling)
    return 1.0
