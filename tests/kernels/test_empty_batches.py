"""N = 0 as the README states it: per-token functions give empty results (tests/test_validation.py
checks them on every backend), weighted_kl a zero loss with a graph, and the objectives, which need a
rollout to normalise by, raise ValueError naming cu_seqlens."""
import pytest
import torch

import vaopd_kernels as vk


def test_weighted_kl_of_no_rows_is_a_zero_loss_with_a_graph():
    h, w = torch.randn(0, 4, requires_grad=True), torch.randn(9, 4, requires_grad=True)
    out = vk.weighted_kl(h, w, torch.randn(0, 6), torch.randn(9, 6), torch.zeros(0), targets=torch.zeros(0).long())
    assert out.loss.item() == 0 and out.loss.requires_grad
    assert out.kl.shape == out.student_logprob.shape == out.student_entropy.shape == (0,)
    out.loss.backward()
    assert w.grad is None or not w.grad.any()


H, W, T, EMPTY = torch.randn(0, 4), torch.randn(9, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0)
OBJECTIVES = {
    "va_opd_loss": lambda cu, p: vk.va_opd_loss(H, W, H, W, T, cu, p, teacher_hidden_degraded=H),
    "VAOPDLoss": lambda cu, p: vk.VAOPDLoss()(H, W, H, W, T, cu, p),
    "va_opd_objective": lambda cu, p: vk.va_opd_objective(EMPTY, EMPTY, cu, p),
    "opd_objective": lambda cu, p: vk.opd_objective(EMPTY, cu),
    "va_opd_coefficients": lambda cu, p: vk.va_opd_coefficients(EMPTY, cu, p),
    "opd_coefficients": lambda cu, p: vk.opd_coefficients(cu),
}


@pytest.mark.parametrize("name", OBJECTIVES)
@pytest.mark.parametrize("cu_seqlens", [[0], [0, 0]], ids=["no rollout", "an empty rollout"])
def test_objectives_of_no_rows_raise_naming_cu_seqlens(name, cu_seqlens):
    prompts = torch.zeros(len(cu_seqlens) - 1, dtype=torch.long)
    with pytest.raises(ValueError, match="^cu_seqlens: "):
        OBJECTIVES[name](torch.tensor(cu_seqlens), prompts)
