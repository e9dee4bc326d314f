"""A torch emulation of the torch.ops.vaopd kernels (csrc/), same signatures and in-place semantics.

Lets the cuda backend's orchestration (chunking, GEMM routes, packed half gradients, autograd
wiring) run on a CPU; the real kernels are checked against the same tests on a GPU. The objective's
``va_opd_coefficients`` is not emulated: it is the CUDA source's algorithm built for the host.
"""
from __future__ import annotations

import math

import torch

import native_objective

_HALF = {1: torch.bfloat16, 2: torch.float16}


def _logits(raw, bias, scale, softcap):
    """The kernels' Transform.apply: z = c tanh(s (r + b) / c), or s (r + b) without a soft-cap (softcap
    <= 0); a plain head's raw logits as they are."""
    if bias is None and scale == 1.0 and softcap <= 0:
        return raw
    # what the bindings check: the bias is [V] of the logits' dtype, contiguous (read as bias[v])
    assert bias is None or (bias.shape == raw.shape[1:] and bias.dtype == raw.dtype and bias.is_contiguous())
    z = (raw + bias if bias is not None else raw) * scale
    return torch.tanh(z / softcap) * softcap if softcap > 0 else z


def _dz_dr(z, scale, softcap):
    """The kernels' Transform.dz_dr: s (1 - (z / c)^2), or s."""
    return scale * (1 - (z / softcap).square()) if softcap > 0 else scale


def _stats(z):
    lse = torch.logsumexp(z, -1)
    p = torch.exp(z - lse[:, None])
    return lse, p


class EmulatedOps:
    @staticmethod
    def view_stats(views, targets, inv_temperature, want_entropy, bias=None, scale=1.0, softcap=0.0):
        lse, lp, ent = [], [], []
        for v in views:
            z = _logits(v, bias, scale, softcap) * inv_temperature
            l, p = _stats(z)
            lse.append(l)
            ent.append(l - (p * z).sum(-1))
            if targets is not None:
                lp.append(z.gather(-1, targets[:, None]).squeeze(-1) - l)
        empty = views[0].new_empty(0, 0)
        return (torch.stack(lse), torch.stack(lp) if targets is not None else empty,
                torch.stack(ent) if want_entropy else empty)

    @staticmethod
    def divergence(student, teacher, targets, row_grad, divergence, beta, inv_temperature, grad_format,
                   student_bias=None, student_scale=1.0, student_softcap=0.0, teacher_bias=None, teacher_scale=1.0,
                   teacher_softcap=0.0):
        z_capped = _logits(student, student_bias, student_scale, student_softcap)
        zs = z_capped * inv_temperature
        zt = _logits(teacher, teacher_bias, teacher_scale, teacher_softcap) * inv_temperature
        lse_s, p_s = _stats(zs)
        lse_t, p_t = _stats(zt)
        lps, lpt = zs - lse_s[:, None], zt - lse_t[:, None]
        if divergence == 0:
            div = (p_s * (lps - lpt)).sum(-1)
            grad = p_s * (lps - lpt - div[:, None])
        elif divergence == 1:
            div = (p_t * (lpt - lps)).sum(-1)
            grad = p_s - p_t
        else:
            logm = torch.logaddexp(lpt + math.log(beta), lps + math.log(1 - beta))
            kl_t = (p_t * (lpt - logm)).sum(-1)
            kl_s = (p_s * (lps - logm)).sum(-1)
            div = beta * kl_t + (1 - beta) * kl_s
            grad = (1 - beta) * p_s * (lps - logm - kl_s[:, None])
        ent = lse_s - (p_s * zs).sum(-1)
        empty = student.new_empty(0)
        lp_s = zs.gather(-1, targets[:, None]).squeeze(-1) - lse_s if targets is not None else empty
        lp_t = zt.gather(-1, targets[:, None]).squeeze(-1) - lse_t if targets is not None else empty
        if row_grad is not None:
            grad = grad * (row_grad * inv_temperature)[:, None] * _dz_dr(z_capped, student_scale, student_softcap)
            _write_grad(student, grad, grad_format)
        return div, lse_s, lp_s, ent, lp_t

    # The objective kernels' own algorithm (csrc/objective_core.h), compiled for the host.
    va_opd_coefficients = staticmethod(native_objective.va_opd_coefficients)

    @staticmethod
    def logprob_grad(student, lse, targets, row_grad, inv_temperature, grad_format, bias=None, scale=1.0,
                     softcap=0.0):
        z_capped = _logits(student, bias, scale, softcap)
        grad = -torch.exp(z_capped * inv_temperature - lse[:, None])
        grad.scatter_add_(-1, targets[:, None], torch.ones_like(grad[:, :1]))
        _write_grad(student, grad * (row_grad * inv_temperature)[:, None] * _dz_dr(z_capped, scale, softcap),
                    grad_format)


def _write_grad(student, grad, grad_format):
    if grad_format == 0:
        student.copy_(grad)
    else:
        student.view(_HALF[grad_format])[:, : student.shape[1]].copy_(grad.to(_HALF[grad_format]))
