"""The "torch" backend: exact, tiled over (token rows x vocabulary), runs on any device.

Logits exist one tile at a time (``row_block x vocab_tile`` per view) and are folded into per-row
running sums (``OnlineSoftmax``), the one-pass scheme the fused GPU kernels use, so no [rows, V]
array ever exists and the GEMMs stay large (a few hundred rows by thousands of vocabulary
entries). The tile sizes come from a memory budget (``KernelOptions.chunk_budget_bytes`` and
``vocab_tile``; device-dependent defaults).

The two primitives (``backends/base.py``), each a sweep over all tiles:
1. ``scan``: log-normalisers, the divergence, entropy and target log-probs of every view (then
   pass 2 when given row weights);
2. ``gradients``: recompute the student (and teacher) tiles, form dlogits from the row statistics,
   accumulate d(hidden) and d(weight).
The loss scores all three views in one scan (``FUSES_VIEWS``): on a CPU a separate teacher pass
would cost a GEMM sweep.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch

from vaopd_kernels.backends.base import IDENTITY, Divergence, LogitTransform, RowStats, compute_dtype

_MIB = 1 << 20
# Small tiles win on CPUs: the elementwise passes then run from cache, and 256 x 2048 GEMMs are
# still efficient (measured: 16 MiB / 2048 beat 64 MiB / 8192 by ~20% on a 2-core Xeon). GPUs
# want large tiles to amortise launches.
_DEFAULTS = {"cpu": (16 * _MIB, 2048), "gpu": (512 * _MIB, 16384)}
# Live [row_block, vocab_tile] arrays at once: the views' logits plus exp/product temporaries.
_LIVE_TILE_ARRAYS = 8
FUSES_VIEWS = True


@dataclass
class Head:
    """An LM head (its first ``vocab_size`` rows) and the hidden states that read it."""

    hidden: torch.Tensor  # [N, D]
    weight: torch.Tensor  # [V_head, D]
    dtype: torch.dtype  # compute dtype
    transform: LogitTransform = IDENTITY

    def logits(self, rows: slice, cols: slice, temperature: float) -> torch.Tensor:
        # Converting the weight tile here (not the whole head up front) keeps bf16 inputs from
        # costing an fp32 copy of the head.
        z = self.transform.apply(self.hidden[rows].to(self.dtype) @ self.weight[cols].to(self.dtype).T, cols)
        return z / temperature if temperature != 1.0 else z


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a * b per row, without materialising the product (a batched BLAS dot)."""
    return torch.einsum("rv,rv->r", a, b)


class OnlineSoftmax:
    """Per-row running max ``m``, ``l = sum e^(z - m)`` and extra sums rescaled with it whenever
    the max moves: ``sum e^(z - m) f`` for each weighted tile f, and optionally
    ``sum e^(other - m)`` for another view's logits (the normaliser gap, see ``gap_to``); and the
    target logits picked so far (``pick``)."""

    def __init__(self, rows: int, num_extra: int, like: torch.Tensor):
        self.m = torch.full((rows,), -math.inf, dtype=like.dtype, device=like.device)
        self.l = torch.zeros(rows, dtype=like.dtype, device=like.device)
        self.extra = torch.zeros(num_extra, rows, dtype=like.dtype, device=like.device)
        self.target = torch.zeros(rows, dtype=like.dtype, device=like.device)

    def update(self, z: torch.Tensor, *weighted: torch.Tensor, other: Optional[torch.Tensor] = None) -> None:
        m_new = torch.maximum(self.m, z.amax(dim=-1))
        scale = torch.exp(self.m - m_new)
        e = (z - m_new[:, None]).exp_()
        self.l = self.l * scale + e.sum(-1)
        sums = [row_dot(e, f) for f in weighted]
        if other is not None:
            # Overflows to inf only where the other view's logits far exceed these (gap_to then
            # falls back to the plain difference of log-normalisers).
            sums.append((other - m_new[:, None]).exp_().sum(-1))
        if sums:
            self.extra = self.extra * scale + torch.stack(sums)
        self.m = m_new

    @property
    def lse(self) -> torch.Tensor:
        return self.m + torch.log(self.l)

    def mean(self, i: int) -> torch.Tensor:
        """E_p[f] for the i-th weighted sum."""
        return self.extra[i] / self.l

    def gap_to(self, lse_other: torch.Tensor, i: int) -> torch.Tensor:
        """lse_other - lse from sums sharing one shift: log(sum e^(other-m) / sum e^(z-m)). The plain
        difference of two ~log(V)-sized normalisers would lose ~1e-6 in fp32, exactly where the
        views are close and KL is small."""
        shared = torch.log(self.extra[i] / self.l)
        return torch.where(torch.isfinite(shared), shared, lse_other - self.lse)

    def pick(self, z: torch.Tensor, targets: torch.Tensor, cols: slice) -> None:
        """Fill in the logits of the targets that fall inside this vocab tile."""
        inside = (targets >= cols.start) & (targets < cols.stop)
        local = (targets - cols.start).clamp(0, z.shape[1] - 1)
        self.target = torch.where(inside, z.gather(1, local[:, None]).squeeze(1), self.target)


def _tiling(num_rows: int, vocab_size: int, dtype: torch.dtype, device: torch.device, options):
    """(row slice, its vocabulary tile slices) for every row block, sized by the memory budget."""
    default_budget, default_tile = _DEFAULTS["cpu" if device.type == "cpu" else "gpu"]
    budget = options.chunk_budget_bytes or default_budget
    tile = min(vocab_size, options.vocab_tile or default_tile)
    per_row = tile * torch.finfo(dtype).bits // 8 * _LIVE_TILE_ARRAYS
    row_block = max(1, min(num_rows, budget // per_row))
    for r0 in range(0, num_rows, row_block):
        rows = slice(r0, min(r0 + row_block, num_rows))
        yield rows, (slice(c0, min(c0 + tile, vocab_size)) for c0 in range(0, vocab_size, tile))


@dataclass
class _Stats(RowStats):
    """Pass-1 results, [N] each (None when not asked for): a scan's, plus what pass 2 reads."""

    gap: Optional[torch.Tensor] = None  # accurate lse_t - lse_s (reverse) / lse_s - lse_t (forward)
    kl_s: Optional[torch.Tensor] = None  # KL(p_s || m), JSD only
    lse_s: Optional[torch.Tensor] = None
    lse_t: Optional[torch.Tensor] = None


@torch.no_grad()
def _statistics(student, teacher, degraded, targets, *, vocab_size, options, temperature=1.0, divergence=None,
                beta=0.5, visual_divergence=False):
    """Pass 1: one sweep over the tiles of every view present."""
    any_head = student or teacher
    num_rows, dtype, device = any_head.hidden.shape[0], any_head.dtype, any_head.hidden.device
    new = lambda: torch.empty(num_rows, dtype=dtype, device=device)  # noqa: E731
    out = _Stats()
    if student:
        out.lse_s, out.student_entropy = new(), new()
    if teacher:
        out.lse_t = new()
    if divergence is not None:
        out.kl, out.gap = new(), new()
    reverse, forward = divergence == Divergence.REVERSE, divergence == Divergence.FORWARD
    # KL(p_t || p_d) is the forward KL's sums with the degraded view in the student's place
    visual = visual_divergence and degraded is not None
    if visual and forward:
        raise NotImplementedError("torch backend: the visual divergence next to the forward KL (the teacher's "
                                  "sums would need two other views)")
    if visual:
        out.visual_divergence = new()
    like = torch.empty(0, dtype=dtype, device=device)
    if targets is not None:  # allocated for N = 0 too
        out.student_logprob, out.teacher_logprob, out.degraded_logprob = (
            new() if view else None for view in (student, teacher, degraded))
    for rows, col_tiles in _tiling(num_rows, vocab_size, dtype, device, options):
        n = rows.stop - rows.start
        # student extras: [sum e z_s, (reverse) sum e (z_s - z_t), gap sum]; teacher (forward): [sum e (z_t - z_s), gap]
        acc_s = OnlineSoftmax(n, 3 if reverse else 1, like) if student else None
        acc_t = OnlineSoftmax(n, 2 if forward or visual else 0, like) if teacher else None
        acc_d = OnlineSoftmax(n, 0, like) if degraded else None
        y = targets[rows] if targets is not None else None
        for cols in col_tiles:
            z_s = student.logits(rows, cols, temperature) if student else None
            z_t = teacher.logits(rows, cols, temperature) if teacher else None
            z_d = degraded.logits(rows, cols, temperature) if degraded else None
            if student:
                if reverse:
                    acc_s.update(z_s, z_s, z_s - z_t, other=z_t)
                else:
                    acc_s.update(z_s, z_s)
            if teacher:
                if forward:
                    acc_t.update(z_t, z_t - z_s, other=z_s)
                elif visual:
                    acc_t.update(z_t, z_t - z_d, other=z_d)
                else:
                    acc_t.update(z_t)
            if degraded:
                acc_d.update(z_d)
            if y is not None:
                for acc, z in ((acc_s, z_s), (acc_t, z_t), (acc_d, z_d)):
                    if acc is not None:
                        acc.pick(z, y, cols)
        if student:
            out.lse_s[rows] = acc_s.lse
            out.student_entropy[rows] = acc_s.lse - acc_s.mean(0)
        if teacher:
            out.lse_t[rows] = acc_t.lse
        if reverse:  # KL(p_s || p_t) = E_ps[z_s - z_t] + (lse_t - lse_s)
            out.gap[rows] = acc_s.gap_to(acc_t.lse, 2)
            out.kl[rows] = acc_s.mean(1) + out.gap[rows]
        if forward:  # KL(p_t || p_s) = E_pt[z_t - z_s] + (lse_s - lse_t)
            out.gap[rows] = acc_t.gap_to(acc_s.lse, 1)
            out.kl[rows] = acc_t.mean(0) + out.gap[rows]
        if visual:  # KL(p_t || p_d) = E_pt[z_t - z_d] + (lse_d - lse_t)
            out.visual_divergence[rows] = acc_t.mean(0) + acc_t.gap_to(acc_d.lse, 1)
        if y is not None:
            for acc, logprob in ((acc_s, out.student_logprob), (acc_t, out.teacher_logprob),
                                 (acc_d, out.degraded_logprob)):
                if acc is not None:
                    logprob[rows] = acc.target - acc.lse
    if divergence == Divergence.JSD:
        _jsd_pass(student, teacher, out, vocab_size=vocab_size, temperature=temperature, beta=beta, options=options)
    return out


def _log_mixture(logp_s, logp_t, beta):
    return torch.logaddexp(logp_t + math.log(beta), logp_s + math.log(1.0 - beta))


def _jsd_pass(student, teacher, out, *, vocab_size, temperature, beta, options):
    """JSD needs both log-normalisers before its sums: a second sweep."""
    kl_s, kl_t = torch.zeros_like(out.lse_s), torch.zeros_like(out.lse_s)
    for rows, col_tiles in _tiling(out.lse_s.shape[0], vocab_size, student.dtype, out.lse_s.device, options):
        for cols in col_tiles:
            logp_s = student.logits(rows, cols, temperature) - out.lse_s[rows, None]
            logp_t = teacher.logits(rows, cols, temperature) - out.lse_t[rows, None]
            logm = _log_mixture(logp_s, logp_t, beta)
            kl_s[rows] += row_dot(logp_s.exp(), logp_s - logm)
            kl_t[rows] += row_dot(logp_t.exp(), logp_t - logm)
    out.kl_s = kl_s
    out.kl = beta * kl_t + (1.0 - beta) * kl_s


@torch.no_grad()
def _gradients(student, teacher, stats: _Stats, row_grad, *, divergence, vocab_size, options, temperature,
               beta, targets):
    """Pass 2: d(sum_n row_grad_n * q_n) w.r.t. student hidden [N, D] and head rows [V, D], where q is
    ``divergence`` or, when None, the target log-prob."""
    dtype = student.dtype
    hidden = student.hidden
    grad_hidden = torch.zeros(hidden.shape[0], hidden.shape[1], dtype=dtype, device=hidden.device)
    grad_weight = torch.zeros(vocab_size, hidden.shape[1], dtype=dtype, device=hidden.device)
    transform = student.transform
    grad_bias = torch.zeros(vocab_size, dtype=dtype, device=hidden.device) if transform.bias is not None else None
    for rows, col_tiles in _tiling(hidden.shape[0], vocab_size, dtype, hidden.device, options):
        h = hidden[rows].to(dtype)
        scale = (row_grad[rows].to(dtype) / temperature)[:, None]
        lse_s = stats.lse_s[rows, None]
        for cols in col_tiles:
            z_s = student.logits(rows, cols, temperature)
            # the transformed logits, before the in-place arithmetic below reuses their tile
            z_capped = z_s * temperature if transform.softcap is not None else None
            p_s = (z_s - lse_s).exp_()
            # In-place arithmetic on the fresh logit tiles: each elementwise pass over a tile costs
            # about as much as the tile's share of a GEMM on a CPU.
            if divergence == Divergence.REVERSE:  # p_s (log p_s - log p_t - KL)
                g = z_s.sub_(teacher.logits(rows, cols, temperature))
                g.add_((stats.gap[rows] - stats.kl[rows])[:, None]).mul_(p_s)
            elif divergence == Divergence.FORWARD:  # p_s - p_t
                g = p_s.sub_((teacher.logits(rows, cols, temperature) - stats.lse_t[rows, None]).exp_())
            elif divergence == Divergence.JSD:  # (1 - beta) p_s (log p_s - log m - KL(p_s || m))
                logp_s = z_s.sub_(lse_s)
                logp_t = teacher.logits(rows, cols, temperature).sub_(stats.lse_t[rows, None])
                g = (logp_s - _log_mixture(logp_s, logp_t, beta)).sub_(stats.kl_s[rows, None]).mul_(p_s)
                g.mul_(1.0 - beta)
            else:  # log-prob: onehot(y) - p_s
                g = p_s.neg_()
                y = targets[rows]
                inside = (y >= cols.start) & (y < cols.stop)
                local = (y - cols.start).clamp(0, g.shape[1] - 1)
                g.scatter_add_(1, local[:, None], inside.to(dtype)[:, None])
            transform.chain_(g.mul_(scale), z_capped)
            grad_hidden[rows].addmm_(g, student.weight[cols].to(dtype))
            grad_weight[cols].addmm_(g.T, h)
            if grad_bias is not None:
                grad_bias[cols] += g.sum(0)
    return grad_hidden, grad_weight, grad_bias


def _detached(transform: LogitTransform) -> LogitTransform:
    return replace(transform, bias=transform.bias.detach()) if transform.bias is not None else transform


def scan(views, *, divergence, beta, row_weight, options):
    dtype = compute_dtype(*views.floats)
    student = Head(*(t.detach() for t in views.student), dtype, _detached(views.student_transform)) \
        if views.student else None
    teacher = Head(*(t.detach() for t in views.teacher), dtype, views.teacher_transform) if views.teacher else None
    degraded = Head(views.degraded.detach(), views.teacher[1].detach(), dtype, views.teacher_transform) \
        if views.degraded is not None else None
    common = dict(vocab_size=views.vocab_size, temperature=views.temperature, options=options)
    stats = _statistics(student, teacher, degraded, views.targets, divergence=divergence, beta=beta,
                        visual_divergence=views.visual_divergence, **common)
    saved = dict(student=student, teacher=teacher, stats=stats, divergence=divergence, beta=beta,
                 targets=views.targets, **common)
    out = replace(stats, saved=saved)  # a copy: saved holds the statistics, not the other way round
    if row_weight is not None:
        out.grads = gradients(saved, row_weight, options=options)
    return out


def gradients(saved, row_weight, *, options):
    return _gradients(row_grad=row_weight, **saved)
