"""The reference backend: full [N, V] logits and plain autograd.

It is the test oracle, so it is written for obviousness, not speed or memory (and takes no options).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vaopd_kernels.backends._common import compute_dtype
from vaopd_kernels.results import VAKLResult


def _log_softmax(hidden, weight, vocab_size, temperature, dtype):
    logits = hidden.to(dtype) @ weight[:vocab_size].to(dtype).T
    return F.log_softmax(logits / temperature, dim=-1)


def _divergence(logp_s, logp_t, divergence, beta):
    p_s, p_t = logp_s.exp(), logp_t.exp()
    if divergence == "reverse":
        return (p_s * (logp_s - logp_t)).sum(-1)
    if divergence == "forward":
        return (p_t * (logp_t - logp_s)).sum(-1)
    # generalized JSD (TRL's convention): m = beta p_t + (1 - beta) p_s
    logm = torch.logsumexp(
        torch.stack([logp_t + math.log(beta), logp_s + math.log(1.0 - beta)]), dim=0
    )
    kl_t = (p_t * (logp_t - logm)).sum(-1)
    kl_s = (p_s * (logp_s - logm)).sum(-1)
    return beta * kl_t + (1.0 - beta) * kl_s


def linear_kl(sh, sw, th, tw, *, divergence, beta, temperature, vocab_size, options=None):
    dtype = compute_dtype(sh, sw, th, tw)
    logp_s = _log_softmax(sh, sw, vocab_size, temperature, dtype)
    logp_t = _log_softmax(th.detach(), tw.detach(), vocab_size, temperature, dtype)
    return _divergence(logp_s, logp_t, divergence, beta)


def linear_logprob(h, w, targets, *, temperature, vocab_size, options=None):
    logp = _log_softmax(h, w, vocab_size, temperature, compute_dtype(h, w))
    return logp.gather(-1, targets[:, None]).squeeze(-1)


@torch.no_grad()
def teacher_logprobs(th, tw, targets, th_degraded, *, vocab_size, options=None):
    lp = linear_logprob(th, tw, targets, temperature=1.0, vocab_size=vocab_size)
    if th_degraded is None:
        return lp, None
    return lp, linear_logprob(th_degraded, tw, targets, temperature=1.0, vocab_size=vocab_size)


def _student_teacher_stats(sh, sw, th, tw, targets, vocab_size):
    dtype = compute_dtype(sh, sw, th, tw)
    logp_s = _log_softmax(sh, sw, vocab_size, 1.0, dtype)
    logp_t = _log_softmax(th.detach(), tw.detach(), vocab_size, 1.0, dtype)
    kl = _divergence(logp_s, logp_t, "reverse", None)
    with torch.no_grad():
        student_logprob = logp_s.gather(-1, targets[:, None]).squeeze(-1)
        teacher_logprob = logp_t.gather(-1, targets[:, None]).squeeze(-1)
        entropy = -(logp_s.exp() * logp_s).sum(-1)
    return kl, student_logprob, teacher_logprob, entropy


def va_kl(sh, sw, th, tw, targets, th_degraded, *, vocab_size, options=None):
    kl, student_lp, teacher_lp, entropy = _student_teacher_stats(sh, sw, th, tw, targets, vocab_size)
    va = None
    if th_degraded is not None:
        with torch.no_grad():
            degraded_lp = linear_logprob(
                th_degraded.detach(), tw.detach(), targets, temperature=1.0, vocab_size=vocab_size
            )
            va = (teacher_lp - degraded_lp).clamp_min(0.0)
    return VAKLResult(kl, va, student_lp, teacher_lp, entropy)


def weighted_kl(sh, sw, th, tw, targets, th_degraded, token_weights, *, vocab_size, options=None):
    result = va_kl(sh, sw, th, tw, targets, th_degraded, vocab_size=vocab_size)
    token_weight = token_weights(result.visual_advantage)
    loss = (token_weight.to(result.kl.dtype) * result.kl).sum()
    result.kl = result.kl.detach()
    return loss, result
