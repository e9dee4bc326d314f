"""Teacher scoring and the student loss.

The loss runs *inside* ``StudentLoss.forward``: FSDP2 (``engines.shard_fsdp2``) keeps the LM head
in the root unit, whose parameters are gathered for the duration of the root forward, so reading
``lm_head.weight`` there sees the full matrix. Anything else that reads the student's weights
(generation, evaluation) goes through ``StudentLoss.run_on_student``, registered as a root forward
method for the same reason. DeepSpeed ZeRO-3 gathers per submodule instead, which this does not
cover: ZeRO-3 is refused (engines._fill_deepspeed_config); use ZeRO-2.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

import vaopd_kernels

from .models import lm_head
from .rollout import Batch


@torch.no_grad()
def backbone_hidden(model, batch: Batch, degraded: bool = False, chunk: int = 0) -> torch.Tensor:
    """Packed [N, D] final hidden states of the response positions, in chunks of ``chunk`` rollouts.

    Runs the backbone only (``model.model``): the [R, S, V] logits tensor is never built.
    """
    rows = batch.input_ids.shape[0]
    chunk = chunk or rows
    parts = []
    for start in range(0, rows, chunk):
        sub = batch.rows(start, min(rows, start + chunk))
        hidden = model.model(**sub.model_inputs(degraded=degraded), use_cache=False).last_hidden_state
        parts.append(sub.response_hidden(hidden))
    return torch.cat(parts)


class Teacher(nn.Module):
    """The frozen teacher; ``forward`` is one scoring pass (``backbone_hidden``).

    A module of its own so that FSDP2 (``engines.shard_teacher``) wraps *this*: its root unit
    (embeddings, final norm, patch mergers, LM head) is then gathered for each pass, and the kernels
    read the head inside ``engines.gathered(teacher)``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def forward(self, batch: Batch, degraded: bool = False, chunk: int = 0) -> torch.Tensor:
        return backbone_hidden(self.model, batch, degraded=degraded, chunk=chunk)


class StudentLoss(nn.Module):
    """Wraps the student so that accelerate/DDP/FSDP wrap *this* module and the loss is its forward."""

    def __init__(self, model: nn.Module, *, vocab_size: int, method: str, high_fraction: float, high_weight: float,
                 va_temperature: float, backend: str, high_selection: str = "va", rollout_weighting: str = "va",
                 visual_signal: str = "sampled"):
        super().__init__()
        self.model = model
        self.vocab_size = vocab_size
        self.va = method == "va_opd"
        self.objective = dict(high_fraction=high_fraction, high_weight=high_weight, va_temperature=va_temperature,
                              high_selection=high_selection, rollout_weighting=rollout_weighting)
        self.visual_signal = visual_signal
        self.backend = backend

    def forward(self, batch: Batch, teacher_hidden: torch.Tensor, teacher_head: vaopd_kernels.LMHead,
                token_weight: torch.Tensor):
        """(loss, ``vaopd_kernels.WeightedKLResult``) for ``batch``'s rows: loss = sum(token_weight * KL).

        ``token_weight`` holds these rows' slice of the whole batch's coefficients
        (:meth:`coefficients`), so the losses of micro-batches sum to the whole batch's loss, and
        their gradients to its gradient.
        """
        hidden = self.model.model(**batch.model_inputs(), use_cache=False).last_hidden_state
        result = vaopd_kernels.weighted_kl(batch.response_hidden(hidden), lm_head(self.model), teacher_hidden,
                                           teacher_head, token_weight, targets=batch.targets(),
                                           vocab_size=self.vocab_size, backend=self.backend)
        return result.loss, result

    def run_on_student(self, fn, *args, **kwargs):
        """``fn(student, *args, **kwargs)`` with the student's full weights.

        Under FSDP2 this method is registered as a forward method of the root unit
        (``engines.shard_fsdp2``), so the root's parameters (embeddings, LM head, final norm) are
        gathered for the call, as in ``forward``; with the other engines it is a plain call.
        """
        return fn(self.model, *args, **kwargs)

    def coefficients(self, batch: Batch, teacher_hidden: torch.Tensor, teacher_hidden_degraded: Optional[torch.Tensor],
                     teacher_head: vaopd_kernels.LMHead, num_prompts: Optional[int], num_rollouts: Optional[int],
                     high_seed: Optional[int] = None) -> vaopd_kernels.Coefficients:
        """The whole batch's coefficients, before any student work: they depend on the teacher only
        (VA, grouping, rollout weights)."""
        if not self.va:
            return vaopd_kernels.opd_coefficients(batch.cu_seqlens(), num_rollouts=num_rollouts)
        va = vaopd_kernels.visual_advantage(teacher_hidden, teacher_hidden_degraded, teacher_head, batch.targets(),
                                            vocab_size=self.vocab_size, visual_signal=self.visual_signal,
                                            backend=self.backend)
        return vaopd_kernels.va_opd_coefficients(va, batch.cu_seqlens(), batch.prompt_ids, num_prompts=num_prompts,
                                                 backend=self.backend, high_seed=high_seed, **self.objective)

    @staticmethod
    def objective_result(parts: List[vaopd_kernels.WeightedKLResult], coefficients: vaopd_kernels.Coefficients):
        """The whole-batch objective (loss value and metrics) from its coefficients and the forward
        results of its rows, in order."""
        result = vaopd_kernels.objective_from_coefficients(torch.cat([p.kl for p in parts]), coefficients)
        # the metrics va_opd_loss adds, in one host sync
        means = torch.stack([torch.cat([getattr(p, name) for p in parts]).double().mean()
                             for name in ("student_entropy", "student_logprob")]).tolist()
        result.metrics.update(entropy_mean=means[0], student_logprob_mean=means[1])
        return result
