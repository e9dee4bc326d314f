import dataclasses

import pytest
import torch

import vaopd_kernels
from vaopd_trainer.models import lm_head
from vaopd_trainer.train import Trainer


def _grads(trainer, batch, th, td, micro):
    trainer.cfg = dataclasses.replace(trainer.cfg, micro_batch_size=micro)
    trainer.optimizer.zero_grad(set_to_none=True)
    result, _ = trainer.loss_and_backward(batch, th, td)
    grads = {n: p.grad.clone() for n, p in trainer.module.named_parameters() if p.grad is not None}
    return float(result.loss.detach()), grads


def _va_opd_loss_grads(trainer, batch, th, td):
    """The same batch's loss and gradients from ``va_opd_loss``, bypassing the trainer."""
    inner = trainer.inner
    trainer.optimizer.zero_grad(set_to_none=True)
    hidden = inner.model.model(**batch.model_inputs(), use_cache=False).last_hidden_state
    rollouts = batch.input_ids.shape[0]
    result = vaopd_kernels.va_opd_loss(
        batch.response_hidden(hidden), lm_head(inner.model), th, lm_head(trainer.teacher.model),
        batch.targets(), batch.cu_seqlens(), batch.prompt_ids, teacher_hidden_degraded=td, vocab_size=inner.vocab_size,
        num_prompts=trainer.global_prompts, num_rollouts=rollouts, backend=inner.backend, **inner.objective)
    result.loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.module.named_parameters() if p.grad is not None}
    return float(result.loss.detach()), grads, result


@pytest.mark.parametrize("method", ["va_opd", "opd"])
def test_microbatch_gradient_equals_full_batch(make_config, method):
    trainer = Trainer(make_config(method=method))
    torch.manual_seed(0)
    batch = trainer.rollouts(0)  # 2 prompts x 3 rollouts, ragged response lengths
    th = trainer.teacher(batch)
    td = trainer.teacher(batch, degraded=True) if method == "va_opd" else None
    assert trainer.global_prompts * trainer.cfg.num_generations == batch.input_ids.shape[0]
    direct_loss, direct, direct_result = _va_opd_loss_grads(trainer, batch, th, td)
    full_loss, full = _grads(trainer, batch, th, td, micro=0)  # the whole batch in one forward
    micro_loss, micro = _grads(trainer, batch, th, td, micro=4)  # micro-batches of 4 and 2 rollouts
    assert direct_loss > 0
    assert full_loss == pytest.approx(direct_loss, rel=1e-5) and micro_loss == pytest.approx(direct_loss, rel=1e-5)
    assert direct.keys() == full.keys() == micro.keys() and len(direct) > 10
    norm = max(g.abs().max() for g in direct.values())
    assert norm > 0
    for name in direct:
        torch.testing.assert_close(full[name], direct[name], rtol=1e-4, atol=1e-6 * float(norm), msg=name)
        torch.testing.assert_close(micro[name], direct[name], rtol=1e-4, atol=1e-6 * float(norm), msg=name)


@pytest.mark.parametrize("micro", [0, 4])
def test_step_metrics_match_va_opd_loss(make_config, micro):
    """The step's objective result reports what va_opd_loss reports on the same batch."""
    trainer = Trainer(make_config(method="va_opd"))
    torch.manual_seed(0)
    batch = trainer.rollouts(0)
    th = trainer.teacher(batch)
    td = trainer.teacher(batch, degraded=True)
    _, _, direct = _va_opd_loss_grads(trainer, batch, th, td)
    trainer.cfg = dataclasses.replace(trainer.cfg, micro_batch_size=micro)
    result, va = trainer.loss_and_backward(batch, th, td)
    torch.testing.assert_close(va, direct.visual_advantage.double())  # the coefficients keep VA in float64
    assert torch.equal(result.high_mask, direct.high_mask)
    torch.testing.assert_close(result.token_weight, direct.token_weight)
    assert result.metrics.keys() == direct.metrics.keys()
    for key, value in direct.metrics.items():
        assert result.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
