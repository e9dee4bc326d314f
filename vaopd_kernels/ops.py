"""The public operations on top of a backend's two primitives (``backends/base.py``), written once.

Inputs are validated by ``api.py``; a head is an ``LMHead`` or a plain weight tensor. Outputs are float32 (float64 for
float64 inputs); a backend's statistics are cast once, at the end. Gradients reach the student's
hidden states, head weight and head bias only.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from vaopd_kernels.backends._autograd import attach, precomputed_loss, wants_grad
from vaopd_kernels.backends.base import IDENTITY, Backend, Divergence, RowStats, Views, compute_dtype
from vaopd_kernels.lm_head import LMHead, as_lm_head
from vaopd_kernels.options import KernelOptions
from vaopd_kernels.results import Coefficients, VAKLResult


def _scan(impl: Backend, views: Views, options: KernelOptions, divergence: Optional[Divergence] = None,
          beta: float = 0.5, row_weight: Optional[torch.Tensor] = None) -> RowStats:
    return impl.scan(views, divergence=divergence, beta=beta, row_weight=row_weight, options=options)


def _with_grad(impl: Backend, value, stats: RowStats, hidden, head: LMHead, options, recomputed_from=()):
    """``value`` with the backend's gradient pass as its backward."""
    head = as_lm_head(head)
    return attach(value, hidden, head.weight, head.bias, lambda g: impl.gradients(stats.saved, g, options=options),
                  recomputed_from=recomputed_from)


def _views(vocab_size, student=None, teacher=None, **kwargs) -> Views:
    """Views of (hidden, LMHead) pairs: the weights in the pairs, the heads' transforms beside them."""
    pair = lambda view: (view[0], as_lm_head(view[1]).weight) if view else None  # noqa: E731
    transform = lambda view: as_lm_head(view[1]).transform if view else IDENTITY  # noqa: E731
    return Views(vocab_size, student=pair(student), teacher=pair(teacher), student_transform=transform(student),
                 teacher_transform=transform(teacher), **kwargs)


def _floats(*tensors) -> list:
    """The float tensors among hidden states and heads (a head's weight and bias), for compute_dtype."""
    out = []
    for t in tensors:
        if isinstance(t, LMHead):
            out += [t.weight] + ([t.bias] if t.bias is not None else [])
        elif t is not None:
            out.append(t)
    return out


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
    return _views(vocab_size, student=student, teacher=(th, tw), degraded=th_degraded, targets=targets,
                  visual_divergence=th_degraded is not None and visual_signal == "divergence")


def _cast(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return t.to(dtype) if t is not None else None


def linear_kl(impl: Backend, sh, sw: LMHead, th, tw: LMHead, *, divergence: str, beta: float, temperature: float,
              vocab_size: int, options: KernelOptions, return_entropy: bool = False):
    """The per-token divergence, and with ``return_entropy`` (kl, the student's entropy), from one scan."""
    views = _views(vocab_size, student=(sh, sw), teacher=(th, tw), temperature=temperature,
                   student_entropy=return_entropy)
    stats = _scan(impl, views, options, Divergence[divergence.upper()], beta)
    dtype = compute_dtype(*_floats(sh, sw, th, tw))
    kl = _with_grad(impl, stats.kl.to(dtype), stats, sh, sw, options, _floats(th, tw))
    return (kl, stats.student_entropy.to(dtype)) if return_entropy else kl


def linear_logprob(impl: Backend, h, w: LMHead, targets, *, temperature: float, vocab_size: int,
                   options: KernelOptions) -> torch.Tensor:
    stats = _scan(impl, _views(vocab_size, student=(h, w), targets=targets, temperature=temperature), options)
    return _with_grad(impl, stats.student_logprob.to(compute_dtype(*_floats(h, w))), stats, h, w, options)


@torch.no_grad()
def teacher_logprobs(impl: Backend, th, tw: LMHead, targets, th_degraded, *, vocab_size: int,
                     options: KernelOptions):
    """(log p(y | image), log p(y | degraded image)), both teacher views in one scan."""
    stats = _scan(impl, _views(vocab_size, teacher=(th, tw), degraded=th_degraded, targets=targets), options)
    dtype = compute_dtype(*_floats(th, tw, th_degraded))
    return stats.teacher_logprob.to(dtype), _cast(stats.degraded_logprob, dtype)


@torch.no_grad()
def visual_divergence(impl: Backend, th, tw: LMHead, th_degraded, *, vocab_size: int, options: KernelOptions):
    """KL(p_t(. | image) || p_t(. | degraded image)) per token, both teacher views in one scan."""
    stats = _scan(impl, _teacher_views(vocab_size, th, tw, th_degraded, "divergence"), options)
    return stats.visual_divergence.to(compute_dtype(*_floats(th, tw, th_degraded)))


def _result(stats: RowStats, kl, va, dtype) -> VAKLResult:
    # not every backend computes the entropy without targets: none reports it
    entropy = _cast(stats.student_entropy, dtype) if stats.student_logprob is not None else None
    return VAKLResult(kl, _cast(va, dtype), _cast(stats.student_logprob, dtype), _cast(stats.teacher_logprob, dtype),
                      entropy)


def va_kl(impl: Backend, sh, sw: LMHead, th, tw: LMHead, targets, th_degraded, *, vocab_size: int, options: KernelOptions,
          visual_signal: str = "sampled") -> VAKLResult:
    views = _teacher_views(vocab_size, th, tw, th_degraded, visual_signal, targets, student=(sh, sw))
    stats = _scan(impl, views, options, Divergence.REVERSE)
    dtype = compute_dtype(*views.floats)
    kl = _with_grad(impl, stats.kl.to(dtype), stats, sh, sw, options, _floats(th, tw))
    return _result(stats, kl, _visual_advantage(stats, visual_signal), dtype)


def va_opd_loss(impl: Backend, sh, sw: LMHead, th, tw: LMHead, targets, th_degraded,
                coefficients_for: Callable[[Optional[torch.Tensor]], Coefficients], *, vocab_size: int,
                options: KernelOptions,
                visual_signal: str = "sampled") -> Tuple[torch.Tensor, VAKLResult, Coefficients]:
    """loss = sum(token_weight * reverse KL), the coefficients asked for (``coefficients_for(VA or
    None)``) as soon as VA (``visual_signal``'s) is known, so the gradients are formed during this
    call and backward only rescales them. Returns (loss, detached per-token results, the coefficients)."""
    sw = as_lm_head(sw)
    need_grad = wants_grad(sh, sw.weight, sw.bias)  # asked outside any no_grad region
    views = _views(vocab_size, student=(sh, sw), teacher=(th, tw), targets=targets)
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
    dtype = compute_dtype(*_floats(sh, sw, th, tw))
    kl = stats.kl.to(dtype)
    with torch.no_grad():
        loss = (coefficients.token_weight.to(dtype) * kl).sum()
    recompute = lambda: impl.gradients(stats.saved, coefficients.token_weight, options=options)  # noqa: E731
    loss = precomputed_loss(loss, sh, sw.weight, sw.bias, grads, recompute, recomputed_from=_floats(th, tw))
    return loss, _result(stats, kl, va, dtype), coefficients


def weighted_kl(impl: Backend, sh, sw: LMHead, th, tw: LMHead, token_weight: torch.Tensor, targets: Optional[torch.Tensor], *,
                vocab_size: int, options: KernelOptions) -> Tuple[torch.Tensor, VAKLResult]:
    """loss = sum(token_weight * reverse KL) for weights known before the call: :func:`va_opd_loss`
    without a degraded view, one scan that forms the gradients as it goes. Returns (loss, detached
    per-token results; log-probs and entropy only with ``targets``)."""
    coefficients = Coefficients(token_weight, None, None, None)
    loss, result, _ = va_opd_loss(impl, sh, sw, th, tw, targets, None, lambda va: coefficients,
                                  vocab_size=vocab_size, options=options)
    return loss, result
