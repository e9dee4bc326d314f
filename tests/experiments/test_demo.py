"""`make demo` (configs/demo.yaml) trains the shipped student against the shipped teacher on the
fine-detail task, and the teacher's visual advantage lands on the width digit."""
import os

import numpy as np

from experiments import demo_data, task
from experiments.student import STUDENT_DIR
from experiments.teacher import TEACHER_DIR
from vaopd_trainer.config import load_config
from vaopd_trainer.data import load_prepared

from _bootstrap import REPO


def _demo_config(**overrides):
    return load_config(os.path.join(REPO, "configs", "demo.yaml"), {k: str(v) for k, v in overrides.items()})


def test_demo_uses_the_shipped_models_and_task_data():
    cfg = _demo_config()
    assert os.path.samefile(os.path.join(REPO, cfg.student_model), STUDENT_DIR)
    assert os.path.samefile(os.path.join(REPO, cfg.teacher_model), TEACHER_DIR)
    for path, split, count in ((cfg.train_file, "train", demo_data.NUM_TRAIN), (cfg.eval_file, "val", demo_data.NUM_VAL)):
        shipped = load_prepared(os.path.join(REPO, path))
        fresh = task.dataset(demo_data.SEED, split, count)
        assert [s.answer for s in shipped] == [s.answer for s in fresh]
        assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(shipped, fresh))
        assert {s.question for s in shipped} == {task.QUESTION}
    assert cfg.prompt_suffix == task.PROMPT_SUFFIX and cfg.method == "va_opd"


def test_visual_advantage_lands_on_the_width_digit(tmp_path, monkeypatch):
    from vaopd_trainer.train import Trainer

    monkeypatch.chdir(REPO)  # the config's paths are relative to the repository
    trainer = Trainer(_demo_config(output_dir=tmp_path / "demo", max_steps=1, val_before_train=False,
                                   num_visualize=32, report_to="none"))
    metrics = trainer.step(0)
    assert 0.0 <= metrics["rollout_accuracy"] <= 1.0
    with_va = [r for r in trainer.last_rollouts if max(r["va"]) > 0.1]
    assert len(with_va) >= 4, [max(r["va"]) for r in trainer.last_rollouts]  # some guesses are right
    # the largest visual advantage of each such rollout is on a digit: the width reading (or its boxed copy)
    assert all(r["tokens"][int(np.argmax(r["va"]))].isdigit() for r in with_va)
    digits = sum(v for r in trainer.last_rollouts for t, v in zip(r["tokens"], r["va"]) if t.isdigit())
    total = sum(sum(r["va"]) for r in trainer.last_rollouts)
    assert digits / total > 0.8, (digits, total)  # the answer digits hold the visual advantage
