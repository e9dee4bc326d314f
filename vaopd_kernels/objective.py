"""The VA-OPD and OPD reductions of per-token KL to a loss (backend independent).

Everything here is vectorised over packed rollouts: no Python loop over rollouts, and the
coefficients need no host synchronisation (the python-float metrics need one).
Inputs are assumed validated by ``api.py``.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from vaopd_kernels.results import Coefficients, ObjectiveResult


def rollout_index(cu_seqlens: torch.Tensor, num_rows: int) -> torch.Tensor:
    """[N] rollout id of every packed row."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths,
                                   output_size=num_rows)


def _segment_sum(values: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    return torch.zeros(num_segments, dtype=values.dtype, device=values.device).index_add_(0, index, values)


def prompt_groups(prompt_ids: torch.Tensor):
    """([R] dense group index of each rollout, number of distinct prompts as a 0-dim tensor).

    Sort-based rather than ``torch.unique`` so that nothing waits on the host (a GPU stays busy).
    """
    order = torch.sort(prompt_ids, stable=True).indices
    sorted_ids = prompt_ids[order]
    starts = torch.ones_like(sorted_ids, dtype=torch.long)
    starts[1:] = (sorted_ids[1:] != sorted_ids[:-1]).long()
    group_of_sorted = torch.cumsum(starts, 0) - 1
    group = torch.empty_like(group_of_sorted)
    group[order] = group_of_sorted
    return group, group_of_sorted[-1] + 1


def sibling_softmax_weights(rollout_mean_va: torch.Tensor, group: torch.Tensor,
                            temperature: float, eps: float) -> torch.Tensor:
    """w_r = softmax over siblings of (abar_r - mean) / (population std + eps) / temperature."""
    slots = group.numel()  # at most one group per rollout; unused slots are never read
    count = _segment_sum(torch.ones_like(rollout_mean_va), group, slots)
    mean = _segment_sum(rollout_mean_va, group, slots) / count
    centered = rollout_mean_va - mean[group]
    std = torch.sqrt(_segment_sum(centered * centered, group, slots) / count)
    score = centered / (std[group] + eps) / temperature
    group_max = torch.full_like(mean, -math.inf).scatter_reduce(0, group, score, reduce="amax")
    expd = torch.exp(score - group_max[group])
    return expd / _segment_sum(expd, group, slots)[group]


def top_fraction_mask(values: torch.Tensor, rollout: torch.Tensor, lengths: torch.Tensor,
                      high_fraction: float) -> torch.Tensor:
    """[N] bool: each rollout's ceil(f * T_r) largest values, ties going to the earlier token."""
    num_rows = values.numel()
    # Stable sorts: by value (descending) then by rollout keeps, inside each rollout, larger
    # values first and equal values in token order.
    by_value = torch.sort(values, descending=True, stable=True).indices
    order = by_value[torch.sort(rollout[by_value], stable=True).indices]
    starts = torch.cumsum(lengths, 0) - lengths
    rank = torch.empty(num_rows, dtype=torch.long, device=values.device)
    rank[order] = torch.arange(num_rows, device=values.device) - starts[rollout[order]]
    # ceil(f*T) in float64 with a tolerance, so 0.2 * 15 counts as 3 and not 4.
    k = torch.ceil(lengths.double() * high_fraction - 1e-9).long().clamp(1)
    return rank < k[rollout]


HIGH_SELECTIONS = ("va", "random")  # how each rollout's high group is chosen
ROLLOUT_WEIGHTINGS = ("va", "uniform")  # how sibling rollouts are weighted


def random_high_mask(rollout: torch.Tensor, lengths: torch.Tensor, high_fraction: float, seed: int) -> torch.Tensor:
    """[N] bool: ceil(f * T_r) tokens of each rollout drawn uniformly without replacement, a pure
    function of ``seed`` (the random-high ablation: the group's size without VA's choice)."""
    generator = torch.Generator(device=rollout.device).manual_seed(seed)
    keys = torch.rand(rollout.numel(), generator=generator, device=rollout.device, dtype=torch.float64)
    return top_fraction_mask(keys, rollout, lengths, high_fraction)


def uniform_sibling_weights(group: torch.Tensor) -> torch.Tensor:
    """w_r = 1 / (number of rollouts of r's prompt): VA-OPD without rollout reweighting."""
    count = _segment_sum(torch.ones_like(group, dtype=torch.float64), group, group.numel())
    return 1.0 / count[group]


def va_opd_coefficients(visual_advantage: torch.Tensor, cu_seqlens: torch.Tensor, prompt_ids: torch.Tensor, *,
                        high_fraction: float, high_weight: float, va_temperature: float, eps: float,
                        num_prompts: Optional[int], high_selection: str = "va", rollout_weighting: str = "va",
                        high_seed: Optional[int] = None) -> Coefficients:
    """The paper's coefficients: (1/P) w_r [lambda/|H_r| on H_r, (1-lambda)/|L_r| on L_r].

    Ablations (the paper's recipe is "va" for both): ``high_selection="random"`` draws H_r as
    ceil(f T_r) uniformly random tokens (seeded by ``high_seed``) while w_r still comes from VA;
    ``rollout_weighting="uniform"`` sets w_r = 1/K (siblings weighted equally)."""
    num_rows = visual_advantage.shape[0]
    num_rollouts = prompt_ids.numel()
    va = visual_advantage.detach().to(torch.float64)
    rollout = rollout_index(cu_seqlens, num_rows)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    rollout_mean_va = _segment_sum(va, rollout, num_rollouts) / lengths
    group, distinct_prompts = prompt_groups(prompt_ids)
    if rollout_weighting == "uniform":
        rollout_weight = uniform_sibling_weights(group)
    else:
        rollout_weight = sibling_softmax_weights(rollout_mean_va, group, va_temperature, eps)

    if high_selection == "random":
        high = random_high_mask(rollout, lengths, high_fraction, high_seed)
    else:
        high = top_fraction_mask(va, rollout, lengths, high_fraction)
    high_count = _segment_sum(high.double(), rollout, num_rollouts)
    low_count = lengths.double() - high_count
    # A one-token rollout has no low group: its high group takes the whole rollout weight.
    high_mass = torch.where(low_count > 0, torch.full_like(high_count, high_weight), torch.ones_like(high_count))
    group_coef = torch.where(high, high_mass[rollout] / high_count[rollout],
                             (1.0 - high_mass[rollout]) / low_count[rollout].clamp(min=1))
    token_weight = rollout_weight[rollout] * group_coef / (num_prompts or distinct_prompts)
    return Coefficients(token_weight, rollout_weight, high, va)


def opd_coefficients(cu_seqlens: torch.Tensor, num_rows: int, num_rollouts: Optional[int]) -> Coefficients:
    """Standard OPD: (1/R) sum_r mean_{n in r} KL_n."""
    rollout = rollout_index(cu_seqlens, num_rows)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).double()
    token_weight = 1.0 / ((num_rollouts or lengths.numel()) * lengths[rollout])
    high = torch.zeros(num_rows, dtype=torch.bool, device=cu_seqlens.device)
    return Coefficients(token_weight, torch.ones_like(lengths), high, None)


def reduce_kl(token_kl: torch.Tensor, coefficients: Coefficients, loss: Optional[torch.Tensor] = None,
              extra_metrics: Optional[Dict[str, torch.Tensor]] = None) -> ObjectiveResult:
    """The objective's result; ``loss`` is sum(token_weight * token_kl) unless already computed.
    ``extra_metrics`` (0-dim tensors) join the metrics, which reach Python in one host sync."""
    if loss is None:
        loss = (coefficients.token_weight.to(token_kl.dtype) * token_kl).sum()
    metrics = _metrics(token_kl.detach(), coefficients)
    metrics.update(extra_metrics or {})
    return ObjectiveResult(loss, coefficients.token_weight.float(), coefficients.rollout_weight.float(),
                           coefficients.high_mask, to_python(metrics))


def to_python(values: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """0-dim tensors on one device -> Python floats, with a single device-to-host copy."""
    if not values:
        return {}
    floats = torch.stack([v.detach().double().reshape(()) for v in values.values()]).tolist()
    return dict(zip(values, floats))


def _metrics(kl: torch.Tensor, coefficients: Coefficients) -> Dict[str, torch.Tensor]:
    """The metrics as 0-dim tensors; means over no token are NaN (0 / 0)."""
    kl = kl.double()
    metrics = {
        "kl_mean": kl.sum() / kl.numel(),
        "rollout_weight_min": coefficients.rollout_weight.min(),
        "rollout_weight_max": coefficients.rollout_weight.max(),
    }
    va, high = coefficients.visual_advantage, coefficients.high_mask
    if va is not None:
        va = va.double()
        num_high = high.sum().double()
        total_va, high_va = va.sum(), torch.where(high, va, 0.0).sum()
        metrics.update({
            "va_mean": total_va / va.numel(),
            "va_high_share": torch.where(total_va > 0, high_va / total_va, 0.0),
            "high_zero_va_fraction": (high & (va == 0)).sum().double() / num_high,
            "high_token_fraction": num_high / high.numel(),
            "kl_high_mean": torch.where(high, kl, 0.0).sum() / num_high,
            "kl_low_mean": torch.where(high, 0.0, kl).sum() / (high.numel() - num_high),
        })
    return metrics
