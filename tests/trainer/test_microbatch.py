import dataclasses

import pytest
import torch

from vaopd_trainer.loss import backbone_hidden
from vaopd_trainer.train import Trainer


def _grads(trainer, batch, th, td, micro):
    trainer.cfg = dataclasses.replace(trainer.cfg, micro_batch_size=micro)
    trainer.optimizer.zero_grad(set_to_none=True)
    result, _ = trainer.loss_and_backward(batch, th, td)
    grads = {n: p.grad.clone() for n, p in trainer.module.named_parameters() if p.grad is not None}
    return float(result.loss.detach()), grads


@pytest.mark.parametrize("method", ["va_opd", "opd"])
def test_microbatch_gradient_equals_full_batch(make_config, method):
    trainer = Trainer(make_config(method=method))
    torch.manual_seed(0)
    batch = trainer.rollouts(0)  # 2 prompts x 3 rollouts, ragged response lengths
    th = backbone_hidden(trainer.teacher, batch)
    td = backbone_hidden(trainer.teacher, batch, degraded=True) if method == "va_opd" else None
    full_loss, full = _grads(trainer, batch, th, td, micro=0)  # va_opd_loss on the whole batch
    micro_loss, micro = _grads(trainer, batch, th, td, micro=4)  # micro-batches of 4 and 2 rollouts
    assert full_loss > 0 and micro_loss == pytest.approx(full_loss, rel=1e-5)
    assert full.keys() == micro.keys() and len(full) > 10
    norm = max(g.abs().max() for g in full.values())
    assert norm > 0
    for name in full:
        torch.testing.assert_close(micro[name], full[name], rtol=1e-4, atol=1e-6 * float(norm), msg=name)
