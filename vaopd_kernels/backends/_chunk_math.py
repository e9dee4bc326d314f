"""Row-wise softmax statistics of in-memory logit chunks (used by the torch backend).

Every function takes [rows, V] logits already divided by the temperature and returns per-row
values; gradients are w.r.t. the student logits of the chunk. Exponentials over [rows, V]
dominate the CPU time, so each view's softmax is formed once and shared.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

# Below this |lse_t - lse_s| the log-normaliser gap is taken as log1p of a sum of small
# differences instead of a difference of two ~log(V)-sized numbers (keeps KL accurate to ~1e-7
# absolute when student ~ teacher, where the plain difference loses ~1e-6).
_SMALL_GAP = 0.5


class Softmax(NamedTuple):
    z: torch.Tensor  # [rows, V] logits
    lse: torch.Tensor  # [rows]
    p: Optional[torch.Tensor]  # [rows, V] probabilities, when asked for


def softmax(z: torch.Tensor, with_probs: bool = True) -> Softmax:
    """lse and (optionally) probabilities with a single exponential pass."""
    if not with_probs:
        return Softmax(z, torch.logsumexp(z, dim=-1), None)
    m = z.amax(dim=-1, keepdim=True)
    e = torch.exp(z - m)
    total = e.sum(-1, keepdim=True)
    return Softmax(z, (m + total.log()).squeeze(-1), e.div_(total))


def _lse_gap(frm: Softmax, to: Softmax) -> torch.Tensor:
    """to.lse - frm.lse, accurately when the two distributions are close."""
    direct = to.lse - frm.lse
    # sum_v (e^{z_to - lse_from} - p_from) = e^{lse_to - lse_from} - 1; each term is tiny and
    # exact-ish. Terms can overflow only where |direct| is large, and then `direct` is used.
    near = torch.log1p((torch.exp(to.z - frm.lse[:, None]) - frm.p).sum(-1))
    return torch.where(direct.abs() < _SMALL_GAP, near, direct)


def divergence(s: Softmax, t: Softmax, kind: str, beta: float, with_grad: bool):
    """(per-row divergence, d divergence / d z_s or None) for kind in reverse|forward|jsd.

    ``s`` must carry probabilities; ``t`` must for "forward" and "jsd".
    """
    if kind == "reverse":
        # KL(p_s || p_t) = sum p_s (z_s - z_t) + (lse_t - lse_s)
        diff = s.z - t.z
        gap = _lse_gap(s, t)
        kl = (s.p * diff).sum(-1) + gap
        grad = s.p * (diff + gap[:, None] - kl[:, None]) if with_grad else None
        return kl, grad
    if kind == "forward":
        # KL(p_t || p_s) = sum p_t (z_t - z_s) + (lse_s - lse_t)
        kl = (t.p * (t.z - s.z)).sum(-1) + _lse_gap(t, s)
        return kl, (s.p - t.p) if with_grad else None
    # generalized JSD: m = beta p_t + (1 - beta) p_s
    logp_s = s.z - s.lse[:, None]
    logp_t = t.z - t.lse[:, None]
    logm = torch.logaddexp(logp_t + math.log(beta), logp_s + math.log(1.0 - beta))
    kl_t = (t.p * (logp_t - logm)).sum(-1)
    kl_s = (s.p * (logp_s - logm)).sum(-1)
    jsd = beta * kl_t + (1.0 - beta) * kl_s
    grad = (1.0 - beta) * s.p * (logp_s - logm - kl_s[:, None]) if with_grad else None
    return jsd, grad


def logprob(v: Softmax, targets: torch.Tensor) -> torch.Tensor:
    return v.z.gather(-1, targets[:, None]).squeeze(-1) - v.lse


def entropy(v: Softmax) -> torch.Tensor:
    """H = lse - sum p z (no log p array needed)."""
    return v.lse - (v.p * v.z).sum(-1)


def logprob_grad(v: Softmax, targets: torch.Tensor) -> torch.Tensor:
    """d log p_y / d z = onehot(y) - p."""
    grad = -v.p
    grad.scatter_add_(-1, targets[:, None], torch.ones_like(targets, dtype=v.z.dtype)[:, None])
    return grad
