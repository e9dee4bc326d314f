"""Divergence: a non-finite loss or gradient never reaches the optimizer, a non-finite state is never saved.

A step whose loss or gradient norm is nan/inf on any rank is skipped on every rank (the flag is
summed over ranks, so all take the same decision) and counted; ``max_skipped_steps`` such steps in
a row stop the run. Weights (or optimizer moments) that became non-finite, and a sampler that meets
non-finite probabilities, are the same divergence and raise the same error.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Optional

import torch

from .errors import DivergenceError

_ADVICE = "lower learning_rate or max_grad_norm, check the data, or resume from an earlier checkpoint"


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded (DTensor) parameter, or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _nonfinite_count(tensors: Iterable[Optional[torch.Tensor]], device) -> torch.Tensor:
    flags = [(~torch.isfinite(_local(t).detach())).any() for t in tensors if t is not None and t.numel()]
    if not flags:
        return torch.zeros((), device=device)
    return torch.stack([f.to(device) for f in flags]).sum().float()


class DivergenceGuard:
    def __init__(self, accelerator, max_skipped_steps: int, skipped_steps: int = 0):
        self.acc = accelerator
        self.max_skipped_steps = max_skipped_steps
        self.skipped_steps = skipped_steps  # over the whole run (restored on resume)
        self.in_a_row = 0

    def _anywhere(self, tensors) -> bool:
        """True when some tensor holds a nan/inf on some rank."""
        return float(self.acc.reduce(_nonfinite_count(tensors, self.acc.device), "sum")) > 0

    def step_is_finite(self, loss: torch.Tensor, grad_norm: Optional[torch.Tensor]) -> bool:
        return not self._anywhere([loss, None if grad_norm is None else torch.as_tensor(grad_norm)])

    def record(self, step: int, finite: bool) -> None:
        """Count a skipped step; raise once ``max_skipped_steps`` were skipped in a row."""
        if finite:
            self.in_a_row = 0
            return
        self.skipped_steps += 1
        self.in_a_row += 1
        if self.in_a_row >= self.max_skipped_steps:
            raise DivergenceError(f"training diverged at step {step}: the loss or gradient was non-finite (nan/inf) "
                                  f"in {self.in_a_row} steps in a row (max_skipped_steps={self.max_skipped_steps}); "
                                  + _ADVICE)

    def check_state(self, step: int, module: torch.nn.Module, optimizer=None) -> None:
        """Raise when a weight (or an optimizer moment) is non-finite: such a state must never be used or saved."""
        tensors = list(module.parameters())
        if optimizer is not None:
            tensors += [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        if self._anywhere(tensors):
            raise DivergenceError(f"training diverged at step {step}: the model weights or optimizer state became "
                                  f"non-finite (nan/inf); nothing was saved; " + _ADVICE)

    @contextmanager
    def sampling(self, step: int):
        """Turn the sampler's 'probability tensor contains either inf, nan or element < 0' into the divergence."""
        try:
            yield
        except RuntimeError as err:
            text = str(err)
            if "inf" in text and "nan" in text:
                raise DivergenceError(f"training diverged at step {step}: generation met non-finite probabilities "
                                      f"({text.strip()}); " + _ADVICE) from err
            raise
