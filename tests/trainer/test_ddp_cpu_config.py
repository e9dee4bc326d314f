"""The shipped configs/accelerate/ddp_cpu.yaml, as the README launches it, really starts 2 processes.

accelerate's MULTI_CPU type starts one process without an mpirun hostfile, silently; the trainer's
start-up line ("vaopd-train: N processes, ENGINE on DEVICE") is what shows it.
"""
import os
import subprocess
import sys

import pytest

TINY_RUN = ["--student_model", "tiny", "--teacher_model", "tiny", "--dataset", "synthetic", "--max_steps", "1",
            "--num_train_samples", "4", "--num_eval_samples", "2", "--per_device_train_batch_size", "1",
            "--num_generations", "2", "--max_completion_length", "4", "--eval_num_generations", "1",
            "--val_before_train", "false", "--save_steps", "0", "--num_visualize", "0", "--report_to", "none",
            "--min_pixels", "256", "--max_pixels", "4096"]


def _env(repo_root):
    # the checkout first: the launched processes must import this tree's vaopd_trainer
    path = os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")


@pytest.mark.slow
def test_ddp_cpu_yaml_launches_two_ranks(repo_root, tmp_path):
    config = os.path.join(repo_root, "configs", "accelerate", "ddp_cpu.yaml")
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
                           "-m", "vaopd_trainer", *TINY_RUN, "--output_dir", str(tmp_path / "run")],
                          cwd=repo_root, env=_env(repo_root), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    starts = [line for line in proc.stdout.splitlines() if line.startswith("vaopd-train:")]
    assert starts == ["vaopd-train: 2 processes, DDP on cpu, gloo"]  # printed by the main process only


def test_single_process_run_says_so(make_config, capsys):
    from vaopd_trainer.train import Trainer

    trainer = Trainer(make_config(max_steps=1))
    trainer.close()
    assert "vaopd-train: 1 process, single process on cpu" in capsys.readouterr().out
