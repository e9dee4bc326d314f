"""The reference backend: full [N, V] logits and plain autograd.

It is the test oracle, so it is written for obviousness, not speed or memory (and takes no
options): the scan keeps the autograd graph of its divergence (or log-prob), and the gradient pass
differentiates it.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from vaopd_kernels.backends.base import Divergence, RowStats, compute_dtype

FUSES_VIEWS = True


def _log_softmax(hidden, weight, vocab_size, temperature, dtype, transform):
    logits = transform.apply(hidden.to(dtype) @ weight[:vocab_size].to(dtype).T, slice(0, vocab_size))
    return F.log_softmax(logits / temperature, dim=-1)


def _divergence(logp_s, logp_t, divergence, beta):
    p_s, p_t = logp_s.exp(), logp_t.exp()
    if divergence == Divergence.REVERSE:
        return (p_s * (logp_s - logp_t)).sum(-1)
    if divergence == Divergence.FORWARD:
        return (p_t * (logp_t - logp_s)).sum(-1)
    # generalized JSD (TRL's convention): m = beta p_t + (1 - beta) p_s
    logm = torch.logsumexp(torch.stack([logp_t + math.log(beta), logp_s + math.log(1.0 - beta)]), dim=0)
    return beta * (p_t * (logp_t - logm)).sum(-1) + (1.0 - beta) * (p_s * (logp_s - logm)).sum(-1)


def _pick(logp, targets):
    return logp.gather(-1, targets[:, None]).squeeze(-1) if targets is not None else None


def scan(views, *, divergence, beta, row_weight, options):
    dtype = compute_dtype(*views.floats)
    out = RowStats()
    with torch.no_grad():
        if views.teacher is not None:
            logp_t = _log_softmax(*views.teacher, views.vocab_size, views.temperature, dtype, views.teacher_transform)
            out.teacher_logprob = _pick(logp_t, views.targets)
        if views.degraded is not None:
            logp_d = _log_softmax(views.degraded, views.teacher[1], views.vocab_size, views.temperature, dtype,
                                  views.teacher_transform)
            out.degraded_logprob = _pick(logp_d, views.targets)
            if views.visual_divergence:  # FORWARD with the degraded view as "student": KL(p_t || p_d)
                out.visual_divergence = _divergence(logp_d, logp_t, Divergence.FORWARD, beta)
    if views.student is None:
        return out
    with torch.enable_grad():  # fresh leaves: the graph reaches them whatever the caller's flags
        hidden, weight = (t.detach().requires_grad_() for t in views.student)
        bias = views.student_transform.bias
        bias = bias.detach().requires_grad_() if bias is not None else None
        transform = replace(views.student_transform, bias=bias)
        logp_s = _log_softmax(hidden, weight, views.vocab_size, views.temperature, dtype, transform)
        if divergence is not None:
            value = _divergence(logp_s, logp_t, divergence, beta)
        else:
            value = _pick(logp_s, views.targets)
    with torch.no_grad():
        out.student_logprob = _pick(logp_s, views.targets)
        out.student_entropy = -(logp_s.exp() * logp_s).sum(-1)
    out.kl = value.detach() if divergence is not None else None
    out.saved = (value, hidden, weight, bias)
    if row_weight is not None:
        out.grads = gradients(out.saved, row_weight, options=options)
    return out


def gradients(saved, row_weight, *, options):
    value, hidden, weight, bias = saved
    leaves = (hidden, weight) if bias is None else (hidden, weight, bias)
    grads = torch.autograd.grad(value, leaves, row_weight.to(value.dtype), retain_graph=True)
    return grads if bias is not None else (*grads, None)
