"""A NaN injected into the gradient, a learning rate that blows the weights up, a weight that overflows."""
import glob
import os

import pytest
import torch
from _runs import losses
from safetensors.torch import load_file

from vaopd_trainer.errors import DivergenceError
from vaopd_trainer.train import Trainer


def _poison_gradients(monkeypatch, steps):
    """After the backward of each 1-based step in ``steps``, one gradient entry becomes NaN."""
    real = Trainer.loss_and_backward
    calls = []

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls.append(None)
        if len(calls) in steps:
            grad = next(p.grad for p in self.module.parameters() if p.grad is not None)
            grad.view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(Trainer, "loss_and_backward", poisoned)


def _all_saved_weights_finite(output_dir):
    files = glob.glob(os.path.join(output_dir, "checkpoint-*", "model.safetensors"))
    assert files
    return all(torch.isfinite(t).all() for f in files for t in load_file(f).values())


def test_nan_gradient_step_is_skipped_and_counted(make_config, tmp_path, monkeypatch):
    _poison_gradients(monkeypatch, steps={2})
    trainer = Trainer(make_config(max_steps=3, output_dir=str(tmp_path / "run")))
    outputs = trainer.train()
    assert [h["skipped_steps"] for h in outputs["history"]] == [0, 1, 1]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in outputs["history"])
    # the optimizer ran twice, not 3 times, and every weight is finite
    assert {int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()} == {2}
    assert all(torch.isfinite(p).all() for p in trainer.module.parameters())
    assert _all_saved_weights_finite(str(tmp_path / "run"))
    metrics = open(tmp_path / "run" / "metrics.jsonl").read()
    assert '"skipped_steps": 1' in metrics


def test_nan_every_step_stops_as_diverged_naming_the_step(make_config, tmp_path, monkeypatch):
    _poison_gradients(monkeypatch, steps={2, 3, 4, 5, 6})
    trainer = Trainer(make_config(max_steps=6, save_steps=1, output_dir=str(tmp_path / "run")))
    with pytest.raises(DivergenceError, match=r"diverged at step 4: .* 3 steps in a row \(max_skipped_steps=3\)"):
        trainer.train()
    assert sorted(os.listdir(tmp_path / "run" / "")) and _all_saved_weights_finite(str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoint-4").exists()


def test_huge_learning_rate_is_a_divergence_not_a_crash_in_generate(make_config, tmp_path):
    trainer = Trainer(make_config(max_steps=6, save_steps=1, learning_rate=1e30, output_dir=str(tmp_path / "run")))
    with pytest.raises(DivergenceError, match=r"diverged at step \d"):
        trainer.train()
    assert _all_saved_weights_finite(str(tmp_path / "run"))


def test_weights_that_become_non_finite_stop_the_run_before_any_save(make_config, tmp_path, monkeypatch):
    trainer = Trainer(make_config(max_steps=3, save_steps=1, output_dir=str(tmp_path / "run")))
    real_step = trainer.optimizer.step

    def overflowing_step(*args, **kwargs):  # an update that overflows one weight to inf
        real_step(*args, **kwargs)
        with torch.no_grad():
            next(trainer.module.parameters()).view(-1)[0] = float("inf")

    monkeypatch.setattr(trainer.optimizer, "step", overflowing_step)
    with pytest.raises(DivergenceError, match="diverged at step 1: the model weights"):
        trainer.train()
    assert not glob.glob(str(tmp_path / "run" / "checkpoint-*"))


def test_a_skipped_step_keeps_the_resumed_sequence_exact(make_config, tmp_path, monkeypatch, uninterrupted):
    # a NaN in step 2's gradient (step 1 is warm-up at lr 0): step 2 is skipped; resumed from checkpoint-2,
    # step 3 is replayed exactly
    _poison_gradients(monkeypatch, steps={2})
    full = Trainer(make_config(max_steps=3, save_steps=2, output_dir=str(tmp_path / "a"))).train()
    monkeypatch.undo()
    resumed = Trainer(make_config(max_steps=3, output_dir=str(tmp_path / "b"),
                                  resume=str(tmp_path / "a" / "checkpoint-2"))).train()
    assert losses(resumed) == losses(full)[2:]
    assert [h["skipped_steps"] for h in resumed["history"]] == [1]  # the count is restored from the checkpoint
    assert losses(full)[2] != uninterrupted[2]  # the skip changed the run (the comparison can fail)
