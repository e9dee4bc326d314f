"""Small helpers shared by the backends (no math lives here: dtype policy, settings)."""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import torch


def env_number(name: str, default: Optional[float], integer: bool = False) -> Optional[float]:
    """A positive number (a whole one with ``integer``) from environment variable ``name``
    (``default`` when unset or empty); anything else raises a ValueError that names the variable."""
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0) or (integer and value != int(value)):
        raise ValueError(f"{name}: expected a positive {'integer' if integer else 'number'}, got {raw!r}")
    return int(value) if integer else value


def env_choice(name: str, default: str, choices: Tuple[str, ...]) -> str:
    """One of ``choices`` from environment variable ``name`` (``default`` when unset); anything else
    raises a ValueError that names the variable."""
    value = os.environ.get(name, default)
    if value not in choices:
        raise ValueError(f"{name}: expected {' or '.join(map(repr, choices))}, got {value!r}")
    return value


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64 (the oracle/gradcheck path), else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def visual_advantage(lp_full: torch.Tensor, lp_degraded: torch.Tensor) -> torch.Tensor:
    """max(log p(y | image) - log p(y | pixelated image), 0), the paper's per-token VA."""
    return (lp_full - lp_degraded).clamp_min(0.0)


def visual_advantage_from(teacher_logprobs, th, tw, targets, th_degraded, vocab_size):
    """VA through a backend's own ``teacher_logprobs`` (None without a degraded view), for
    backends whose ``weighted_kl`` scores the teacher views before the student pass."""
    if th_degraded is None:
        return None
    return visual_advantage(*teacher_logprobs(th, tw, targets, th_degraded, vocab_size=vocab_size))
