"""Small helpers shared by the backends (no math lives here, only dtype policy)."""
from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64 (the oracle/gradcheck path), else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
