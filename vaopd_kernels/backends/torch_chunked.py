"""The "torch" backend: exact, chunked over token rows, runs on any device.

Never holds more than one chunk of rows x V logits per view. Each chunk's size comes from a
memory budget (``set_chunk_budget`` or the ``VAOPD_CHUNK_MB`` environment variable).

Gradients: ``linear_kl``/``va_kl``/``linear_logprob`` recompute the logits chunk by chunk in
backward (the upstream gradient is unknown during forward, and storing per-chunk gradients would
cost [N, V]). ``weighted_kl`` knows its row weights up front, so it forms d(hidden) and
d(weight) while the logits are hot and backward only rescales them: one student and one teacher
GEMM fewer than forward + recompute.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from vaopd_kernels.backends import _chunk_math as cm
from vaopd_kernels.backends._common import compute_dtype
from vaopd_kernels.results import VAKLResult

_MIB = 1 << 20
_chunk_budget_bytes = int(float(os.environ.get("VAOPD_CHUNK_MB", "256")) * _MIB)
# Live [rows, V] arrays per chunk: the views' logits plus softmax/gradient temporaries.
_LIVE_ROW_ARRAYS = 8


def set_chunk_budget(num_bytes: int) -> None:
    """Cap the bytes of [rows, V] work arrays the torch backend keeps alive at once."""
    global _chunk_budget_bytes
    if int(num_bytes) < 1:
        raise ValueError(f"num_bytes: expected a positive byte count, got {num_bytes}")
    _chunk_budget_bytes = int(num_bytes)


def get_chunk_budget() -> int:
    return _chunk_budget_bytes


def _rows_per_chunk(num_rows: int, vocab_size: int, dtype: torch.dtype) -> int:
    per_row = vocab_size * torch.finfo(dtype).bits // 8 * _LIVE_ROW_ARRAYS
    return max(1, min(num_rows, _chunk_budget_bytes // per_row))


@dataclass
class _Head:
    """One LM head restricted to the tokenizer support, in the compute dtype."""

    weight: torch.Tensor  # [V, D]

    def logits(self, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
        z = hidden.to(self.weight.dtype) @ self.weight.T
        return z / temperature if temperature != 1.0 else z


@dataclass
class _ScanOut:
    kl: Optional[torch.Tensor] = None
    student_logprob: Optional[torch.Tensor] = None
    teacher_logprob: Optional[torch.Tensor] = None
    degraded_logprob: Optional[torch.Tensor] = None
    student_entropy: Optional[torch.Tensor] = None
    grad_hidden: Optional[torch.Tensor] = None
    grad_weight: Optional[torch.Tensor] = None


def _scan(
    *,
    vocab_size: int,
    student=None,
    teacher=None,
    degraded_hidden=None,
    targets=None,
    temperature: float = 1.0,
    divergence: str = "reverse",
    beta: float = 0.5,
    row_grad: Optional[torch.Tensor] = None,
    want_kl: bool = False,
    want_logprob_grad: bool = False,
) -> _ScanOut:
    """One pass over row chunks computing whatever the caller asked for.

    ``student``/``teacher`` are (hidden, weight) pairs. With ``row_grad`` the pass also forms the
    gradient of ``sum(row_grad * quantity)`` w.r.t. the student hidden states and head, where the
    quantity is the divergence (default) or the student target log-prob (``want_logprob_grad``).
    """
    tensors = [t for pair in (student, teacher) if pair for t in pair]
    dtype = compute_dtype(*tensors, *(x for x in (degraded_hidden,) if x is not None))
    s_head = _Head(student[1].detach()[:vocab_size].to(dtype)) if student else None
    t_head = _Head(teacher[1].detach()[:vocab_size].to(dtype)) if teacher else None
    num_rows = (student or teacher)[0].shape[0]
    device = (student or teacher)[0].device
    out = _ScanOut()
    new = lambda: torch.empty(num_rows, dtype=dtype, device=device)  # noqa: E731
    if want_kl:
        out.kl = new()
    if targets is not None:
        if student:
            out.student_logprob, out.student_entropy = new(), new()
        if teacher:
            out.teacher_logprob = new()
        if degraded_hidden is not None:
            out.degraded_logprob = new()
    if row_grad is not None:
        out.grad_hidden = torch.empty(num_rows, student[0].shape[1], dtype=dtype, device=device)
        out.grad_weight = torch.zeros_like(s_head.weight)

    step = _rows_per_chunk(num_rows, vocab_size, dtype)
    for start in range(0, num_rows, step):
        rows = slice(start, min(start + step, num_rows))
        y = targets[rows] if targets is not None else None
        z_s = s_head.logits(student[0].detach()[rows], temperature) if student else None
        z_t = t_head.logits(teacher[0].detach()[rows], temperature) if teacher else None
        # Probabilities are needed for any divergence and for student statistics; a teacher
        # view needs them only for forward KL / JSD.
        s = cm.softmax(z_s) if student else None
        t = cm.softmax(z_t, with_probs=want_kl and divergence != "reverse") if teacher else None
        grad_z = None
        if want_kl:
            out.kl[rows], grad_z = cm.divergence(s, t, divergence, beta, with_grad=row_grad is not None)
        if y is not None and student:
            out.student_logprob[rows] = cm.logprob(s, y)
            out.student_entropy[rows] = cm.entropy(s)
            if want_logprob_grad and row_grad is not None:
                grad_z = cm.logprob_grad(s, y)
        if y is not None and teacher:
            out.teacher_logprob[rows] = cm.logprob(t, y)
        if y is not None and degraded_hidden is not None:
            z_d = t_head.logits(degraded_hidden.detach()[rows], temperature)
            out.degraded_logprob[rows] = cm.logprob(cm.softmax(z_d, with_probs=False), y)
            del z_d
        if row_grad is not None:
            # chain rule through z = W h / T
            grad_z = grad_z * (row_grad[rows].to(dtype) / temperature)[:, None]
            h = student[0].detach()[rows].to(dtype)
            out.grad_hidden[rows] = grad_z @ s_head.weight
            out.grad_weight.addmm_(grad_z.T, h)
        del z_s, z_t, s, t, grad_z
    return out


def _full_weight_grad(grad_weight: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Pad the [V, D] gradient with zero rows for LM-head padding rows >= V."""
    if grad_weight.shape[0] == weight.shape[0]:
        return grad_weight.to(weight.dtype)
    full = torch.zeros_like(weight)
    full[: grad_weight.shape[0]] = grad_weight.to(weight.dtype)
    return full


class _RecomputeGrad(torch.autograd.Function):
    """Attaches a chunk-recomputing backward to a value computed without autograd.

    ``recompute(row_grad)`` re-runs the scan with the upstream per-row gradient and returns
    (d hidden, d weight[:V]).
    """

    @staticmethod
    def forward(ctx, value, hidden, weight, recompute):
        ctx.recompute = recompute
        ctx.dtypes = (hidden.dtype, weight)
        return value.clone()

    @staticmethod
    def backward(ctx, row_grad):
        out = ctx.recompute(row_grad)
        hidden_dtype, weight = ctx.dtypes
        return None, out.grad_hidden.to(hidden_dtype), _full_weight_grad(out.grad_weight, weight), None


class _PrecomputedGradLoss(torch.autograd.Function):
    """A scalar whose gradients were formed during forward; backward only rescales them.

    The first backward scales them in place and hands them over (no second [V, D] copy);
    a repeated backward (retain_graph, gradcheck) gets them recomputed by ``recompute()``.
    """

    @staticmethod
    def forward(ctx, loss, sh, sw, grad_hidden, grad_weight, recompute):
        ctx.grads = (grad_hidden, grad_weight)
        ctx.recompute = recompute
        ctx.dtypes = (sh.dtype, sw.dtype)
        return loss.clone()

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.grads if ctx.grads is not None else ctx.recompute()
        ctx.grads = None
        return (None, grad_hidden.mul_(grad_loss).to(ctx.dtypes[0]),
                grad_weight.mul_(grad_loss).to(ctx.dtypes[1]), None, None, None)


def _with_grad(value, hidden, weight, **scan_options):
    if not (hidden.requires_grad or weight.requires_grad) or not torch.is_grad_enabled():
        return value
    recompute = lambda row_grad: _scan(row_grad=row_grad, **scan_options)  # noqa: E731
    return _RecomputeGrad.apply(value, hidden, weight, recompute)


def linear_kl(sh, sw, th, tw, *, divergence, beta, temperature, vocab_size):
    options = dict(student=(sh, sw), teacher=(th, tw), want_kl=True, divergence=divergence,
                   beta=beta, temperature=temperature, vocab_size=vocab_size)
    with torch.no_grad():
        kl = _scan(**options).kl
    return _with_grad(kl, sh, sw, **options)


def linear_logprob(h, w, targets, *, temperature, vocab_size):
    options = dict(student=(h, w), targets=targets, temperature=temperature, vocab_size=vocab_size)
    with torch.no_grad():
        lp = _scan(**options).student_logprob
    return _with_grad(lp, h, w, want_logprob_grad=True, **options)


@torch.no_grad()
def teacher_logprobs(th, tw, targets, th_degraded, *, vocab_size):
    out = _scan(teacher=(th, tw), degraded_hidden=th_degraded, targets=targets, vocab_size=vocab_size)
    return out.teacher_logprob, out.degraded_logprob


def va_kl(sh, sw, th, tw, targets, th_degraded, *, vocab_size):
    options = dict(student=(sh, sw), teacher=(th, tw), want_kl=True, vocab_size=vocab_size)
    with torch.no_grad():
        stats = _scan(degraded_hidden=th_degraded, targets=targets, **options)
    va = None
    if stats.degraded_logprob is not None:
        va = (stats.teacher_logprob - stats.degraded_logprob).clamp_min(0.0)
    kl = _with_grad(stats.kl, sh, sw, **options)
    return VAKLResult(kl, va, stats.student_logprob, stats.teacher_logprob, stats.student_entropy)


def weighted_kl(sh, sw, th, tw, targets, token_weight, *, vocab_size):
    options = dict(student=(sh, sw), teacher=(th, tw), want_kl=True, row_grad=token_weight, vocab_size=vocab_size)
    with torch.no_grad():
        out = _scan(targets=targets, **options)
        loss = (token_weight.to(out.kl.dtype) * out.kl).sum()
    if (sh.requires_grad or sw.requires_grad) and torch.is_grad_enabled():
        def recompute():
            again = _scan(**options)
            return again.grad_hidden, _full_weight_grad(again.grad_weight, sw)
        loss = _PrecomputedGradLoss.apply(loss, sh, sw, out.grad_hidden,
                                          _full_weight_grad(out.grad_weight, sw), recompute)
    return loss, out.kl, out.student_logprob, out.student_entropy, out.teacher_logprob
