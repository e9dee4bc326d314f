"""The teacher distilled into itself: every token's KL is 0 and so is every gradient (one step of the
demo's setup, cheap). The multi-step version, with accuracy and the weight-decay drift, is the sanity
benchmark: python -m experiments.sanity."""
import os

import pytest
import torch

from vaopd_trainer.config import load_config
from vaopd_trainer.train import Trainer

from _bootstrap import REPO


@pytest.mark.parametrize("method", ["opd", "va_opd"])
def test_teacher_into_itself_has_zero_kl_and_zero_gradient(tmp_path, monkeypatch, method):
    monkeypatch.chdir(REPO)  # the demo config's paths are relative to the repository
    overrides = dict(student_model="experiments/assets/teacher", method=method, weight_decay=0.0, max_steps=1,
                     val_before_train=False, report_to="none", num_visualize=0, output_dir=str(tmp_path / "run"))
    trainer = Trainer(load_config(os.path.join(REPO, "configs", "demo.yaml"), {k: str(v) for k, v in overrides.items()}))
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    metrics = trainer.step(0)
    assert metrics["loss"] == 0.0 and metrics["kl_mean"] == 0.0
    assert metrics["grad_norm"] == 0.0
    # AdamW with zero gradients and no weight decay leaves every weight as it was
    after = trainer.student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    trainer.close()
