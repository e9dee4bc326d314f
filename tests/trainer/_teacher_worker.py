"""One rank of the 2-process gloo test of the sharded teacher (``teacher_sharding: fsdp2``) beside the
DDP student: this rank's half of the fixed batch (``_fixed_batch.py``) scored by the sharded teacher
and through the trainer's loss and backward; then scored again by a second copy of the teacher whose
shards are offloaded (``teacher_offload``).

Usage (torchrun): _teacher_worker.py CONFIG_JSON BATCH_PT OUT_PT
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _bootstrap import ensure_importable  # noqa: E402

ensure_importable()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.fsdp import FSDPModule  # noqa: E402

from vaopd_trainer import engines  # noqa: E402
from vaopd_trainer.config import load_config  # noqa: E402
from vaopd_trainer.loss import Teacher  # noqa: E402
from vaopd_trainer.models import lm_head, load_model  # noqa: E402
from vaopd_trainer.train import Trainer  # noqa: E402

from _fixed_batch import my_rows  # noqa: E402
from _fsdp_worker import local_bytes  # noqa: E402


def offload_policies(teacher) -> set:
    """The offload policy of every FSDP2 unit of ``teacher``, by class name."""
    return {type(group.offload_policy).__name__ for m in teacher.modules() if isinstance(m, FSDPModule)
            for group in m._get_fsdp_state()._fsdp_param_groups}


def main(config_json, batch_path, out_path):
    with open(config_json) as f:
        trainer = Trainer(load_config(None, json.load(f)))
    saved = torch.load(batch_path, weights_only=False)
    batch = saved["batch"].rows(*my_rows(trainer, saved["batch"].input_ids.shape[0]))
    hidden, degraded = trainer.teacher(batch), trainer.teacher(batch, degraded=True)
    kl = []  # the per-token KL of each student forward
    trainer.inner.register_forward_hook(lambda module, args, out: kl.append(out[1].kl))
    result, va = trainer.loss_and_backward(batch, hidden, degraded)
    with engines.gathered(trainer.teacher):
        head = lm_head(trainer.teacher.model).weight.clone()
        root_bytes = local_bytes(p for p in trainer.teacher.parameters() if not hasattr(p, "to_local"))
    mine = dict(hidden=hidden, degraded=degraded, va=va, kl=torch.cat(kl), loss=result.loss.detach(),
                token_weight=result.token_weight, rollout_weight=result.rollout_weight, high_mask=result.high_mask,
                teacher_bytes=local_bytes(trainer.teacher.parameters()), root_bytes=root_bytes,
                policies=offload_policies(trainer.teacher))

    copy = Teacher(load_model(trainer.cfg.teacher_model, torch.float32, torch.device("cpu")))
    offloaded = engines.shard_teacher(copy, offload=True)
    mine.update(offload_hidden=offloaded(batch), offload_degraded=offloaded(batch, degraded=True),
                offload_policies=offload_policies(offloaded))
    ranks = [None] * trainer.acc.num_processes
    dist.all_gather_object(ranks, mine)
    if trainer.acc.is_main_process:
        grads = {n: p.grad for n, p in trainer.inner.named_parameters() if p.grad is not None}
        torch.save({"ranks": ranks, "grads": grads, "head": head}, out_path)
    trainer.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
