"""Test inputs and the error measure shared by the tests and the benchmarks.

``make_inputs`` draws a deterministic packed problem (hidden states, LM heads with optional padding
rows, a degraded teacher view, targets, K rollouts per prompt) for a ``Shape``; ``near_teacher``
and ``peaked`` turn it into the hard regimes (KL ~ 0, confident rows); ``rel_err`` is the one
relative error every comparison uses.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Dict, Optional

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}

ROLLOUTS_PER_PROMPT = 4  # K in the paper


@dataclass(frozen=True)
class Shape:
    num_rows: int          # N response tokens (packed)
    student_dim: int       # Ds
    teacher_dim: int       # Dt
    vocab: int             # V
    dtype: str = "float32"
    seed: int = 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def label(self) -> str:
        return f"N={self.num_rows} Ds={self.student_dim} Dt={self.teacher_dim} V={self.vocab} {self.dtype}"

    def as_dict(self) -> Dict:
        return asdict(self)


def rollout_layout(num_rows: int, seed: int = 0, mean_len: int | None = None):
    """(cu_seqlens, prompt_ids) of a packed batch: K=4 rollouts per prompt, uneven lengths.

    Mean rollout length 128 (16 prompts x 4 rollouts at N = 8192, the paper's batch), shorter
    for small N so there are always >= 8 prompts when N allows (and the last prompt, the
    correctness check's slice, stays small).
    """
    if mean_len is None:
        mean_len = max(1, min(128, num_rows // 32))
    num_rollouts = max(1, num_rows // mean_len)
    num_rollouts = max(ROLLOUTS_PER_PROMPT, num_rollouts - num_rollouts % ROLLOUTS_PER_PROMPT)
    num_rollouts = min(num_rollouts, num_rows)
    gen = torch.Generator().manual_seed(1000 + seed)
    raw = 0.5 + torch.rand(num_rollouts, generator=gen, dtype=torch.float64)  # lengths in [0.5, 1.5) x mean
    lengths = torch.clamp((raw / raw.sum() * num_rows).floor().long(), min=1)
    lengths[-1] += num_rows - int(lengths.sum())
    while int(lengths[-1]) < 1:  # only for pathological tiny N
        i = int(torch.argmax(lengths))
        lengths[i] -= 1
        lengths[-1] += 1
    cu = torch.zeros(num_rollouts + 1, dtype=torch.long)
    cu[1:] = torch.cumsum(lengths, 0)
    prompt_ids = torch.arange(num_rollouts) // ROLLOUTS_PER_PROMPT
    return cu, prompt_ids


@dataclass
class Inputs:
    student_hidden: torch.Tensor   # [N, Ds] leaf, requires grad
    student_weight: torch.Tensor   # [V, Ds] leaf, requires grad
    teacher_hidden: torch.Tensor   # [N, Dt]
    teacher_weight: torch.Tensor   # [V, Dt]
    teacher_hidden_degraded: torch.Tensor  # [N, Dt] (the pixelated-image pass)
    targets: torch.Tensor          # [N] int64
    cu_seqlens: torch.Tensor       # [R + 1] int64
    prompt_ids: torch.Tensor       # [R] int64

    @property
    def kl_args(self):
        """(student hidden, student head, teacher hidden, teacher head): the first four arguments of the ops."""
        return (self.student_hidden, self.student_weight, self.teacher_hidden, self.teacher_weight)

    @property
    def num_prompts(self) -> int:
        return int(torch.unique(self.prompt_ids).numel())

    def zero_grad(self) -> None:
        self.student_hidden.grad = None
        self.student_weight.grad = None


def make_inputs(shape: Shape, device: str | torch.device = "cpu", logit_std: float = 2.0,
                head_padding: tuple[int, int] = (0, 0), degraded_noise: float = 0.5) -> Inputs:
    """Deterministic random inputs generated directly in the target dtype and device (no
    transient float64 copies, so a process's memory baseline is just the inputs).

    Logits have about ``logit_std`` standard deviation; the degraded teacher view is the
    original plus ``degraded_noise`` noise, so the visual advantage has a realistic mix of zero and
    positive values. ``head_padding`` (student, teacher) extra LM-head rows model padded
    vocabularies: logits past ``shape.vocab`` must never matter.
    """
    device = torch.device(device)
    dtype = shape.torch_dtype
    gen = torch.Generator(device=device).manual_seed(shape.seed)
    n, ds, dt, v = shape.num_rows, shape.student_dim, shape.teacher_dim, shape.vocab

    def randn(*size, scale=1.0):
        t = torch.randn(*size, generator=gen, device=device, dtype=dtype)
        return t.mul_(scale) if scale != 1.0 else t

    sh = randn(n, ds)
    sw = randn(v + head_padding[0], ds, scale=logit_std / ds ** 0.5)
    th = randn(n, dt)
    tw = randn(v + head_padding[1], dt, scale=logit_std / dt ** 0.5)
    thd = randn(n, dt, scale=degraded_noise).add_(th)
    targets = torch.randint(0, v, (n,), generator=gen, device=device)
    cu, pid = rollout_layout(n, seed=shape.seed)
    return Inputs(sh.requires_grad_(), sw.requires_grad_(), th, tw, thd, targets, cu.to(device), pid.to(device))


def near_teacher(inputs: Inputs, noise: float = 1e-3, degraded_noise: float = 0.5, seed: int = 7) -> Inputs:
    """The same student with a teacher that is the student plus ``noise`` (hidden states and the
    shared head rows; extra teacher padding rows stay random): KL ~ noise^2, the regime where a
    naive lse difference loses all precision. The degraded view is redrawn around the new teacher."""
    sh, sw, tw = inputs.student_hidden.detach(), inputs.student_weight.detach(), inputs.teacher_weight
    gen = torch.Generator(device=sh.device).manual_seed(seed)

    def randn(*size):
        return torch.randn(*size, generator=gen, device=sh.device, dtype=sh.dtype)

    rows = min(sw.shape[0], tw.shape[0])
    th = sh + noise * randn(*sh.shape)
    tw = torch.cat([sw[:rows] + noise * randn(rows, sw.shape[1]), randn(tw.shape[0] - rows, sw.shape[1])])
    thd = th + degraded_noise * randn(*sh.shape)
    return replace(inputs, teacher_hidden=th, teacher_weight=tw, teacher_hidden_degraded=thd)


def peaked(inputs: Inputs, margin: float = 16.0, uncertain_share: float = 0.0, uncertain_margin: float = 16.0,
           seed: int = 5) -> Inputs:
    """The same problem with confident rows: every hidden state moved toward its target's head row
    so that the target's logit rises by ``margin`` (16: p_target ~ 0.95 against the random inputs'
    near-uniform rows; 24: near certain). ``uncertain_share`` of the rows, spread at random, get
    ``uncertain_margin`` instead (rollouts mix certain and uncertain tokens). New tensors; the
    given inputs are untouched."""
    device = inputs.targets.device
    n = inputs.targets.shape[0]
    gen = torch.Generator(device=device).manual_seed(seed)
    uncertain = torch.rand(n, 1, generator=gen, device=device) < uncertain_share
    margins = torch.where(uncertain, uncertain_margin, margin)

    def point(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        w = weight.detach()[inputs.targets].float()
        return (hidden.detach().float() + margins * w / (w * w).sum(1, keepdim=True)).to(hidden.dtype)

    return Inputs(point(inputs.student_hidden, inputs.student_weight).requires_grad_(),
                  inputs.student_weight.detach().clone().requires_grad_(),
                  point(inputs.teacher_hidden, inputs.teacher_weight), inputs.teacher_weight,
                  point(inputs.teacher_hidden_degraded, inputs.teacher_weight), inputs.targets,
                  inputs.cu_seqlens, inputs.prompt_ids)


def rel_err(out: Optional[torch.Tensor], ref: torch.Tensor, norm: str = "fro", floor: float = 1e-30) -> Optional[float]:
    """Relative error ``||out - ref|| / max(||ref||, floor * ||ones||)`` in float64, on ``ref``'s device.

    ``norm``: "fro" (root of the sum of squares) or "max" (largest absolute value). ``floor`` is a
    per-element absolute scale, so refs near zero are judged in absolute terms. A missing output
    gives None; a wrong shape or any non-finite value counts as infinitely wrong.
    """
    if out is None:
        return None
    ref = ref.detach().double()
    out = out.detach().to(device=ref.device, dtype=torch.float64)
    if out.shape != ref.shape or not bool(torch.isfinite(out).all()):
        return float("inf")
    if norm not in ("fro", "max"):
        raise ValueError(f"norm must be 'fro' or 'max', got {norm!r}")
    if ref.numel() == 0:
        return 0.0

    def size(t: torch.Tensor) -> float:
        return float(t.norm() if norm == "fro" else t.abs().max())

    unit = ref.numel() ** 0.5 if norm == "fro" else 1.0
    return size(out - ref) / max(size(ref), floor * unit)
