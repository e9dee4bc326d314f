"""The sharded teacher (``teacher_sharding: fsdp2``, ``teacher_offload``) on 2 gloo processes beside
the DDP student, against one process with the whole teacher on the same fixed batch. Its run with
the FSDP2 student (generation, evaluation, checkpoints, exact resume) is in test_fsdp.py."""
import json
import math
import os

import pytest
import torch

from vaopd_trainer import engines
from vaopd_trainer.memory import Workload, per_gpu_memory
from vaopd_trainer.models import lm_head
from vaopd_trainer.train import Trainer

from _fixed_batch import save_reference, torchrun

WORKER = os.path.join(os.path.dirname(__file__), "_teacher_worker.py")


def close(actual, expected, name):
    """Equal within fp32 summation noise (each rank sums over half the batch)."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()), msg=name)


@pytest.mark.slow
def test_sharded_teacher_equals_the_whole_teacher_on_two_processes(make_config, tmp_path):
    single = Trainer(make_config(per_device_train_batch_size=4, num_generations=2))
    reference = save_reference(single, tmp_path / "batch.pt")
    saved = torch.load(tmp_path / "batch.pt", weights_only=False)
    kl = []
    single.inner.register_forward_hook(lambda module, args, out: kl.append(out[1].kl))
    result, va = single.loss_and_backward(saved["batch"], saved["teacher_hidden"], saved["teacher_degraded"])

    overrides = {k: str(v) for k, v in vars(single.cfg).items() if v is not None}
    overrides.update(per_device_train_batch_size="2", micro_batch_size="2", output_dir=str(tmp_path / "sharded"),
                     teacher_sharding="fsdp2")
    (tmp_path / "cfg.json").write_text(json.dumps(overrides))
    torchrun(WORKER, tmp_path / "cfg.json", tmp_path / "batch.pt", tmp_path / "out.pt", timeout=300)
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    ranks = out["ranks"]
    both = {key: torch.cat([r[key] for r in ranks]) for key in ("hidden", "degraded", "va", "kl", "token_weight",
                                                                "rollout_weight", "high_mask", "offload_hidden",
                                                                "offload_degraded")}

    # the kernels read the whole head, gathered from the shards
    torch.testing.assert_close(out["head"], lm_head(single.teacher.model).weight, rtol=0, atol=0)
    # both teacher passes, VA, per-token KL, coefficients, loss and the (all-reduced) student gradient
    close(both["hidden"], saved["teacher_hidden"], "hidden")
    close(both["degraded"], saved["teacher_degraded"], "degraded")
    close(both["va"], va, "va")
    close(both["kl"], torch.cat(kl), "kl")
    close(both["token_weight"], result.token_weight, "token_weight")
    close(both["rollout_weight"], result.rollout_weight, "rollout_weight")
    assert torch.equal(both["high_mask"], result.high_mask)
    assert float(sum(r["loss"] for r in ranks)) == pytest.approx(float(result.loss), rel=1e-5)
    assert out["grads"].keys() == reference.keys()
    for name, grad in reference.items():
        close(out["grads"][name], grad, name)

    # each rank holds half the teacher (uneven tensors: rank 0 the larger piece), as the memory table says
    whole = sum(p.numel() * p.element_size() for p in single.teacher.parameters())
    assert sum(r["teacher_bytes"] for r in ranks) == whole
    rounding = sum(math.prod(p.shape[1:]) * p.element_size() for p in single.teacher.parameters())
    assert whole / 2 <= ranks[0]["teacher_bytes"] <= whole / 2 + rounding
    estimate = per_gpu_memory(single.student.config, single.teacher.model.config, Workload(1, 1, 1, 1, 1),
                              engine="ddp", gpus=2, bf16=False, teacher_sharding="fsdp2")
    assert ranks[0]["teacher_bytes"] == estimate["teacher"]
    assert ranks[0]["root_bytes"] == estimate["teacher_root"]  # what the kernels' read gathers

    # offload: every unit has FSDP2's CPU offload (on a CPU the shards stay where they are) and scores alike
    assert all(r["policies"] == {"OffloadPolicy"} and r["offload_policies"] == {"CPUOffloadPolicy"} for r in ranks)
    close(both["offload_hidden"], saved["teacher_hidden"], "offload_hidden")
    close(both["offload_degraded"], saved["teacher_degraded"], "offload_degraded")


def test_offloaded_teacher_in_one_process_trains_as_the_whole_teacher(make_config, tmp_path):
    """One process (one GPU that cannot hold both models): a process group of one is made for FSDP2,
    and a step's loss and gradient norm equal those with the whole teacher. Sharding without the
    offload would only add gathered copies there, so it is refused."""
    with pytest.raises(ValueError, match="^teacher_sharding:"):
        Trainer(make_config(teacher_sharding="fsdp2", output_dir=str(tmp_path / "refused")))
    whole = Trainer(make_config(max_steps=1, output_dir=str(tmp_path / "whole"))).step(0)
    offloaded = Trainer(make_config(max_steps=1, teacher_sharding="fsdp2", teacher_offload=True,
                                    output_dir=str(tmp_path / "offloaded")))
    try:
        assert engines.is_sharded(offloaded.teacher)
        step = offloaded.step(0)
    finally:
        offloaded.close()  # leaves the process group of one
    assert step["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert step["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-5)
