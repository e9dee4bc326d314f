"""The whole dilution experiment at toy size: setup artefacts, gates, every arm, the report, and
the stop when a gate fails (so the pipeline cannot rot between full runs)."""
import json

import pytest

from experiments import code_gates, code_reproduce, code_setup
from experiments.code_report import write_report


@pytest.fixture(scope="module")
def toy_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("code_assets")
    teacher, student = str(root / "teacher"), str(root / "student")
    code_setup.build("teacher", steps=2, batch=4, lr=1e-3, seed=0, out=teacher, num_val=4)
    report = code_setup.build("student", steps=3, batch=4, lr=1e-3, seed=1, out=student, check_every=1,
                              stop_accuracy=1.01, num_val=4, short_steps=2)
    assert report["flipped_code"] and [c[0] for c in report["short_checks"]] == [1, 2]  # never reached: both phases
    assert [c[0] for c in report["checks"]] == [1, 2, 3]  # ran to their caps
    return teacher, student


def test_gates_are_measured_and_a_failure_stops_the_comparison(toy_assets, tmp_path):
    teacher, student = toy_assets
    gates = code_gates.measure(teacher, student, num_val=4, num_rollout_prompts=2)
    assert set(gates["gates"]) == set(code_gates.THRESHOLDS)
    shares = gates["rollout_shares"]
    assert shares["opd_loss_share_language"] + shares["opd_loss_share_digits"] == pytest.approx(1.0)
    assert not gates["pass"]  # a 2-step teacher cannot read the code
    path = tmp_path / "gates.json"
    path.write_text(json.dumps(gates))
    doc = tmp_path / "reproduction.md"
    code_reproduce.main(["--gates", str(path), "--teacher", teacher, "--student", student, "--out", str(tmp_path / "runs"),
                         "--results", str(tmp_path / "results.json"), "--doc", str(doc), "--img", str(tmp_path / "img"),
                         "--note", "a remark"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["runs"] == [] and "gate failed" in results["stopped"]
    assert "**FAIL**" in doc.read_text() and "the arms were not run" in doc.read_text() and "- a remark" in doc.read_text()


def test_every_arm_runs_once(toy_assets, tmp_path):
    teacher, student = toy_assets
    out, doc, img = tmp_path / "runs", tmp_path / "reproduction.md", tmp_path / "img"
    code = code_reproduce.main(["--skip_gates", "--teacher", teacher, "--student", student, "--steps", "2",
                                "--prompts", "2", "--generations", "2", "--max_completion_length", "12",
                                "--num_train", "8", "--num_test", "3", "--max_seeds", "1", "--out", str(out),
                                "--results", str(out / "results.json"), "--doc", str(doc), "--img", str(img)])
    assert code == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert sorted(r["arm"] for r in runs) == sorted(code_reproduce.ARMS)
    for run in runs:
        assert [h["step"] for h in run["history"]] == [1, 2]
        assert 0.0 <= run["final"]["accuracy"] <= 1.0 and run["final"]["digit_logprob"] < 0
        assert ("high_share_slot" in run["history"][0]) == (run["arm"] not in ("opd", "opd_lr2.5"))
    text = doc.read_text()
    for needle in ("| VA-OPD |", "| random-high |", "reproduction_accuracy.png", "no decision is made on a partial"):
        assert needle in text, needle  # one seed per arm: no paired test, and the page says so
    assert (img / "reproduction_curves.png").stat().st_size > 0


def _fake_run(arm, seed, accuracy, slot):
    history = [{"step": s, "sampled_slot_accuracy": slot, "truncated_fraction": 0.0, "va_high_share": 0.9,
                **({"high_share_slot": 0.5, "high_share_digit": 0.2, "high_share_fixed": 0.3, "high_share_eos": 0.0}
                   if arm not in ("opd", "opd_lr2.5") else {})} for s in (1, 2)]
    final = dict(accuracy=accuracy, slot_accuracy=slot, format_rate=1.0, truncation_rate=0.0, visual_reliance=0.01,
                 digit_logprob=-0.5)
    return dict(arm=arm, seed=seed, seconds=1.0, train_seconds=1.0, final=final, history=history)


def test_report_applies_the_rules_to_complete_results(tmp_path):
    """All arms and seeds (numbers made up here): the page states the outcome the rules give."""
    runs = []
    for arm, (_, seeds) in code_reproduce.ARMS.items():
        for seed in range(seeds):
            base = 0.5 + 0.01 * (seed % 3)
            runs.append(_fake_run(arm, seed, base + (0.12 if arm == "va_opd" else 0.0),
                                  0.4 if arm.startswith("va_opd") else 0.6))
    args = dict(steps=2, prompts=2, generations=2, lr=1e-3, num_train=8, num_test=3, workers=1, threads=1)
    text = write_report({"args": args, "gates": None, "runs": runs, "wall_seconds": 1.0}, str(tmp_path / "r.md"),
                        str(tmp_path / "img"))
    assert "Outcome: **supports the mechanism**" in text
    assert "| 5 | 52.0 | 64.0 | 52.0 |  |  |" in text  # seed 5: the 3-seed arms are blank


def test_start_student_phase_a_stops_at_the_first_check_that_reaches_the_threshold(tmp_path):
    report = code_setup.build("student", steps=2, batch=2, lr=1e-3, seed=1, out=str(tmp_path / "s"), check_every=2,
                              stop_accuracy=0.0, num_val=2, short_steps=5)
    assert report["short_steps_run"] == 2 and [c[0] for c in report["short_checks"]] == [2]


@pytest.mark.parametrize("format_rate, slot_accuracy, accuracy, stops", [
    (1.0, 0.0, 0.45, True),     # fluent, every slot flipped, skilled enough
    (1.0, 0.0, 0.44, False),    # not skilled enough yet
    (0.94, 0.0, 0.6, False),    # format not yet learned
    (1.0, 0.06, 0.6, False),    # 94% of slots flipped
])
def test_start_student_phase_b_stops_when_fluent_flipped_and_skilled(format_rate, slot_accuracy, accuracy, stops):
    result = dict(format_rate=format_rate, slot_accuracy=slot_accuracy, accuracy=accuracy)
    assert code_setup._fluent_and_skilled(result, 0.45) is stops
