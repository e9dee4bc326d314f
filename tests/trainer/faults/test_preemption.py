"""Preemption (SIGTERM / SIGINT), a SIGKILL in the middle of a save, checkpoint rotation."""
import os
import signal
import subprocess
import sys
import time

import pytest
from _runs import losses, metric_steps

from vaopd_trainer import checkpoint
from vaopd_trainer.config import TrainConfig
from vaopd_trainer.signals import Preempted
from vaopd_trainer.train import Trainer

WORKER = os.path.join(os.path.dirname(__file__), "_worker.py")


def _cli_args(cfg):
    return [arg for k, v in vars(cfg).items() if v is not None for arg in (f"--{k}", str(v))]


def _start(mode, marker, cfg):
    return subprocess.Popen([sys.executable, WORKER, mode, marker, *_cli_args(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=240):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"worker ended early ({proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}")
        assert time.time() < deadline, "the worker never reached the fault point"
        time.sleep(0.05)


def test_sigterm_mid_step_finishes_the_step_checkpoints_and_exits(make_config, tmp_path, uninterrupted):
    out = tmp_path / "run"
    cfg = make_config(max_steps=4, save_steps=0, output_dir=str(out))
    marker = str(tmp_path / "in-step.2")
    proc = _start("slow-step", marker, cfg)
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)  # step 2 is in flight
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]  # 143, as if killed by it
    assert "SIGTERM after step 2" in err and "checkpoint-2" in err
    assert checkpoint.latest(str(out)).endswith("checkpoint-2")
    assert metric_steps(out) == [1, 2]
    resumed = Trainer(make_config(max_steps=4, output_dir=str(out), resume="latest")).train()
    assert [h["step"] for h in resumed["history"]] == [3, 4]
    assert losses(resumed) == uninterrupted[2:]
    assert metric_steps(out) == [1, 2, 3, 4]


def test_sigint_in_process_checkpoints_and_raises(make_config, tmp_path, monkeypatch):
    out = tmp_path / "run"
    trainer = Trainer(make_config(max_steps=4, save_steps=0, output_dir=str(out)))
    real_step = Trainer.step
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job

    def step(self, index):
        if index == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while step 2 runs
        return real_step(self, index)

    monkeypatch.setattr(Trainer, "step", step)
    with pytest.raises(Preempted, match="SIGINT after step 2") as stop:
        trainer.train()
    assert stop.value.exit_code == 130
    assert checkpoint.latest(str(out)).endswith("checkpoint-2")
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert not (out / "student").exists()  # stopped: no final export


def test_sigkill_mid_save_keeps_the_previous_checkpoint(make_config, tmp_path, uninterrupted):
    out = tmp_path / "run"
    cfg = make_config(max_steps=4, save_steps=1, output_dir=str(out))
    marker = str(tmp_path / "in-save.3")
    proc = _start("hold-save", marker, cfg)
    _wait_for(marker, proc)
    proc.kill()  # SIGKILL while checkpoint-3 is half written
    proc.communicate(timeout=60)
    assert (out / "checkpoint-3.tmp").is_dir() and not (out / "checkpoint-3").exists()
    assert checkpoint.latest(str(out)).endswith("checkpoint-2")
    assert metric_steps(out) == [1, 2, 3]  # step 3 was logged before the kill
    resumed = Trainer(make_config(max_steps=4, save_steps=1, output_dir=str(out), resume="latest")).train()
    assert losses(resumed) == uninterrupted[2:]
    assert metric_steps(out) == [1, 2, 3, 4]  # each step once after the resume
    assert not (out / "checkpoint-3.tmp").exists()


def test_save_total_limit_rotates_and_save_steps_has_a_default(make_config, tmp_path):
    assert TrainConfig().save_steps > 0
    out = tmp_path / "run"
    Trainer(make_config(max_steps=3, save_steps=1, save_total_limit=2, output_dir=str(out))).train()
    assert sorted(p for p in os.listdir(out) if p.startswith("checkpoint")) == ["checkpoint-2", "checkpoint-3"]
