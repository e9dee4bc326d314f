"""DeepSpeed ZeRO-2 through ``accelerate launch`` with the shipped config, 2 gloo processes on the CPU."""
import json
import os
import subprocess
import sys

import pytest
import torch

from vaopd_trainer.train import Trainer

WORKER = os.path.join(os.path.dirname(__file__), "_deepspeed_worker.py")


def _launch(tmp_path, repo_root, mode, overrides, out, *extra):
    """``accelerate launch`` with the shipped config on 2 processes, fp32 (exact comparisons on a CPU)."""
    (tmp_path / f"{out}.json").write_text(json.dumps(overrides))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           os.path.join(repo_root, "configs", "accelerate", "deepspeed_zero2.yaml"),
                           "--num_processes", "2", "--mixed_precision", "no", WORKER, mode,
                           str(tmp_path / f"{out}.json"), str(tmp_path / f"{out}.pt"), *extra],
                          env=env, capture_output=True, text=True, timeout=400)
    ranks = "\n".join(line for line in proc.stderr.splitlines() if line.startswith("[rank"))
    assert proc.returncode == 0, (ranks or proc.stderr)[-4000:]
    return torch.load(tmp_path / f"{out}.pt", weights_only=False)


@pytest.mark.slow
def test_deepspeed_zero2_one_update_per_rollout_batch(make_config, tmp_path, repo_root):
    pytest.importorskip("deepspeed")  # the `deepspeed` extra (installed by make test)
    # single process, whole batch: the reference update (2 prompts x 2 ranks, 3 rollouts each)
    single = Trainer(make_config(per_device_train_batch_size=4, warmup_ratio=0, output_dir=str(tmp_path / "one")))
    initial = {n: p.detach().clone() for n, p in single.inner.named_parameters()}
    torch.manual_seed(0)
    batch = single.rollouts(0)
    single.rollouts = lambda step: batch
    reference = single.step(0)
    torch.save({"batch": batch}, tmp_path / "batch.pt")

    # 2 ranks x 6 rollouts in micro-batches of 2: three backward passes per rank before the update;
    # then a 2-step run with generation, evaluation and a checkpoint after each step
    overrides = {k: str(v) for k, v in vars(single.cfg).items() if v is not None}
    overrides.update(per_device_train_batch_size="2", micro_batch_size="2", output_dir=str(tmp_path / "ds"),
                     save_steps="1", val_before_train="true")
    out = _launch(tmp_path, repo_root, "step", overrides, "run", str(tmp_path / "batch.pt"))
    assert out["world"] == 2 and out["engine"] == "DeepSpeedEngine"
    assert out["optimizer_steps"] == 1  # not one per micro-batch
    assert out["clipping"] == single.cfg.max_grad_norm  # the trainer's setting reached DeepSpeed
    # the norm DeepSpeed clipped with is the whole rollout batch's gradient norm (accumulated over the
    # micro-batches, summed over ranks), and the schedule advanced once
    assert out["metrics"]["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-4)
    assert out["metrics"]["lr"] == reference["lr"]
    assert out["metrics"]["loss"] == pytest.approx(reference["loss"], rel=1e-5)
    # the parameters after the one update equal the single-process update (which moved them). AdamW's
    # first step moves each element by lr * g / (|g| + eps): where |g| is near eps, fp32 summation-order
    # noise in g shows in the update, so the absolute tolerance is a small fraction of lr
    lr = single.cfg.learning_rate
    for name, param in single.inner.named_parameters():
        assert (param.detach() - initial[name]).abs().max() > 0.1 * lr, name
        torch.testing.assert_close(out["params"][name], param.detach(), rtol=1e-4, atol=1e-2 * lr,
                                   msg=lambda m, name=name: f"{name}: {m}")

    # the run and a resume from its step-1 checkpoint in fresh processes: step 2 is replayed exactly
    losses = [h["loss"] for h in out["history"]]
    assert len(losses) == 2 and set(out["evals"]) == {"before", "after"}
    assert os.path.isfile(tmp_path / "ds" / "student" / "model.safetensors")
    overrides.update(output_dir=str(tmp_path / "resumed"), resume=str(tmp_path / "ds" / "checkpoint-1"))
    resumed = _launch(tmp_path, repo_root, "train", overrides, "resumed")
    assert [h["step"] for h in resumed["history"]] == [2]
    assert resumed["history"][0]["loss"] == losses[1]
