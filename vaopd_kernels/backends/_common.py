"""Small helpers shared by the backends (no math lives here: dtype policy, VA)."""
from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64 (the oracle/gradcheck path), else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def visual_advantage(lp_full: torch.Tensor, lp_degraded: torch.Tensor) -> torch.Tensor:
    """max(log p(y | image) - log p(y | pixelated image), 0), the paper's per-token VA."""
    return (lp_full - lp_degraded).clamp_min(0.0)


def visual_advantage_from(teacher_logprobs, th, tw, targets, th_degraded, vocab_size, options):
    """VA through a backend's own ``teacher_logprobs`` (None without a degraded view), for
    backends whose ``weighted_kl`` scores the teacher views before the student pass."""
    if th_degraded is None:
        return None
    return visual_advantage(*teacher_logprobs(th, tw, targets, th_degraded, vocab_size=vocab_size, options=options))
