"""Row-wise softmax statistics of in-memory logit chunks (used by the torch backend).

Every function takes [rows, V] logits already divided by the temperature and returns per-row
values; gradients are w.r.t. the student logits of the chunk.
"""
from __future__ import annotations

import math

import torch

# Below this |lse_t - lse_s| the log-normaliser gap is taken as log1p of a sum of small
# differences instead of a difference of two ~log(V)-sized numbers (keeps KL accurate to ~1e-7
# absolute when student ~ teacher, where the plain difference loses ~1e-6).
_SMALL_GAP = 0.5


def _lse_gap(z_from: torch.Tensor, lse_from: torch.Tensor, p_from: torch.Tensor,
             z_to: torch.Tensor, lse_to: torch.Tensor) -> torch.Tensor:
    """lse_to - lse_from, accurately when the two distributions are close."""
    direct = lse_to - lse_from
    # sum_v (e^{z_to - lse_from} - p_from) = e^{lse_to - lse_from} - 1; each term is tiny and
    # exact-ish. Terms can overflow only where |direct| is large, and then `direct` is used.
    near = torch.log1p((torch.exp(z_to - lse_from[:, None]) - p_from).sum(-1))
    return torch.where(direct.abs() < _SMALL_GAP, near, direct)


def divergence(z_s: torch.Tensor, z_t: torch.Tensor, kind: str, beta: float, with_grad: bool):
    """(per-row divergence, d divergence / d z_s or None) for kind in reverse|forward|jsd."""
    lse_s = torch.logsumexp(z_s, dim=-1)
    lse_t = torch.logsumexp(z_t, dim=-1)
    logp_s = z_s - lse_s[:, None]
    p_s = logp_s.exp()
    if kind == "reverse":
        # KL(p_s || p_t) = sum p_s (z_s - z_t) + (lse_t - lse_s)
        diff = z_s - z_t
        gap = _lse_gap(z_s, lse_s, p_s, z_t, lse_t)
        kl = (p_s * diff).sum(-1) + gap
        grad = p_s * (diff + gap[:, None] - kl[:, None]) if with_grad else None
        return kl, grad
    p_t = torch.exp(z_t - lse_t[:, None])
    if kind == "forward":
        # KL(p_t || p_s) = sum p_t (z_t - z_s) + (lse_s - lse_t)
        gap = _lse_gap(z_t, lse_t, p_t, z_s, lse_s)
        kl = (p_t * (z_t - z_s)).sum(-1) + gap
        return kl, (p_s - p_t) if with_grad else None
    # generalized JSD: m = beta p_t + (1 - beta) p_s
    logp_t = z_t - lse_t[:, None]
    logm = torch.logaddexp(logp_t + math.log(beta), logp_s + math.log(1.0 - beta))
    kl_t = (p_t * (logp_t - logm)).sum(-1)
    kl_s = (p_s * (logp_s - logm)).sum(-1)
    jsd = beta * kl_t + (1.0 - beta) * kl_s
    grad = (1.0 - beta) * p_s * (logp_s - logm - kl_s[:, None]) if with_grad else None
    return jsd, grad


def target_logit(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return z.gather(-1, targets[:, None]).squeeze(-1)


def logprob(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return target_logit(z, targets) - torch.logsumexp(z, dim=-1)


def entropy(z: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """H = lse - sum p z (no log p array needed)."""
    p = torch.exp(z - lse[:, None])
    return lse - (p * z).sum(-1)


def logprob_grad(z: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d log p_y / d z = onehot(y) - p."""
    grad = -torch.exp(z - lse[:, None])
    grad.scatter_add_(-1, targets[:, None], torch.ones_like(targets, dtype=z.dtype)[:, None])
    return grad
