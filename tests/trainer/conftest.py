import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _bootstrap import REPO, ensure_importable  # noqa: E402

ensure_importable()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """(teacher_dir, student_dir): the tiny offline pair, built once per session."""
    from vaopd_trainer.models import build_tiny_models

    return build_tiny_models(str(tmp_path_factory.mktemp("tiny_models")), seed=0)


@pytest.fixture
def repo_root():
    return REPO


@pytest.fixture
def make_config(tmp_path, tiny_models):
    """A TrainConfig for a few-second run on the tiny models; keyword overrides on top."""
    from vaopd_trainer.config import load_config

    teacher, student = tiny_models

    def make(**overrides):
        values = dict(teacher_model=teacher, student_model=student, num_train_samples=8, num_eval_samples=2,
                      per_device_train_batch_size=2, num_generations=3, max_completion_length=8, max_steps=2,
                      learning_rate=1e-3, val_before_train=False, output_dir=str(tmp_path / "run"),
                      min_pixels=16 * 16, max_pixels=64 * 64, eval_num_generations=2,
                      report_to="none", seed=0)
        values.update(overrides)
        return load_config(None, {k: str(v) for k, v in values.items()})

    return make
