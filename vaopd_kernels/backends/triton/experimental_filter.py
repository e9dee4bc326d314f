"""EXPERIMENTAL, not yet measured on a GPU: gradient filtering (``KernelOptions.gradient_filter_eps``).

The dlogits kernel flags each FLAG_BLOCK x FLAG_BLOCK block of d loss / d logits (before the row
weights) holding an entry >= eps x the row's largest student probability (:func:`flag_blocks`);
both backward matmuls skip the K steps of unflagged blocks (:func:`live_steps`), as Cut
Cross-Entropy does for softmax blocks. For reverse
KL the dlogits kernel also skips the teacher's recompute on tiles where that provably drops
nothing more (:func:`teacher_skip_threshold`), and rows are visited grouped by confidence
(:func:`confidence_order`) so that blocks hold rows alike. The gradients are APPROXIMATE: each
entry moves by at most (entries dropped) x eps x max|w| (or max|h|) x row weight. Plain LM heads
only: the backend refuses heads with a logit transform (that bound is for untransformed logits).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from vaopd_kernels.backends.triton.stats import SavedRow

MAX_S: tl.constexpr = tl.constexpr(int(SavedRow.MAX_S))


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


@triton.jit
def flag_blocks(dz, rows_ptr, lse_s, offs_n, n_mask, v_mask, N, flag_ptr, flag_cols, filter_eps,
                FLAG_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr):
    """Flag each FLAG_BLOCK x FLAG_BLOCK block of the dlogits tile with some |d q_n / d z| >= eps * max_v p_s."""
    max_s = tl.load(rows_ptr + MAX_S * N + offs_n, mask=n_mask, other=0.0)
    threshold = filter_eps * tl.exp(max_s - lse_s)
    excess = tl.where(n_mask[:, None] & v_mask[None, :], tl.abs(dz) - threshold[:, None], -1.0)
    blocks = tl.reshape(excess, (BLOCK_N // FLAG_BLOCK, FLAG_BLOCK, BLOCK_V // FLAG_BLOCK, FLAG_BLOCK))
    block_max = tl.max(tl.max(blocks, 3), 1)
    row_blocks = tl.program_id(0) * (BLOCK_N // FLAG_BLOCK) + tl.arange(0, BLOCK_N // FLAG_BLOCK)
    col_blocks = tl.program_id(1) * (BLOCK_V // FLAG_BLOCK) + tl.arange(0, BLOCK_V // FLAG_BLOCK)
    in_map = (row_blocks < tl.cdiv(N, FLAG_BLOCK))[:, None] & (col_blocks < flag_cols)[None, :]
    tl.store(flag_ptr + row_blocks[:, None] * flag_cols + col_blocks[None, :],
             (block_max >= 0.0).to(tl.int8), mask=in_map)


@triton.jit
def live_steps(flag_ptr, live_ptr, M, K, stride_fm, stride_fk,
                FLAG_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Writes to live_ptr, in increasing order, the K steps of this program's rows that the flag
    map marks live (some flag in its [BLOCK_M, BLOCK_K] block set); returns how many there are."""
    SCAN: tl.constexpr = 64  # K steps examined at once
    FM: tl.constexpr = BLOCK_M // FLAG_BLOCK
    FK: tl.constexpr = BLOCK_K // FLAG_BLOCK
    fm = tl.program_id(0) * FM + tl.arange(0, FM)
    fm_mask = fm < tl.cdiv(M, FLAG_BLOCK)
    count = 0
    for first in range(0, tl.cdiv(K, BLOCK_K), SCAN):
        fk = first * FK + tl.arange(0, SCAN * FK)
        flags = tl.load(flag_ptr + fm[:, None] * stride_fm + fk[None, :] * stride_fk,
                        mask=fm_mask[:, None] & (fk < tl.cdiv(K, FLAG_BLOCK))[None, :], other=0)
        live = (tl.max(tl.reshape(tl.max(flags, 0), (SCAN, FK)), 1) > 0).to(tl.int32)
        slot = count + tl.cumsum(live, 0) - live
        tl.store(live_ptr + slot, first + tl.arange(0, SCAN), mask=live > 0)
        count += tl.sum(live, 0)
    return count
