"""Online softmax statistics over (row block x vocab tile) logit tiles, for the torch backend.

Each view's logits are produced one tile at a time and folded into per-row running sums, the
same one-pass scheme the fused GPU kernels use, so no [rows, V] array ever exists and the
GEMMs stay large (a few hundred rows by thousands of vocabulary entries).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch

@dataclass
class Head:
    """An LM head (its first ``vocab_size`` rows) and the hidden states that read it."""

    hidden: torch.Tensor  # [N, D]
    weight: torch.Tensor  # [V_head, D]
    dtype: torch.dtype  # compute dtype

    def logits(self, rows: slice, cols: slice, temperature: float) -> torch.Tensor:
        # Converting the weight tile here (not the whole head up front) keeps bf16 inputs from
        # costing an fp32 copy of the head.
        z = self.hidden[rows].to(self.dtype) @ self.weight[cols].to(self.dtype).T
        return z / temperature if temperature != 1.0 else z


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a * b per row, without materialising the product (a batched BLAS dot)."""
    return torch.einsum("rv,rv->r", a, b)


class OnlineSoftmax:
    """Per-row running max ``m``, ``l = sum e^(z - m)`` and extra sums rescaled with it whenever
    the max moves: ``sum e^(z - m) f`` for each weighted tile f, and optionally
    ``sum e^(other - m)`` for another view's logits (the normaliser gap, see ``gap_to``)."""

    def __init__(self, rows: int, num_extra: int, like: torch.Tensor):
        self.m = torch.full((rows,), -math.inf, dtype=like.dtype, device=like.device)
        self.l = torch.zeros(rows, dtype=like.dtype, device=like.device)
        self.extra = torch.zeros(num_extra, rows, dtype=like.dtype, device=like.device)

    def update(self, z: torch.Tensor, *weighted: torch.Tensor, other: Optional[torch.Tensor] = None) -> None:
        m_new = torch.maximum(self.m, z.amax(dim=-1))
        scale = torch.exp(self.m - m_new)
        e = (z - m_new[:, None]).exp_()
        self.l = self.l * scale + e.sum(-1)
        sums = [row_dot(e, f) for f in weighted]
        if other is not None:
            # Overflows to inf only where the other view's logits far exceed these (gap_to then
            # falls back to the plain difference of log-normalisers).
            sums.append((other - m_new[:, None]).exp_().sum(-1))
        if sums:
            self.extra = self.extra * scale + torch.stack(sums)
        self.m = m_new

    @property
    def lse(self) -> torch.Tensor:
        return self.m + torch.log(self.l)

    def mean(self, i: int) -> torch.Tensor:
        """E_p[f] for the i-th weighted sum."""
        return self.extra[i] / self.l

    def gap_to(self, lse_other: torch.Tensor, i: int) -> torch.Tensor:
        """lse_other - lse from sums sharing one shift: log(sum e^(other-m) / sum e^(z-m)). The plain
        difference of two ~log(V)-sized normalisers would lose ~1e-6 in fp32, exactly where the
        views are close and KL is small."""
        shared = torch.log(self.extra[i] / self.l)
        return torch.where(torch.isfinite(shared), shared, lse_other - self.lse)


def pick_targets(z: torch.Tensor, targets: torch.Tensor, cols: slice, current: torch.Tensor) -> torch.Tensor:
    """Fill in the logits of the targets that fall inside this vocab tile."""
    inside = (targets >= cols.start) & (targets < cols.stop)
    local = (targets - cols.start).clamp(0, z.shape[1] - 1)
    return torch.where(inside, z.gather(1, local[:, None]).squeeze(1), current)


def tiles(num_rows: int, vocab_size: int, row_block: int, vocab_tile: int) -> Iterator[Tuple[slice, Iterator[slice]]]:
    for r0 in range(0, num_rows, row_block):
        rows = slice(r0, min(r0 + row_block, num_rows))
        yield rows, (slice(c0, min(c0 + vocab_tile, vocab_size)) for c0 in range(0, vocab_size, vocab_tile))
