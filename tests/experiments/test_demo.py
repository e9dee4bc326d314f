"""`make demo` (experiments/demo.py on configs/demo.yaml) distils the shipped teacher into the shipped
partially sighted student on the fine-detail task, OPD and VA-OPD side by side; the teacher's visual
advantage lands on the width digit of right rollouts and is missing from wrong ones."""
import json
import os

import numpy as np
import pytest

from experiments import demo_data, task
from experiments import demo
from experiments.student import SIGHTED_DIR
from experiments.teacher import TEACHER_DIR
from vaopd_trainer.config import load_config
from vaopd_trainer.data import load_prepared, write_prepared
from vaopd_trainer.visualize import va_html

from _bootstrap import REPO


def _demo_config(**overrides):
    return load_config(os.path.join(REPO, "configs", "demo.yaml"), {k: str(v) for k, v in overrides.items()})


def test_demo_uses_the_shipped_models_and_task_data():
    cfg = _demo_config()
    assert os.path.samefile(os.path.join(REPO, cfg.student_model), SIGHTED_DIR)
    assert os.path.samefile(os.path.join(REPO, cfg.teacher_model), TEACHER_DIR)
    for path, split, count in ((cfg.train_file, "train", demo_data.NUM_TRAIN), (cfg.eval_file, "val", demo_data.NUM_VAL)):
        shipped = load_prepared(os.path.join(REPO, path))
        fresh = task.dataset(demo_data.SEED, split, count)
        assert [s.answer for s in shipped] == [s.answer for s in fresh]
        assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(shipped, fresh))
        assert {s.question for s in shipped} == {task.QUESTION}
    assert cfg.prompt_suffix == task.PROMPT_SUFFIX and cfg.method == "va_opd"
    # held-out accuracy resolves a 0.1 gain: hundreds of images, greedy and sampled, before and during training
    assert demo_data.NUM_VAL >= 256 and cfg.eval_greedy and cfg.eval_do_sample and cfg.val_before_train
    assert 0 < cfg.eval_steps < cfg.max_steps and cfg.weight_decay == 0.0


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
    outcomes = [r["right"] for r in trainer.last_rollouts]
    pairs = min(outcomes.count(True), outcomes.count(False))
    assert pairs and outcomes[:2 * pairs] == [True, False] * pairs  # the page shows right and wrong rollouts
    digits = sum(v for r in trainer.last_rollouts for t, v in zip(r["tokens"], r["va"]) if t.isdigit())
    total = sum(sum(r["va"]) for r in trainer.last_rollouts)
    assert digits / total > 0.8, (digits, total)  # the answer digits hold the visual advantage


def test_demo_runs_both_arms_from_one_start_and_reports_paired_gains(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    small_val = tmp_path / "val.parquet"
    write_prepared(task.dataset(demo_data.SEED, "val", 4), str(small_val))
    out = tmp_path / "demo"
    assert demo.main(["--max_steps", "2", "--eval_steps", "1", "--eval_file", str(small_val),
                      "--output_dir", str(out), "--report_to", "none", "--num_visualize", "8"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for method in demo.ARMS:
        rows = [json.loads(line) for line in (out / method / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in rows if "eval_accuracy" in r]
        assert [r["step"] for r in evals] == [0, 1, 2]  # before, during, after
        assert all("eval_greedy_accuracy_ci95" in r and "eval_accuracy_ci95" in r for r in evals)
        greedy = summary[method]["eval_greedy_accuracy"]
        assert greedy["images"] == 4 and greedy["gain"] == pytest.approx(greedy["after"] - greedy["before"])
        low, high = greedy["gain_ci95"]
        assert low <= greedy["gain"] <= high
    # the same start student and seed: identical before-training evaluations
    assert summary["opd"]["eval_accuracy"]["before"] == summary["va_opd"]["eval_accuracy"]["before"]
    printed = capsys.readouterr().out
    assert "95% interval" in printed and printed.count("greedy") >= 2
    assert (out / "curves.png").stat().st_size > 0
    assert (out / "va_opd" / "va_tokens.html").exists() and not (out / "opd" / "va_tokens.html").exists()


def test_the_va_page_marks_right_and_wrong_rollouts(tmp_path):
    rollouts = [dict(tokens=["2", "}"], va=[0.4, 0.0], high=[True, False], weight=0.7, prompt="prompt 0", right=True,
                     answer="2", gold="2"),
                dict(tokens=["3", "}"], va=[0.0, 0.0], high=[True, False], weight=0.03, prompt="prompt 0",
                     right=False, answer="3", gold="2")]
    page = open(va_html(str(tmp_path / "va.html"), rollouts, "t")).read()
    assert "right</span> (answered 2, answer 2)" in page and "wrong</span> (answered 3, answer 2)" in page
    assert "mean VA 0.2000" in page and "mean VA 0.0000" in page
