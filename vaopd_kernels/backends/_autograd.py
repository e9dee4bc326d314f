"""Autograd plumbing (no math): outputs whose backward is a backend's gradient pass.

Both wrappers run that backward with autocast off (a caller's ``torch.autocast`` never changes
the backends' fp32 accumulation) and save the tensors it reads, so that changing one in place
between forward and backward raises, as for torch's own operations.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional, Tuple

import torch

from vaopd_kernels.backends.base import Grads


def no_autocast(device: torch.device):
    """Autocast off on ``device``'s type (a no-op context where autocast does not apply)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _padded(grad: torch.Tensor, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """``grad`` in ``dtype`` with zero rows for LM-head padding rows >= V (they never enter a softmax)."""
    if grad.shape[0] != rows:
        full = grad.new_zeros(rows, *grad.shape[1:], dtype=dtype)
        full[: grad.shape[0]] = grad
        grad = full
    return grad.to(dtype)


def _grads(ctx, grad_hidden: torch.Tensor, grad_weight: torch.Tensor, grad_bias: Optional[torch.Tensor]):
    """In the inputs' dtypes, the head's and bias's padded to the head's rows."""
    grad_bias = _padded(grad_bias, ctx.head_rows, ctx.dtypes[2]) if ctx.dtypes[2] is not None else None
    return grad_hidden.to(ctx.dtypes[0]), _padded(grad_weight, ctx.head_rows, ctx.dtypes[1]), grad_bias


class _BackendGrad(torch.autograd.Function):
    """``value`` whose backward is ``backward_fn(grad) -> (d hidden, d weight)``, or, for a scalar
    loss whose gradients ``grads`` were formed during forward, those rescaled by ``grad``.

    The first backward scales ``grads`` in place and hands them over (no second head-sized copy); a
    repeated backward (retain_graph, gradcheck) gets them from ``backward_fn``.
    """

    @staticmethod
    def forward(ctx, value, hidden, weight, bias, backward_fn, grads, recomputed_from):
        ctx.backward_fn, ctx.grads = backward_fn, grads
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.head_rows, ctx.device = weight.shape[0], hidden.device
        ctx.save_for_backward(hidden, weight, *([bias] if bias is not None else []), *recomputed_from)
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.saved_tensors  # noqa: B018  (raises if an input was changed in place since forward)
        if ctx.grads is not None:
            grads, ctx.grads = _scaled(ctx.grads, grad), None
        else:
            with no_autocast(ctx.device):
                grads = ctx.backward_fn(grad)
        return None, *_grads(ctx, *grads), None, None, None


def _scaled(grads: Grads, grad: torch.Tensor) -> Grads:
    return tuple(g.mul_(grad) if g is not None else None for g in grads)


def wants_grad(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> bool:
    return torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad or
                                        (bias is not None and bias.requires_grad))


def attach(value: torch.Tensor, hidden, weight, bias, backward_fn: Callable[[torch.Tensor], Grads],
           recomputed_from: Tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """``value`` with a gradient path to (hidden, weight, bias or None) when autograd needs one;
    ``backward_fn`` reads them and ``recomputed_from`` (e.g. the teacher's tensors)."""
    if not wants_grad(hidden, weight, bias):
        return value
    return _BackendGrad.apply(value, hidden, weight, bias, backward_fn, None, recomputed_from)


def precomputed_loss(loss: torch.Tensor, hidden, weight, bias, grads: Optional[Grads],
                     recompute: Callable[[], Grads], recomputed_from: Tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """``loss`` whose gradients ``grads`` were already formed (None: no gradient wanted)."""
    if grads is None:
        return loss
    rescaled = lambda grad: _scaled(recompute(), grad)  # noqa: E731
    return _BackendGrad.apply(loss, hidden, weight, bias, rescaled, grads, recomputed_from)
