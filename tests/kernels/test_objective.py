"""The VA-OPD / OPD reductions against an independent per-rollout loop and the paper's numbers."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings

import vaopd_kernels as vk
from problems import rollout_batches


def loop_oracle(kl, va, cu, prompts, f=0.2, lam=0.5, tau=1.0, eps=1e-6):
    """The paper's definitions written as plainly as possible, one rollout at a time."""
    kl, va = kl.tolist(), va.tolist()
    cu, prompts = cu.tolist(), prompts.tolist()
    rollouts = range(len(prompts))
    abar = [sum(va[cu[r]:cu[r + 1]]) / (cu[r + 1] - cu[r]) for r in rollouts]
    weights = [0.0] * len(prompts)
    for pid in set(prompts):
        sib = [r for r in rollouts if prompts[r] == pid]
        mean = sum(abar[r] for r in sib) / len(sib)
        std = math.sqrt(sum((abar[r] - mean) ** 2 for r in sib) / len(sib))
        z = [(abar[r] - mean) / (std + eps) / tau for r in sib]
        m = max(z)
        e = [math.exp(x - m) for x in z]
        for r, x in zip(sib, e):
            weights[r] = x / sum(e)
    loss, high = 0.0, [False] * len(kl)
    for r in rollouts:
        idx = list(range(cu[r], cu[r + 1]))
        k = max(1, math.ceil(round(f * len(idx), 9)))
        top = sorted(idx, key=lambda n: (-va[n], n))[:k]  # ties -> earlier token
        low = [n for n in idx if n not in top]
        for n in top:
            high[n] = True
        if low:
            term = lam * sum(kl[n] for n in top) / len(top) + (1 - lam) * sum(kl[n] for n in low) / len(low)
        else:
            term = sum(kl[n] for n in top) / len(top)
        loss += weights[r] * term
    return loss / len(set(prompts)), weights, high


def test_paper_worked_example_weights():
    va = torch.tensor([0.045, 0.030, 0.020, 0.010], dtype=torch.float64)
    cu = torch.arange(5)
    res = vk.va_opd_objective(torch.ones(4, dtype=torch.float64), va, cu, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(res.rollout_weight.double(), torch.tensor([0.656, 0.206, 0.095, 0.044],
                                                                    dtype=torch.float64), atol=6e-4)
    assert abs(float(res.rollout_weight.sum()) - 1.0) < 1e-6


def test_ties_go_to_the_earlier_token():
    va = torch.tensor([0.0, 0.5, 0.5, 0.5, 0.1, 0.5, 0.0, 0.0, 0.0, 0.0])  # k = 2 of 10
    res = vk.va_opd_objective(torch.rand(10), va, torch.tensor([0, 10]), torch.tensor([0]))
    assert res.high_mask.tolist() == [False, True, True] + [False] * 7


def test_k_is_ceil_of_fraction_without_float_noise():
    # 0.2 * 15 = 3.0000000000000004 in floating point; the high group must still hold 3 tokens.
    for length, expected in ((15, 3), (5, 1), (6, 2), (1, 1), (10, 2), (11, 3)):
        va = torch.rand(length)
        res = vk.va_opd_objective(torch.rand(length), va, torch.tensor([0, length]), torch.tensor([0]))
        assert int(res.high_mask.sum()) == expected, length


def test_one_token_rollout_puts_all_mass_in_high_group():
    kl = torch.tensor([2.0, 1.0, 3.0, 5.0], dtype=torch.float64)
    va = torch.tensor([0.3, 0.1, 0.2, 0.4], dtype=torch.float64)
    res = vk.va_opd_objective(kl, va, torch.tensor([0, 1, 4]), torch.tensor([0, 1]))
    # rollout 0: singleton prompt -> w = 1, single token -> coefficient 1; P = 2
    assert res.token_weight[0].item() == pytest.approx(0.5)
    expected, _, _ = loop_oracle(kl, va, torch.tensor([0, 1, 4]), torch.tensor([0, 1]))
    assert res.loss.item() == pytest.approx(expected, rel=1e-12)


def test_equal_va_gives_uniform_weights_and_half_half_groups():
    kl = torch.rand(12, dtype=torch.float64)
    va = torch.full((12,), 0.25, dtype=torch.float64)
    cu = torch.tensor([0, 5, 12])
    res = vk.va_opd_objective(kl, va, cu, torch.tensor([3, 3]))
    assert torch.allclose(res.rollout_weight, torch.full((2,), 0.5))
    for r in range(2):
        rows = slice(int(cu[r]), int(cu[r + 1]))
        high, w = res.high_mask[rows], res.token_weight[rows].double()
        assert w[high].sum().item() == pytest.approx(0.25) and w[~high].sum().item() == pytest.approx(0.25)


def test_opd_reduction_is_mean_of_rollout_means():
    kl = torch.rand(9, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 2, 7, 9])
    res = vk.opd_objective(kl, cu)
    expected = (kl[0:2].mean() + kl[2:7].mean() + kl[7:9].mean()) / 3
    assert res.loss.item() == pytest.approx(expected.item(), rel=1e-12)
    res.loss.backward()
    assert torch.allclose(kl.grad, res.token_weight.double(), rtol=1e-6)
    assert vk.opd_objective(kl.detach(), cu, num_rollouts=6).loss.item() == pytest.approx(expected.item() / 2)


def test_loss_is_differentiable_through_kl_only():
    kl = torch.rand(6, dtype=torch.float64, requires_grad=True)
    va = torch.rand(6, dtype=torch.float64, requires_grad=True)
    res = vk.va_opd_objective(kl, va, torch.tensor([0, 3, 6]), torch.tensor([0, 0]))
    res.loss.backward()
    assert va.grad is None
    assert torch.allclose(kl.grad, res.token_weight.double(), rtol=1e-6)


def test_num_prompts_overrides_the_normaliser():
    kl, va = torch.rand(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64)
    args = (kl, va, torch.tensor([0, 3, 6]), torch.tensor([0, 0]))
    assert vk.va_opd_objective(*args, num_prompts=4).loss.item() == pytest.approx(
        vk.va_opd_objective(*args).loss.item() / 4)


def test_metrics_report_the_groups():
    kl = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    va = torch.tensor([0.0, 0.9, 0.0, 0.1, 0.0], dtype=torch.float64)  # k = 1: token 1
    m = vk.va_opd_objective(kl, va, torch.tensor([0, 5]), torch.tensor([0])).metrics
    assert m["va_high_share"] == pytest.approx(0.9)
    assert m["high_zero_va_fraction"] == 0.0
    assert m["kl_high_mean"] == pytest.approx(2.0) and m["kl_low_mean"] == pytest.approx(13 / 4)
    assert m["rollout_weight_min"] == m["rollout_weight_max"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in m.values())


@settings(max_examples=150, deadline=None)
@given(rollout_batches())
def test_objective_matches_loop_oracle(batch):
    kl, va, cu, prompts, f, lam = batch
    res = vk.va_opd_objective(kl, va, cu, prompts, high_fraction=f, high_weight=lam)
    expected, weights, high = loop_oracle(kl, va, cu, prompts, f=f, lam=lam)
    assert res.loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert res.rollout_weight.tolist() == pytest.approx(weights, rel=1e-6, abs=1e-7)
    assert res.high_mask.tolist() == high
    # Weights of each prompt's siblings sum to one; the token weights sum to 1 per prompt / P.
    assert float(res.token_weight.double().sum()) == pytest.approx(1.0, rel=1e-6)


def test_coefficients_are_the_objectives_weights():
    """va_opd_coefficients / opd_coefficients need no KL, and any KL's objective is their weighted sum."""
    gen = torch.Generator().manual_seed(4)
    cu, pid = torch.tensor([0, 3, 4, 9, 15, 16]), torch.tensor([7, 7, 2, 2, 2])
    va, kl = torch.rand(16, generator=gen), torch.rand(16, generator=gen)
    va[5] = va[6]  # a tie inside a rollout
    coef = vk.va_opd_coefficients(va, cu, pid, high_fraction=0.3, high_weight=0.6, va_temperature=0.7, num_prompts=3)
    full = vk.va_opd_objective(kl, va, cu, pid, high_fraction=0.3, high_weight=0.6, va_temperature=0.7, num_prompts=3)
    # the coefficients keep the objective's float64; its result reports them in float32
    assert torch.equal(coef.token_weight.float(), full.token_weight) and torch.equal(coef.high_mask, full.high_mask)
    assert torch.equal(coef.rollout_weight.float(), full.rollout_weight)
    torch.testing.assert_close((coef.token_weight * kl.double()).sum(), full.loss.double(), rtol=1e-6, atol=0)
    opd = vk.opd_coefficients(cu, num_rollouts=8)
    assert torch.equal(opd.token_weight.float(), vk.opd_objective(kl, cu, num_rollouts=8).token_weight)
    assert not opd.high_mask.any()


def test_coefficients_check_their_inputs():
    with pytest.raises(ValueError, match="^cu_seqlens: expected"):
        vk.va_opd_coefficients(torch.rand(4), torch.tensor([0, 2, 3]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="^high_fraction: expected"):
        vk.va_opd_coefficients(torch.rand(4), torch.tensor([0, 4]), torch.tensor([0]), high_fraction=True)
    with pytest.raises(ValueError, match="^cu_seqlens: expected"):
        vk.opd_coefficients(torch.tensor([1, 4]))
