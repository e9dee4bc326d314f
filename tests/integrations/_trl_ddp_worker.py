"""One rank of the 2-process gloo test of VAOPDTrainer: its prompt's K completions (fixed, saved by the
test), the VA-OPD coefficients and the loss through TRL's code path, gradients all-reduced by DDP.

Usage (torchrun): _trl_ddp_worker.py SAVED_PT OUT_PT
"""
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "trainer")]
from _bootstrap import ensure_importable  # noqa: E402

ensure_importable()

import torch  # noqa: E402
import tiny_vlm as tv  # noqa: E402

from vaopd_kernels.integrations.trl import VAOPDConfig, VAOPDTrainer, full_head  # noqa: E402


class FixedCompletions(VAOPDTrainer):
    """Generation replaced by the completions the single-process run sampled, so both runs see one batch."""

    completions = None

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
        return [list(c) for c in self.completions]


def main(saved_path, out_path):
    saved = torch.load(saved_path, weights_only=False)
    proc = tv.processor()
    student, teacher = tv.models()
    student.load_state_dict(saved["student"])
    teacher.load_state_dict(saved["teacher"])
    k = saved["k"]
    args = VAOPDConfig(**tv.config_kwargs(__import__("pathlib").Path(tempfile.mkdtemp()), method="va_opd",
                                          num_generations=k, per_device_train_batch_size=k))
    trainer = FixedCompletions(student, teacher, args=args, train_dataset=tv.dataset(2), processing_class=proc)
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
    trainer.completions = saved["completions"][rank * k:(rank + 1) * k]
    trainer.model.train()
    model = trainer.accelerator.prepare(trainer.model)
    batch = trainer._generate_and_score_completions([tv.examples(world)[rank]] * k)
    loss = trainer.compute_loss(model, batch)
    trainer.accelerator.backward(loss)
    sharded = sharded_head_round_trip(world)
    if trainer.accelerator.is_main_process:
        grads = {n: p.grad for n, p in trainer.accelerator.unwrap_model(model).named_parameters() if p.grad is not None}
        torch.save({"world": world, "type": str(trainer.accelerator.distributed_type), "grads": grads,
                    "sharded": sharded}, out_path)
    # leave together: a rank that exits while its peer's gloo threads still run aborts the peer
    # ("terminate called without an active exception")
    trainer.accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


def sharded_head_round_trip(world):
    """An FSDP2-style head (a DTensor sharded by rows): full_head gives the whole matrix, and the gradient
    flows back into each rank's shard."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    weight = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    upstream = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    shard = distribute_tensor(weight, mesh, [Shard(0)]).requires_grad_()
    full = full_head(shard, torch.float32)
    (full * upstream).sum().backward()
    rows = slice(torch.distributed.get_rank() * 6 // world, (torch.distributed.get_rank() + 1) * 6 // world)
    ok = torch.tensor([torch.equal(full.detach(), weight), torch.equal(shard.grad.to_local(), upstream[rows])],
                      dtype=torch.int64)
    torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)  # every rank's shard
    return {"full_equal": bool(ok[0]), "grad_equal": bool(ok[1])}


if __name__ == "__main__":
    main(*sys.argv[1:3])
