import json
import os

from vaopd_trainer import cli


def test_demo_config_runs_end_to_end(repo_root, tmp_path, capsys):
    """The demo's settings through the command line, on the random tiny models and the synthetic set
    (the demo itself, with the shipped models, is tests/experiments/test_demo.py)."""
    out = tmp_path / "demo"
    code = cli.main(["--config", os.path.join(repo_root, "configs", "demo.yaml"), "--output_dir", str(out),
                     "--student_model", "tiny", "--teacher_model", "tiny", "--dataset", "synthetic",
                     "--max_steps", "2", "--save_steps", "0", "--num_eval_samples", "2", "--eval_num_generations", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    for key in ("kl_mean", "va_high_share", "rollout_weight_min", "rollout_accuracy", "response_length", "tokens_per_s",
                "peak_mem_student_mib", "grad_norm"):
        assert key in train_rows[-1], key
    assert sum("eval_accuracy" in r for r in rows) == 2  # val_before_train and the final eval
    for name in ("va_tokens.html", "checkpoint-2/trainer_state.json", "student/config.json", "config.yaml"):
        assert (out / name).exists(), name
    assert "eval_visual_reliance" in printed and str(out / "va_tokens.html") in printed
