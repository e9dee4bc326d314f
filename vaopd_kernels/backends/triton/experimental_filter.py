"""EXPERIMENTAL, not yet measured on a GPU: gradient filtering (``KernelOptions.gradient_filter_eps``).

The dlogits kernel flags each FLAG_BLOCK x FLAG_BLOCK block of d loss / d logits (before the row
weights) holding an entry >= eps x the row's largest student probability; both backward matmuls
skip the K steps of unflagged blocks (as Cut Cross-Entropy does for softmax blocks). For reverse
KL the dlogits kernel also skips the teacher's recompute on tiles where that provably drops
nothing more (:func:`teacher_skip_threshold`), and rows are visited grouped by confidence
(:func:`confidence_order`) so that blocks hold rows alike. The gradients are APPROXIMATE: each
entry moves by at most (entries dropped) x eps x max|w| (or max|h|) x row weight.
"""
from __future__ import annotations

import math

import torch

from vaopd_kernels.backends.triton.stats import SavedRow


def confidence_order(rows: torch.Tensor) -> torch.Tensor:
    """Rows by log max p_s: a block is skipped only if all its rows allow it, and one uncertain row
    among certain ones keeps it (bench/filter_reach.py). The workspace holds rows in this order;
    the matmuls gather h's rows and scatter d hidden's through it. Nothing is copied."""
    return torch.argsort(rows[SavedRow.MAX_S] - rows[SavedRow.LSE_S]).to(torch.int32)


def teacher_skip_threshold(rows: torch.Tensor, eps: float) -> torch.Tensor:
    """Per row, a tau such that p_s <= tau implies |d KL(p_s||p_t) / d z_s| <= eps * max_v p_s.

    That derivative is p_s (log p_s - log p_t - KL). With k = |KL| + (lse_t - min_v z_t), a bound
    on |log p_t| + |KL|, it is at most f(p_s) = p_s (-log p_s + k), increasing up to 1/e. With
    b = eps max p_s and d = max(k - log b + 1, 1), tau = min(b / (d + log d), 1/e) gives
    f(tau) <= b (it reduces to log(d + log d) <= 1 + log d; the 1/e cap to f(1/e) <= b). The
    backward skips the teacher tile wherever all of a tile's p_s are this small: those entries
    would be filtered out anyway.
    """
    lse_s, lse_t, kl, max_s, min_t = (rows[r].double() for r in (SavedRow.LSE_S, SavedRow.LSE_T, SavedRow.AUX,
                                                                  SavedRow.MAX_S, SavedRow.MIN_T))
    b = eps * torch.exp(max_s - lse_s)
    d = (kl.abs() + (lse_t - min_t) - torch.log(b) + 1.0).clamp(min=1.0)
    return (b / (d + torch.log(d))).clamp(max=math.exp(-1.0)).float()


