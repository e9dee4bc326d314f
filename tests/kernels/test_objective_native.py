"""The CUDA objective's algorithm (csrc/objective_core.h) equals the torch objective, ties included.

On every machine the header is compiled for the host (native/objective_host.cpp) and run by
teams of 1 to 5 threads that meet at barriers where a thread block meets at __syncthreads. On a
GPU the real kernels (csrc/objective.cu) are checked against the same torch objective.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import native_objective
from problems import rollout_batches
from vaopd_kernels import Coefficients, objective
from vaopd_kernels.backends import cuda as cuda_backend

pytestmark = pytest.mark.skipif(native_objective.unavailable_reason() is not None,
                                reason=str(native_objective.unavailable_reason()))
OPTIONS = dict(va_temperature=1.0, eps=1e-6)


def torch_weights(va, cu, prompts, f, lam, num_prompts=None, **options):
    return objective.va_opd_coefficients(va, cu, prompts, high_fraction=f, high_weight=lam,
                                         num_prompts=num_prompts, **{**OPTIONS, **options})


# Sums run in another order than torch's, so rollout means can differ in the last bit; siblings with
# (nearly) equal means then divide that bit by eps = 1e-6 in the z-score: up to ~1e-9 relative.
WEIGHT_RTOL = 1e-8


def assert_same(got, want: Coefficients):
    token_weight, rollout_weight, high = got
    assert torch.equal(high.cpu(), want.high_mask.cpu())
    torch.testing.assert_close(token_weight.cpu(), want.token_weight.cpu(), rtol=WEIGHT_RTOL, atol=0)
    torch.testing.assert_close(rollout_weight.cpu(), want.rollout_weight.cpu(), rtol=WEIGHT_RTOL, atol=1e-300)


def host(va, cu, prompts, f, lam, num_prompts=None, team_size=1, **options):
    o = {**OPTIONS, **options}
    return native_objective.va_opd_coefficients(va, cu, prompts, f, lam, o["va_temperature"], o["eps"],
                                                num_prompts or 0, team_size=team_size)


@settings(max_examples=120, deadline=None)
@given(rollout_batches(va_values=(0.0, -0.0, 0.1, 0.25, 1.0, 3.5, -0.5, 1e-300)), st.integers(1, 5))
def test_host_build_matches_torch_objective(batch, team_size):
    _, va, cu, prompts, f, lam = batch
    assert_same(host(va, cu, prompts, f, lam, team_size=team_size), torch_weights(va, cu, prompts, f, lam))


@pytest.mark.parametrize("team_size", [1, 4])
def test_host_build_long_rollouts_options_and_override(team_size):
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1, 2, 15, 700, 33, 257, 5, 90])
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    prompts = torch.tensor([5, 9, 5, 9, 9, 2, 5, 2])
    va = torch.rand(int(cu[-1]), generator=g, dtype=torch.float64).clamp_min(0.4) - 0.4  # many exact zeros
    va[100:140] = 0.25  # a long run of ties straddling the top-k boundary
    for options in (dict(f=0.2, lam=0.5), dict(f=0.05, lam=0.9, va_temperature=0.3, eps=1e-3, num_prompts=7)):
        assert_same(host(va, cu, prompts, team_size=team_size, **options), torch_weights(va, cu, prompts, **options))


@pytest.mark.skipif(not torch.cuda.is_available() or cuda_backend.unavailable_reason() is not None,
                    reason=f"cuda kernels unavailable: {cuda_backend.unavailable_reason()}")
@settings(max_examples=60, deadline=None)
@given(rollout_batches(va_values=(0.0, -0.0, 0.1, 0.25, 1.0, 3.5, -0.5)))
def test_cuda_kernels_match_torch_objective_gpu(batch):
    _, va, cu, prompts, f, lam = (t.cuda() if isinstance(t, torch.Tensor) else t for t in batch)
    got = cuda_backend.va_opd_coefficients(va, cu, prompts, high_fraction=f, high_weight=lam, num_prompts=None,
                                           **OPTIONS)
    assert_same((got.token_weight, got.rollout_weight, got.high_mask), torch_weights(va, cu, prompts, f, lam))
