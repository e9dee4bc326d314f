"""The shipped teacher reads the detail, and pixelation removes exactly that detail."""
import json
import os

import pytest

from experiments import task
from experiments.teacher import TEACHER_DIR, accuracy

NUM = 48  # test images: enough to tell ~100% from chance (1/3 +- 0.07) apart


@pytest.fixture(scope="module")
def teacher():
    if not os.path.isfile(os.path.join(TEACHER_DIR, "model.safetensors")):
        pytest.fail(f"{TEACHER_DIR} has no weights: run python -m experiments.teacher")
    from vaopd_trainer.models import load_model, load_processing

    import torch

    tokenizer, processor = load_processing(TEACHER_DIR, 16 * 16, task.IMAGE_SIZE ** 2)
    return load_model(TEACHER_DIR, torch.float32, torch.device("cpu")).eval(), tokenizer, processor


def test_shipped_teacher_is_small():
    size = sum(os.path.getsize(os.path.join(TEACHER_DIR, f)) for f in os.listdir(TEACHER_DIR))
    assert size < 5 * 2 ** 20
    with open(os.path.join(TEACHER_DIR, "training.json")) as f:
        assert json.load(f)["val_accuracy"] >= 0.9


def test_teacher_accuracy_drops_to_chance_when_pixelated(teacher):
    samples = task.dataset(0, "test", NUM)
    clean = accuracy(*teacher, samples, pixelated=False)
    blurred = accuracy(*teacher, samples, pixelated=True)
    chance = 1 / len(task.ANSWERS)
    assert clean >= 0.9, clean
    # about chance: within ~2.5 binomial standard deviations of 1/3 at this sample size
    assert blurred <= chance + 0.18, blurred
