"""Autograd plumbing shared by the backends (no math): gradients a backend forms itself.

Backends compute values without autograd and attach their own backward. Both wrappers run that
backward with autocast off, so a caller's ``torch.autocast`` region never changes the
backends' precisions (fp32 accumulation) or mixes dtypes inside their GEMMs. Both save the
tensors their backward recomputes from (``save_for_backward``), so that changing one in place
between forward and backward raises, as it does for torch's own operations, instead of
yielding gradients of other values.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional, Tuple

import torch

Grads = Tuple[torch.Tensor, torch.Tensor]  # (d hidden [N, D], d weight [V or V_head, D])


def no_autocast(device: torch.device):
    """Autocast off on ``device``'s type (a no-op context where autocast does not apply)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _as_grad(grad: torch.Tensor, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """Cast to the input's dtype; zero rows for LM-head padding rows >= V (they never enter a softmax)."""
    if grad.shape[0] == rows:
        return grad.to(dtype)
    full = grad.new_zeros(rows, grad.shape[1], dtype=dtype)
    full[: grad.shape[0]] = grad
    return full


class _Inputs:
    """What backward needs to know of (hidden, weight): dtypes, head rows and device, not the tensors."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor):
        self.hidden_dtype, self.weight_dtype = hidden.dtype, weight.dtype
        self.head_rows, self.device = weight.shape[0], hidden.device

    def grads(self, grad_hidden: torch.Tensor, grad_weight: torch.Tensor):
        return grad_hidden.to(self.hidden_dtype), _as_grad(grad_weight, self.head_rows, self.weight_dtype)


def _remember(ctx, hidden, weight, recomputed_from) -> None:
    """Keep what backward needs to know of (hidden, weight) and save the tensors it reads."""
    ctx.inputs = _Inputs(hidden, weight)
    ctx.save_for_backward(hidden, weight, *recomputed_from)


def _recall(ctx) -> _Inputs:
    """``ctx.inputs``, once the saved tensors are checked: unpacking them raises if one was
    changed in place since forward."""
    ctx.saved_tensors  # noqa: B018
    return ctx.inputs


class _RowGrad(torch.autograd.Function):
    """A per-row value whose backward is ``backward_fn(row_grad) -> (d hidden, d weight)``."""

    @staticmethod
    def forward(ctx, value, hidden, weight, backward_fn, recomputed_from):
        ctx.backward_fn = backward_fn
        _remember(ctx, hidden, weight, recomputed_from)
        return value.clone()

    @staticmethod
    def backward(ctx, row_grad):
        inputs = _recall(ctx)
        with no_autocast(inputs.device):
            grads = ctx.backward_fn(row_grad)
        return None, *inputs.grads(*grads), None, None


class _PrecomputedGradLoss(torch.autograd.Function):
    """A scalar whose gradients were formed during forward; backward only rescales them.

    The first backward scales them in place and hands them over (no second head-sized copy); a
    repeated backward (retain_graph, gradcheck) gets them from ``recompute()``.
    """

    @staticmethod
    def forward(ctx, loss, hidden, weight, grad_hidden, grad_weight, recompute, recomputed_from):
        ctx.grads = (grad_hidden, grad_weight)
        ctx.recompute = recompute
        _remember(ctx, hidden, weight, recomputed_from)
        return loss.clone()

    @staticmethod
    def backward(ctx, grad_loss):
        inputs = _recall(ctx)
        if ctx.grads is None:
            with no_autocast(inputs.device):
                ctx.grads = ctx.recompute()
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None
        return (None, *inputs.grads(grad_hidden.mul_(grad_loss), grad_weight.mul_(grad_loss)),
                None, None, None, None)


def wants_grad(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)


def attach(value: torch.Tensor, hidden, weight, backward_fn: Callable[[torch.Tensor], Grads],
           recomputed_from: Tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """``value`` with a gradient path to (hidden, weight) when autograd needs one; ``backward_fn``
    reads (hidden, weight) and ``recomputed_from`` (e.g. the teacher's tensors)."""
    if not wants_grad(hidden, weight):
        return value
    return _RowGrad.apply(value, hidden, weight, backward_fn, recomputed_from)


def precomputed_loss(loss: torch.Tensor, hidden, weight, grads: Optional[Grads],
                     recompute: Callable[[], Grads], recomputed_from: Tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """``loss`` whose gradients ``grads`` were already formed (None: no gradient wanted)."""
    if grads is None:
        return loss
    return _PrecomputedGradLoss.apply(loss, hidden, weight, *grads, recompute, recomputed_from)
