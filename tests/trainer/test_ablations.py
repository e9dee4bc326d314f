"""The VA-OPD ablations as trainer options: validated, seeded by (seed, step), and micro-batch exact."""
import dataclasses

import pytest
import torch

from vaopd_trainer.config import ConfigError, load_config
from vaopd_trainer.train import Trainer


@pytest.mark.parametrize("overrides, field", [
    ({"high_selection": "top"}, "high_selection"),
    ({"rollout_weighting": "none"}, "rollout_weighting"),
    ({"method": "opd", "high_selection": "random"}, "high_selection"),
    ({"method": "opd", "rollout_weighting": "uniform"}, "rollout_weighting"),
    ({"visual_signal": "kl"}, "visual_signal"),
    ({"method": "opd", "visual_signal": "divergence"}, "visual_signal"),
])
def test_bad_ablation_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        load_config(None, overrides)


def _step_inputs(trainer):
    torch.manual_seed(0)
    batch = trainer.rollouts(0)
    return batch, trainer.teacher(batch), trainer.teacher(batch, degraded=True)


def test_random_high_groups_are_a_function_of_seed_and_step(make_config):
    trainer = Trainer(make_config(high_selection="random", high_fraction=0.5))
    batch, th, td = _step_inputs(trainer)
    masks = [trainer.loss_and_backward(batch, th, td, step)[0].high_mask for step in (0, 0, 1, 2, 3)]
    assert torch.equal(masks[0], masks[1])
    assert any(not torch.equal(masks[0], m) for m in masks[2:])
    paper = Trainer(make_config(high_fraction=0.5))
    va_mask = paper.loss_and_backward(batch, th, td, 0)[0].high_mask
    assert any(not torch.equal(va_mask, m) for m in masks)


def test_uniform_rollout_weighting_reaches_the_objective(make_config):
    trainer = Trainer(make_config(rollout_weighting="uniform"))
    batch, th, td = _step_inputs(trainer)
    result, _ = trainer.loss_and_backward(batch, th, td, 0)
    assert torch.allclose(result.rollout_weight, torch.full_like(result.rollout_weight, 1 / 3))  # K = 3


def test_divergence_visual_signal_reaches_the_objective(make_config):
    import vaopd_kernels
    from vaopd_trainer.models import lm_head

    trainer = Trainer(make_config(visual_signal="divergence"))
    batch, th, td = _step_inputs(trainer)
    result, va = trainer.loss_and_backward(batch, th, td, 0)
    head = lm_head(trainer.teacher.model)
    want = vaopd_kernels.visual_advantage(th, td, head, vocab_size=len(trainer.tokenizer), visual_signal="divergence")
    torch.testing.assert_close(va, want.to(va.dtype))  # the coefficients keep VA in float64
    high = vaopd_kernels.va_opd_coefficients(va, batch.cu_seqlens(), batch.prompt_ids,
                                             high_fraction=trainer.cfg.high_fraction).high_mask
    assert torch.equal(result.high_mask, high)


@pytest.mark.parametrize("ablation", [dict(high_selection="random"), dict(rollout_weighting="uniform")])
def test_ablations_keep_microbatching_exact(make_config, ablation):
    trainer = Trainer(make_config(**ablation))
    batch, th, td = _step_inputs(trainer)

    def run(micro):
        trainer.cfg = dataclasses.replace(trainer.cfg, micro_batch_size=micro)
        trainer.optimizer.zero_grad(set_to_none=True)
        result, _ = trainer.loss_and_backward(batch, th, td, 5)
        return result, {n: p.grad.clone() for n, p in trainer.module.named_parameters() if p.grad is not None}

    (full, full_grads), (micro, micro_grads) = run(0), run(4)
    assert torch.equal(full.high_mask, micro.high_mask)
    assert float(micro.loss) == pytest.approx(float(full.loss), rel=1e-5)
    norm = max(g.abs().max() for g in full_grads.values())
    for name in full_grads:
        torch.testing.assert_close(micro_grads[name], full_grads[name], rtol=1e-4, atol=1e-6 * float(norm), msg=name)


def test_config_ablation_names_are_the_objective_names():
    """config.py keeps its own copy of the names (it validates without importing torch): they must
    be the objective's."""
    from vaopd_kernels import objective, validation
    from vaopd_trainer import config

    assert config.HIGH_SELECTIONS == objective.HIGH_SELECTIONS
    assert config.ROLLOUT_WEIGHTINGS == objective.ROLLOUT_WEIGHTINGS
    assert config.VISUAL_SIGNALS == validation.VISUAL_SIGNALS
