"""The two autograd wrappers of the Triton backend (no math here)."""
from __future__ import annotations

import torch


def _full(grad, like):
    return None if grad is None else grad.to(like.dtype)


class RowGrad(torch.autograd.Function):
    """Attaches a recomputing backward to per-row values computed without autograd.

    ``backward_fn(row_grad) -> (d hidden, d weight)`` runs the backward kernels with the upstream
    per-row gradient; only O(N) statistics are kept between forward and backward.
    """

    @staticmethod
    def forward(ctx, value, hidden, weight, backward_fn):
        ctx.backward_fn = backward_fn
        ctx.like = (hidden, weight)
        return value.clone()

    @staticmethod
    def backward(ctx, row_grad):
        grad_h, grad_w = ctx.backward_fn(row_grad)
        hidden, weight = ctx.like
        return None, _full(grad_h, hidden), _full(grad_w, weight), None


class PrecomputedGradLoss(torch.autograd.Function):
    """A scalar whose gradients were formed during forward; backward only rescales them.

    The gradients are scaled in place and handed over (no second head-sized copy), so the graph
    can be back-propagated once; a second backward raises.
    """

    @staticmethod
    def forward(ctx, loss, hidden, weight, grad_hidden, grad_weight):
        ctx.grads = (grad_hidden, grad_weight)
        return loss.clone()

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError("weighted_kl (triton): the precomputed gradients were already used; "
                               "backward can run once per forward")
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None
        return None, grad_hidden.mul_(grad_loss), grad_weight.mul_(grad_loss), None, None


def attach(value, hidden, weight, backward_fn):
    """``value`` with a gradient path to (hidden, weight) when autograd needs one."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return RowGrad.apply(value, hidden, weight, backward_fn)
    return value
