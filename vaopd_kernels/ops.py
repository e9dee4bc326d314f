"""The public operations on top of a backend's two primitives (``backends/base.py``), written once.

Inputs are validated by ``api.py``. Outputs are float32 (float64 for float64 inputs); a backend's
statistics are cast once, at the end. Gradients reach the student's hidden states and head only.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from vaopd_kernels.backends._autograd import attach, precomputed_loss, wants_grad
from vaopd_kernels.backends.base import Backend, Divergence, RowStats, Views, compute_dtype
from vaopd_kernels.options import KernelOptions
from vaopd_kernels.results import Coefficients, VAKLResult


def _scan(impl: Backend, views: Views, options: KernelOptions, divergence: Optional[Divergence] = None,
          beta: float = 0.5, row_weight: Optional[torch.Tensor] = None) -> RowStats:
    return impl.scan(views, divergence=divergence, beta=beta, row_weight=row_weight, options=options)


def _with_grad(impl: Backend, value, stats: RowStats, hidden, weight, options, recomputed_from=()):
    """``value`` with the backend's gradient pass as its backward."""
    return attach(value, hidden, weight, lambda g: impl.gradients(stats.saved, g, options=options),
                  recomputed_from=recomputed_from)


def _visual_advantage(stats: RowStats, visual_signal: str) -> Optional[torch.Tensor]:
    """The per-token visual signal: "sampled", the paper's VA max(log p(y | image) - log p(y |
    degraded image), 0) at the sampled token; "divergence", KL(p_t(. | image) || p_t(. | degraded))."""
    if visual_signal == "divergence":
        return stats.visual_divergence
    if stats.degraded_logprob is None:
        return None
    return (stats.teacher_logprob - stats.degraded_logprob).clamp_min(0.0)


def _teacher_views(vocab_size, th, tw, th_degraded, visual_signal, targets=None, student=None) -> Views:
    """The teacher's views (and the student's, if given), asking the scan for the divergence
    between the two teacher views when that is the visual signal."""
    return Views(vocab_size, student=student, teacher=(th, tw), degraded=th_degraded, targets=targets,
                 visual_divergence=th_degraded is not None and visual_signal == "divergence")


def _cast(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return t.to(dtype) if t is not None else None


def linear_kl(impl: Backend, sh, sw, th, tw, *, divergence: str, beta: float, temperature: float, vocab_size: int,
              options: KernelOptions) -> torch.Tensor:
    views = Views(vocab_size, student=(sh, sw), teacher=(th, tw), temperature=temperature)
    stats = _scan(impl, views, options, Divergence[divergence.upper()], beta)
    return _with_grad(impl, stats.kl.to(compute_dtype(sh, sw, th, tw)), stats, sh, sw, options, (th, tw))


def linear_logprob(impl: Backend, h, w, targets, *, temperature: float, vocab_size: int,
                   options: KernelOptions) -> torch.Tensor:
    stats = _scan(impl, Views(vocab_size, student=(h, w), targets=targets, temperature=temperature), options)
    return _with_grad(impl, stats.student_logprob.to(compute_dtype(h, w)), stats, h, w, options)


@torch.no_grad()
def teacher_logprobs(impl: Backend, th, tw, targets, th_degraded, *, vocab_size: int, options: KernelOptions):
    """(log p(y | image), log p(y | degraded image)), both teacher views in one scan."""
    stats = _scan(impl, Views(vocab_size, teacher=(th, tw), degraded=th_degraded, targets=targets), options)
    dtype = compute_dtype(th, tw, *([th_degraded] if th_degraded is not None else []))
    return stats.teacher_logprob.to(dtype), _cast(stats.degraded_logprob, dtype)


@torch.no_grad()
def visual_divergence(impl: Backend, th, tw, th_degraded, *, vocab_size: int, options: KernelOptions):
    """KL(p_t(. | image) || p_t(. | degraded image)) per token, both teacher views in one scan."""
    stats = _scan(impl, _teacher_views(vocab_size, th, tw, th_degraded, "divergence"), options)
    return stats.visual_divergence.to(compute_dtype(th, tw, th_degraded))


def _result(stats: RowStats, kl, va, dtype) -> VAKLResult:
    # not every backend computes the entropy without targets: none reports it
    entropy = _cast(stats.student_entropy, dtype) if stats.student_logprob is not None else None
    return VAKLResult(kl, _cast(va, dtype), _cast(stats.student_logprob, dtype), _cast(stats.teacher_logprob, dtype),
                      entropy)


def va_kl(impl: Backend, sh, sw, th, tw, targets, th_degraded, *, vocab_size: int, options: KernelOptions,
          visual_signal: str = "sampled") -> VAKLResult:
    views = _teacher_views(vocab_size, th, tw, th_degraded, visual_signal, targets, student=(sh, sw))
    stats = _scan(impl, views, options, Divergence.REVERSE)
    dtype = compute_dtype(*views.floats)
    kl = _with_grad(impl, stats.kl.to(dtype), stats, sh, sw, options, (th, tw))
    return _result(stats, kl, _visual_advantage(stats, visual_signal), dtype)


def va_opd_loss(impl: Backend, sh, sw, th, tw, targets, th_degraded,
                coefficients_for: Callable[[Optional[torch.Tensor]], Coefficients], *, vocab_size: int,
                options: KernelOptions,
                visual_signal: str = "sampled") -> Tuple[torch.Tensor, VAKLResult, Coefficients]:
    """loss = sum(token_weight * reverse KL), the coefficients asked for (``coefficients_for(VA or
    None)``) as soon as VA (``visual_signal``'s) is known, so the gradients are formed during this
    call and backward only rescales them. Returns (loss, detached per-token results, the coefficients)."""
    need_grad = wants_grad(sh, sw)  # asked outside any no_grad region
    views = Views(vocab_size, student=(sh, sw), teacher=(th, tw), targets=targets)
    if th_degraded is not None and (impl.FUSES_VIEWS or options.fused_views):  # all views in one scan
        views = _teacher_views(vocab_size, th, tw, th_degraded, visual_signal, targets, student=(sh, sw))
        stats = _scan(impl, views, options, Divergence.REVERSE)
        va = _visual_advantage(stats, visual_signal)
        coefficients = coefficients_for(va)
        grads = impl.gradients(stats.saved, coefficients.token_weight, options=options) if need_grad else None
    else:  # the teacher views first (VA), then student + teacher with the coefficients known
        va = None
        if th_degraded is not None:
            teacher = _scan(impl, _teacher_views(vocab_size, th, tw, th_degraded, visual_signal, targets), options)
            va = _visual_advantage(teacher, visual_signal)
        coefficients = coefficients_for(va)
        row_weight = coefficients.token_weight if need_grad else None
        stats = _scan(impl, views, options, Divergence.REVERSE, row_weight=row_weight)
        grads = stats.grads
    dtype = compute_dtype(sh, sw, th, tw)
    kl = stats.kl.to(dtype)
    with torch.no_grad():
        loss = (coefficients.token_weight.to(dtype) * kl).sum()
    recompute = lambda: impl.gradients(stats.saved, coefficients.token_weight, options=options)  # noqa: E731
    loss = precomputed_loss(loss, sh, sw, grads, recompute, recomputed_from=(th, tw))
    return loss, _result(stats, kl, va, dtype), coefficients


def weighted_kl(impl: Backend, sh, sw, th, tw, token_weight: torch.Tensor, targets: Optional[torch.Tensor], *,
                vocab_size: int, options: KernelOptions) -> Tuple[torch.Tensor, VAKLResult]:
    """loss = sum(token_weight * reverse KL) for weights known before the call: :func:`va_opd_loss`
    without a degraded view, one scan that forms the gradients as it goes. Returns (loss, detached
    per-token results; log-probs and entropy only with ``targets``)."""
    coefficients = Coefficients(token_weight, None, None, None)
    loss, result, _ = va_opd_loss(impl, sh, sw, th, tw, targets, None, lambda va: coefficients,
                                  vocab_size=vocab_size, options=options)
    return loss, result
