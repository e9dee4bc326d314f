"""The whole dilution experiment at toy size: setup artefacts, gates, every arm, the report, and
the stop when a gate fails (so the pipeline cannot rot between full runs)."""
import json

import pytest

from experiments import code_gates, code_reproduce, code_setup


@pytest.fixture(scope="module")
def toy_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("code_assets")
    teacher, student = str(root / "teacher"), str(root / "student")
    code_setup.build("teacher", steps=2, batch=4, lr=1e-3, seed=0, out=teacher, num_val=4)
    report = code_setup.build("student", steps=3, batch=4, lr=1e-3, seed=1, out=student, check_every=1,
                              stop_accuracy=1.01, num_val=4)
    assert report["flipped_code"] and [c[0] for c in report["checks"]] == [1, 2, 3]  # never reached: ran to the cap
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
                         "--doc", str(doc), "--img", str(tmp_path / "img")])
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert results["runs"] == [] and "gate failed" in results["stopped"]
    assert "**FAIL**" in doc.read_text() and "the arms were not run" in doc.read_text()


def test_every_arm_runs_and_the_report_applies_the_rules(toy_assets, tmp_path):
    teacher, student = toy_assets
    out, doc, img = tmp_path / "runs", tmp_path / "reproduction.md", tmp_path / "img"
    code = code_reproduce.main(["--skip_gates", "--teacher", teacher, "--student", student, "--steps", "2",
                                "--prompts", "2", "--generations", "2", "--max_completion_length", "12",
                                "--num_train", "8", "--num_test", "3", "--max_seeds", "2", "--out", str(out),
                                "--doc", str(doc), "--img", str(img)])
    assert code == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert sorted((r["arm"], r["seed"]) for r in runs) == sorted((a, s) for a in code_reproduce.ARMS for s in (0, 1))
    for run in runs:
        assert [h["step"] for h in run["history"]] == [1, 2]
        assert 0.0 <= run["final"]["accuracy"] <= 1.0 and run["final"]["digit_logprob"] < 0
        assert ("high_share_slot" in run["history"][0]) == (run["arm"] not in ("opd", "opd_lr2.5"))
    text = doc.read_text()
    for needle in ("| VA-OPD |", "| random-high |", "Outcome:", "reproduction_accuracy.png"):
        assert needle in text, needle
    assert (img / "reproduction_curves.png").stat().st_size > 0
