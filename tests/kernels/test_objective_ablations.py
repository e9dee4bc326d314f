"""The objective's ablations (random high group, uniform rollout weights) against a per-rollout loop."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings

import vaopd_kernels as vk
from problems import make_problem, rollout_batches
from test_objective import loop_oracle


def ablation_oracle(kl, va, cu, prompts, high, f=0.2, lam=0.5, uniform=False):
    """Loss with a given high group per token and either the paper's VA weights or 1/K, one rollout at a time."""
    _, va_weights, _ = loop_oracle(kl, va, cu, prompts, f=f, lam=lam)
    kl, cu, prompts = kl.tolist(), cu.tolist(), prompts.tolist()
    loss = 0.0
    weights = [1.0 / prompts.count(p) for p in prompts] if uniform else va_weights
    for r in range(len(prompts)):
        idx = range(cu[r], cu[r + 1])
        top = [n for n in idx if high[n]]
        low = [n for n in idx if not high[n]]
        if low:
            term = lam * sum(kl[n] for n in top) / len(top) + (1 - lam) * sum(kl[n] for n in low) / len(low)
        else:
            term = sum(kl[n] for n in top) / len(top)
        loss += weights[r] * term
    return loss / len(set(prompts)), weights


@settings(max_examples=100, deadline=None)
@given(rollout_batches())
def test_uniform_rollout_weights_match_loop_oracle(batch):
    kl, va, cu, prompts, f, lam = batch
    res = vk.va_opd_objective(kl, va, cu, prompts, high_fraction=f, high_weight=lam, rollout_weighting="uniform")
    _, _, va_high = loop_oracle(kl, va, cu, prompts, f=f, lam=lam)
    expected, weights = ablation_oracle(kl, va, cu, prompts, va_high, f=f, lam=lam, uniform=True)
    assert res.high_mask.tolist() == va_high  # the high group is still VA's
    assert res.rollout_weight.tolist() == pytest.approx(weights, rel=1e-6)  # float32 result
    assert res.loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(rollout_batches())
def test_random_high_group_matches_loop_oracle(batch):
    kl, va, cu, prompts, f, lam = batch
    res = vk.va_opd_objective(kl, va, cu, prompts, high_fraction=f, high_weight=lam, high_selection="random",
                              high_seed=5)
    high = res.high_mask.tolist()
    for r in range(len(prompts)):
        length = int(cu[r + 1] - cu[r])
        assert sum(high[int(cu[r]):int(cu[r + 1])]) == max(1, math.ceil(round(f * length, 9)))
    expected, weights = ablation_oracle(kl, va, cu, prompts, high, f=f, lam=lam)
    assert res.rollout_weight.tolist() == pytest.approx(weights, rel=1e-6, abs=1e-7)  # still VA's weights
    assert res.loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_random_high_group_is_seeded_and_ignores_va():
    cu, prompts = torch.tensor([0, 10, 25]), torch.tensor([0, 0])
    kl = torch.rand(25, dtype=torch.float64)
    va = torch.zeros(25, dtype=torch.float64)
    va[3] = 5.0  # VA's choice would always include token 3
    mask = lambda seed, v=va: vk.va_opd_objective(kl, v, cu, prompts, high_selection="random", high_seed=seed).high_mask
    assert torch.equal(mask(1), mask(1))
    assert torch.equal(mask(1), mask(1, torch.rand(25, dtype=torch.float64)))  # the draw does not look at VA
    assert any(not torch.equal(mask(1), mask(s)) for s in range(2, 6))


def test_random_high_group_is_uniform_over_tokens():
    # k = ceil(0.2 * 10) = 2 of 10: every token is chosen with probability 0.2
    cu, prompts = torch.tensor([0, 10]), torch.tensor([0])
    kl, va = torch.rand(10, dtype=torch.float64), torch.rand(10, dtype=torch.float64)
    draws = 2000
    counts = sum(vk.va_opd_objective(kl, va, cu, prompts, high_selection="random", high_seed=s).high_mask.double()
                 for s in range(draws))
    # binomial sd of each count: sqrt(2000 * 0.2 * 0.8) ~ 18; 5 sd either side of 400
    assert counts.sum().item() == 2 * draws
    assert ((counts - 0.2 * draws).abs() < 90).all(), counts


def test_ablation_options_are_validated():
    args = (torch.rand(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64), torch.tensor([0, 4]),
            torch.tensor([0]))
    with pytest.raises(ValueError, match="high_selection"):
        vk.va_opd_objective(*args, high_selection="top")
    with pytest.raises(ValueError, match="rollout_weighting"):
        vk.va_opd_objective(*args, rollout_weighting="none")
    with pytest.raises(ValueError, match="high_seed"):
        vk.va_opd_objective(*args, high_selection="random")
    with pytest.raises(ValueError, match="high_seed"):
        vk.va_opd_objective(*args, high_selection="random", high_seed=-1)


@pytest.mark.parametrize("options", [dict(high_selection="random", high_seed=3), dict(rollout_weighting="uniform"),
                                     dict(high_selection="random", high_seed=3, rollout_weighting="uniform")])
def test_fused_loss_applies_the_ablations(options):
    """va_opd_loss's coefficients equal va_opd_objective's on the same KL and VA, and its gradient follows them."""
    cu, prompts = torch.tensor([0, 4, 9, 14]), torch.tensor([2, 2, 5])

    def loss(p, **opts):
        return vk.va_opd_loss(*p.kl_args, p.targets, cu, prompts, teacher_hidden_degraded=p.teacher_hidden_degraded,
                              vocab_size=p.vocab_size, backend="torch", **opts)

    # A random draw of the high tokens can coincide with the top-VA ones (about 1 problem in 70 here);
    # draw until the option must change the coefficients, so the last assert can catch an ignored option.
    for _ in range(20):
        p = make_problem(num_rows=14, dtype=torch.float64)
        paper = loss(p)
        ref = vk.va_opd_objective(paper.kl.detach().double(), paper.visual_advantage.double(), cu, prompts, **options)
        if not torch.allclose(ref.token_weight.double(), paper.token_weight.double()):
            break
    res = loss(p, **options)
    assert torch.equal(res.high_mask, ref.high_mask)
    assert torch.allclose(res.token_weight.double(), ref.token_weight.double(), rtol=1e-6)
    assert res.loss.item() == pytest.approx(ref.loss.item(), rel=1e-9)
    assert not torch.allclose(res.token_weight, paper.token_weight)  # the option changed something
