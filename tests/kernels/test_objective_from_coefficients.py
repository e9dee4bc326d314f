"""objective_from_coefficients, the trainer's path (coefficients before the student pass, the loss
and metrics from the collected KL afterwards), against the per-rollout loops: the paper's recipe,
both ablations and OPD, to float64 rounding."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

import vaopd_kernels as vk
from problems import rollout_batches
from test_objective import loop_oracle
from test_objective_ablations import ablation_oracle


def opd_oracle(kl, cu):
    """Mean over rollouts of each rollout's mean KL, one rollout at a time."""
    kl, cu = kl.tolist(), cu.tolist()
    means = [sum(kl[cu[r]:cu[r + 1]]) / (cu[r + 1] - cu[r]) for r in range(len(cu) - 1)]
    return sum(means) / len(means)


@pytest.mark.parametrize("ablation", [{}, {"rollout_weighting": "uniform"},
                                      {"high_selection": "random", "high_seed": 3}])
@settings(max_examples=60, deadline=None)
@given(rollout_batches())
def test_reduction_of_va_opd_coefficients_matches_loop_oracle(ablation, batch):
    kl, va, cu, prompts, f, lam = batch
    coefficients = vk.va_opd_coefficients(va, cu, prompts, high_fraction=f, high_weight=lam, **ablation)
    res = vk.objective_from_coefficients(kl, coefficients)
    high = coefficients.high_mask.tolist()
    if "high_selection" not in ablation:
        assert high == loop_oracle(kl, va, cu, prompts, f=f, lam=lam)[2]  # VA's top group
    expected, weights = ablation_oracle(kl, va, cu, prompts, high, f=f, lam=lam,
                                        uniform="rollout_weighting" in ablation)
    # float64 coefficients: float32 ones would miss these by ~1e-7 relative
    assert coefficients.token_weight.dtype == coefficients.rollout_weight.dtype == torch.float64
    assert coefficients.rollout_weight.tolist() == pytest.approx(weights, rel=1e-9, abs=1e-12)
    assert res.loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert res.metrics["kl_mean"] == pytest.approx(kl.mean().item(), rel=1e-12)
    assert res.metrics["va_mean"] == pytest.approx(va.mean().item(), rel=1e-12, abs=1e-15)


@settings(max_examples=60, deadline=None)
@given(rollout_batches())
def test_reduction_of_opd_coefficients_matches_loop_oracle(batch):
    kl, _, cu, _, _, _ = batch
    res = vk.objective_from_coefficients(kl, vk.opd_coefficients(cu))
    assert res.loss.item() == pytest.approx(opd_oracle(kl, cu), rel=1e-9, abs=1e-12)
    assert not res.high_mask.any() and "va_mean" not in res.metrics


def test_float32_kl_gives_the_objectives_loss_and_metrics():
    """The trainer's KL is float32: the reduction of coefficients taken beforehand reports exactly
    what va_opd_objective / opd_objective report on that KL."""
    gen = torch.Generator().manual_seed(11)
    cu, pid = torch.tensor([0, 5, 9, 20, 21, 30]), torch.tensor([3, 3, 8, 8, 8])
    va, kl = torch.rand(30, generator=gen), torch.rand(30, generator=gen)
    options = dict(high_fraction=0.3, high_weight=0.7, va_temperature=0.5, num_prompts=4)
    pairs = [(vk.objective_from_coefficients(kl, vk.va_opd_coefficients(va, cu, pid, **options)),
              vk.va_opd_objective(kl, va, cu, pid, **options)),
             (vk.objective_from_coefficients(kl, vk.opd_coefficients(cu, num_rollouts=8)),
              vk.opd_objective(kl, cu, num_rollouts=8))]
    for got, want in pairs:
        assert got.loss.dtype == torch.float32 and torch.equal(got.loss, want.loss)
        assert got.metrics == want.metrics


def test_reduction_checks_the_kl():
    coefficients = vk.opd_coefficients(torch.tensor([0, 2, 5]))
    with pytest.raises(ValueError, match="^token_kl: expected 5 rows, got 4"):
        vk.objective_from_coefficients(torch.rand(4), coefficients)
    with pytest.raises(ValueError, match="^token_kl: expected finite values"):
        vk.objective_from_coefficients(torch.tensor([0.1, 0.2, float("nan"), 0.3, 0.4]), coefficients)
