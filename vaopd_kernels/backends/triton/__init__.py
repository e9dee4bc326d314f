"""The "triton" backend: fused Triton kernels, O(N) extra memory beyond one bounded workspace.

Forward (kl_forward.py): per token tile, a loop over vocabulary tiles computes the student and
teacher logit tiles with ``tl.dot`` (fp32 accumulation) and keeps online row statistics; the
vocabulary is split across programs when there are few token tiles and the splits are merged
with a logaddexp-style rescale. Backward (kl_backward.py): recomputes logit tiles, forms dlogits
from the saved row statistics, and accumulates d(hidden)/d(head) with fp32-accumulating GEMMs
over a bounded vocabulary-chunk workspace. No atomics: deterministic.

Runs on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (set before import). float64 inputs run
in float32 (outputs are returned as float64, but carry fp32 accuracy): use the reference backend
for float64 checks.
"""
from __future__ import annotations

import os

import torch
import triton  # noqa: F401  (ImportError here marks the backend unavailable)

from vaopd_kernels.backends._common import compute_dtype, visual_advantage, visual_advantage_from
from vaopd_kernels.backends._autograd import attach, precomputed_loss, wants_grad
from vaopd_kernels.backends.triton import _config, kl_backward, kl_forward
from vaopd_kernels.backends.triton.kl_forward import CROSS_FORWARD, CROSS_JSD, CROSS_NONE, CROSS_REVERSE
from vaopd_kernels.backends.triton.logprob import linear_logprob
from vaopd_kernels.backends.triton.teacher import teacher_logprobs
from vaopd_kernels.results import VAKLResult

__all__ = ["linear_kl", "linear_logprob", "teacher_logprobs", "va_kl", "weighted_kl",
           "unavailable_reason", "supports_device"]


def unavailable_reason():
    if _config.INTERPRET:
        return None
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return "TRITON_INTERPRET=1 was set after the triton backend was imported"
    if not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 before import to run the kernels on the CPU)"
    return None


def supports_device(device) -> bool:
    device = torch.device(device)
    return device.type == "cpu" if _config.INTERPRET else device.type == "cuda"


def _student_teacher_stats(sh, sw, th, tw, *, vocab_size, options, divergence="reverse", beta=0.5, temperature=1.0,
                           targets=None, degraded=None):
    """Forward statistics and the rows the backward needs for ``divergence``."""
    cross = {"reverse": CROSS_REVERSE, "forward": CROSS_FORWARD, "jsd": CROSS_NONE}[divergence]
    stats = kl_forward.row_stats(vocab_size=vocab_size, student=(sh, sw), teacher=(th, tw), degraded=degraded,
                                 targets=targets, temperature=temperature, cross=cross, beta=beta,
                                 teacher_min=options.gradient_filter_eps is not None)
    if divergence == "jsd":
        second = kl_forward.row_stats(vocab_size=vocab_size, student=(sh, sw), teacher=(th, tw),
                                      temperature=temperature, cross=CROSS_JSD, beta=beta,
                                      lse=torch.stack([stats.lse_s, stats.lse_t]))
        value = beta * second.jsd_t + (1.0 - beta) * second.jsd_s
        rows = kl_backward.saved_rows(stats, aux=second.jsd_s)
    else:
        value = stats.kl
        rows = kl_backward.saved_rows(stats, aux=stats.kl)
    return stats, value, rows


def _grads_fn(sh, sw, th, tw, rows, *, divergence, beta, temperature, vocab_size, options):
    def backward_fn(row_grad):
        return kl_backward.student_grads(mode=divergence, sh=sh, sw=sw, th=th, tw=tw, rows=rows, row_grad=row_grad,
                                         vocab_size=vocab_size, temperature=temperature, beta=beta, options=options,
                                         precision=kl_forward.dot_precision(sh, th))
    return backward_fn


def linear_kl(sh, sw, th, tw, *, divergence, beta, temperature, vocab_size, options):
    out_dtype = compute_dtype(sh, sw, th, tw)
    shk, swk, thk, twk = kl_forward.operands(sh, sw, th, tw)
    with torch.no_grad():
        _, value, rows = _student_teacher_stats(shk, swk, thk, twk, vocab_size=vocab_size, divergence=divergence,
                                                beta=beta, temperature=temperature, options=options)
    backward_fn = _grads_fn(shk, swk, thk, twk, rows, divergence=divergence, beta=beta, temperature=temperature,
                            vocab_size=vocab_size, options=options)
    return attach(value.to(out_dtype), sh, sw, backward_fn, recomputed_from=(th, tw))


def _visual_advantage(stats) -> torch.Tensor:
    """VA from a statistics pass that scored both teacher views."""
    return visual_advantage(stats.logit_t - stats.lse_t, stats.logit_d - stats.lse_d)


def va_kl(sh, sw, th, tw, targets, th_degraded, *, vocab_size, options):
    out_dtype = compute_dtype(sh, sw, th, tw, *(x for x in (th_degraded,) if x is not None))
    shk, swk, thk, twk, tdk = kl_forward.operands(sh, sw, th, tw, th_degraded)
    with torch.no_grad():
        stats, kl, rows = _student_teacher_stats(shk, swk, thk, twk, vocab_size=vocab_size, targets=targets,
                                                 degraded=tdk, options=options)
        lp_s = (stats.logit_s - stats.lse_s).to(out_dtype)
        lp_t = stats.logit_t - stats.lse_t
        va = _visual_advantage(stats).to(out_dtype) if tdk is not None else None
    backward_fn = _grads_fn(shk, swk, thk, twk, rows, divergence="reverse", beta=0.5, temperature=1.0,
                            vocab_size=vocab_size, options=options)
    kl = attach(kl.to(out_dtype), sh, sw, backward_fn, recomputed_from=(th, tw))
    return VAKLResult(kl, va, lp_s, lp_t.to(out_dtype), stats.entropy.to(out_dtype))


def weighted_kl(sh, sw, th, tw, targets, th_degraded, token_weights, *, vocab_size, options):
    out_dtype = compute_dtype(sh, sw, th, tw)
    if options.fused_views and th_degraded is not None:  # all three views in one statistics pass
        shk, swk, thk, twk, tdk = kl_forward.operands(sh, sw, th, tw, th_degraded)
        with torch.no_grad():
            stats, kl, rows = _student_teacher_stats(shk, swk, thk, twk, vocab_size=vocab_size, targets=targets,
                                                     degraded=tdk, options=options)
            va = _visual_advantage(stats).to(out_dtype)
    else:  # the teacher views first, then student + teacher
        va = visual_advantage_from(teacher_logprobs, th, tw, targets, th_degraded, vocab_size, options)
        shk, swk, thk, twk = kl_forward.operands(sh, sw, th, tw)
        with torch.no_grad():
            stats, kl, rows = _student_teacher_stats(shk, swk, thk, twk, vocab_size=vocab_size, targets=targets,
                                                     options=options)
    token_weight = token_weights(va)  # before any gradient work: the gradients are weighted by it
    with torch.no_grad():
        kl = kl.to(out_dtype)
        loss = (token_weight.to(out_dtype) * kl).sum()

    def grads():
        grad_h, grad_w = kl_backward.student_grads(mode="reverse", sh=shk, sw=swk, th=thk, tw=twk, rows=rows,
                                                   row_grad=token_weight, vocab_size=vocab_size, options=options,
                                                   precision=kl_forward.dot_precision(shk, thk))
        return grad_h.to(sh.dtype), grad_w.to(sw.dtype)  # fp32 accumulation done; hold input dtypes

    need_grad = wants_grad(sh, sw)  # asked outside no_grad, which would always answer False
    with torch.no_grad():
        formed = grads() if need_grad else None
    loss = precomputed_loss(loss, sh, sw, formed, grads, recomputed_from=(th, tw))
    lp_s = (stats.logit_s - stats.lse_s).to(out_dtype)
    lp_t = (stats.logit_t - stats.lse_t).to(out_dtype)
    return loss, VAKLResult(kl, va, lp_s, lp_t, stats.entropy.to(out_dtype))
