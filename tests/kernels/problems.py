"""Shared test inputs: fresh random problems and the same values in any dtype."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from hypothesis import strategies as st

from vaopd_kernels import testing


@dataclass
class Problem(testing.Inputs):
    """The shared problem plus the ``vocab_size`` to pass (None without head padding)."""
    vocab_size: Optional[int] = None

    def to(self, dtype: torch.dtype, requires_grad: bool = True, device=None) -> "Problem":
        """A copy of the same values in ``dtype``; student tensors are fresh grad leaves."""
        def conv(t, grad=False):
            return t.detach().to(device=device, dtype=dtype).requires_grad_(grad)
        return replace(
            self,
            student_hidden=conv(self.student_hidden, requires_grad),
            student_weight=conv(self.student_weight, requires_grad),
            teacher_hidden=conv(self.teacher_hidden),
            teacher_weight=conv(self.teacher_weight),
            teacher_hidden_degraded=conv(self.teacher_hidden_degraded),
            targets=self.targets.to(device),
        )


def make_problem(num_rows=9, student_dim=12, teacher_dim=20, vocab=37, head_padding=0, dtype=torch.float32,
                 logit_scale=1.0, seed=None) -> Problem:
    """vaopd_kernels.testing.make_inputs with logits of roughly ``logit_scale`` standard deviation, drawn
    fresh each call (unless ``seed``) in ``dtype``. ``head_padding`` extra LM-head rows model padded
    vocabularies (they must never matter)."""
    seed = seed if seed is not None else int(torch.randint(0, 2**31, (1,)))
    shape = testing.Shape(num_rows, student_dim, teacher_dim, vocab, dtype=str(dtype).removeprefix("torch."),
                          seed=seed)
    inputs = testing.make_inputs(shape, logit_std=logit_scale, head_padding=(head_padding, head_padding))
    return Problem(**vars(inputs), vocab_size=vocab if head_padding else None)


@st.composite
def rollout_batches(draw, va_values=(0.0, 0.0, 0.1, 0.25, 1.0, 3.5)):
    """(kl, va, cu_seqlens, prompt_ids, high_fraction, high_weight): shuffled siblings, few distinct VA values."""
    num_prompts = draw(st.integers(1, 4))
    lengths, prompts = [], []
    for pid in range(num_prompts):
        for _ in range(draw(st.integers(1, 4))):
            lengths.append(draw(st.integers(1, 12)))
            prompts.append(pid * 7 + 1)
    prompts = draw(st.permutations(prompts))  # siblings need not be adjacent nor sorted
    n = sum(lengths)
    # Few distinct VA values so ties are common.
    va = draw(st.lists(st.sampled_from(va_values), min_size=n, max_size=n))
    kl = draw(st.lists(st.floats(0, 10, allow_nan=False), min_size=n, max_size=n))
    f = draw(st.sampled_from([0.2, 0.1, 0.5, 1.0, 0.33]))
    lam = draw(st.sampled_from([0.5, 0.0, 1.0, 0.8]))
    cu = [0]
    for length in lengths:
        cu.append(cu[-1] + length)
    return (torch.tensor(kl, dtype=torch.float64), torch.tensor(va, dtype=torch.float64), torch.tensor(cu),
            torch.tensor(prompts), f, lam)
