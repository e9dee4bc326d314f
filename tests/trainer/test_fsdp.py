"""FSDP2 on 2 gloo processes, sharded by the same function (and YAML) a GPU launch uses.

accelerate does not run FSDP on a CPU (with use_cpu it silently becomes DDP), so the worker builds
accelerate's plugin from configs/accelerate/fsdp2.yaml and the trainer shards with it itself. The
2-process runs shard the teacher too (``teacher_sharding: fsdp2``): the gradient, the evaluation and
the exact resume below hold with it (test_teacher_shard.py compares it with the whole teacher).
"""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from vaopd_trainer.memory import Workload, per_gpu_memory
from vaopd_trainer.train import Trainer

from _fixed_batch import save_reference, torchrun

WORKER = os.path.join(os.path.dirname(__file__), "_fsdp_worker.py")


def _torchrun(tmp_path, mode, overrides, out, *extra):
    cfg = tmp_path / f"{out}.json"
    cfg.write_text(json.dumps(overrides))
    torchrun(WORKER, mode, cfg, tmp_path / f"{out}.pt", *extra)
    return torch.load(tmp_path / f"{out}.pt", weights_only=False)


@pytest.mark.slow
def test_fsdp2_two_process_step_save_resume_match_single_process(make_config, tmp_path):
    # single-process reference: the gradient of a fixed batch, and the evaluation before training
    # (gradient checkpointing on, as in configs/geometry3k.yaml: its recompute runs inside FSDP2's backward)
    single = Trainer(make_config(per_device_train_batch_size=4, num_generations=2, num_eval_samples=4,
                                 eval_do_sample=False, gradient_checkpointing=True,
                                 output_dir=str(tmp_path / "single")))
    reference = save_reference(single, tmp_path / "batch.pt")
    reference_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in reference.values()])))
    reference_eval = single.evaluate("before", 0)

    # 2 ranks x 2 prompts, micro-batched: the gradient; then 2 steps with generation, evaluation
    # before/after and a checkpoint after each step
    overrides = {k: str(v) for k, v in vars(single.cfg).items() if v is not None}
    overrides.update(per_device_train_batch_size="2", micro_batch_size="2", output_dir=str(tmp_path / "fsdp"),
                     max_steps="2", save_steps="1", val_before_train="true", teacher_sharding="fsdp2")
    run = _torchrun(tmp_path, "grad", overrides, "run", str(tmp_path / "batch.pt"))
    assert run["world"] == 2 and run["sharded_params"] == len(reference)
    assert run["uneven_generation"] == 2  # rank 0 stopped after 2 tokens while rank 1 went on to 5
    assert run["grads"].keys() == reference.keys()
    scale = max(g.abs().max() for g in reference.values())
    for name, grad in reference.items():
        torch.testing.assert_close(run["grads"][name], grad, rtol=1e-4, atol=1e-6 * float(scale), msg=name)
    assert run["grad_norm"] == pytest.approx(reference_norm, rel=1e-4)
    # what rank 0 holds is the FSDP2 column of the memory formula (docs/trainer.md), exactly
    estimate = per_gpu_memory(single.student.config, single.teacher.model.config, Workload(1, 1, 1, 1, 1), engine="fsdp2",
                              gpus=2, bf16=False, teacher_sharding="fsdp2")
    assert run["memory"] == {k: estimate[k] for k in ("parameters", "gradients", "optimizer", "teacher")}

    # generation + evaluation with the sharded student: greedy answers and the student's visual
    # reliance (which reads the LM head outside forward) equal the unsharded model's
    before = run["evals"]["before"]
    assert before["eval_accuracy"] == reference_eval["eval_accuracy"]
    assert before["eval_visual_reliance"] == pytest.approx(reference_eval["eval_visual_reliance"], rel=1e-4)
    losses = [h["loss"] for h in run["history"]]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)

    # the checkpoint holds the full (gathered) student; the exported student is the same full model
    ckpt = tmp_path / "fsdp" / "checkpoint-2"
    state = torch.load(ckpt / "custom_checkpoint_0.pkl", weights_only=False)
    exported = load_file(str(tmp_path / "fsdp" / "student" / "model.safetensors"))
    unsharded = {n: p.shape for n, p in single.module.named_parameters()}
    assert {n: t.shape for n, t in state["model"].items()} == unsharded
    assert len(state["optimizer"]["state"]) == len(unsharded)
    for name, tensor in state["model"].items():
        torch.testing.assert_close(exported[name[len("model."):]], tensor, rtol=0, atol=0, msg=name)

    # resume from step 1 in fresh processes: step 2 is replayed exactly
    overrides.update(output_dir=str(tmp_path / "resumed"), resume=str(tmp_path / "fsdp" / "checkpoint-1"))
    resumed = _torchrun(tmp_path, "train", overrides, "resumed")
    assert [h["step"] for h in resumed["history"]] == [2]
    assert resumed["history"][0]["loss"] == losses[1]
