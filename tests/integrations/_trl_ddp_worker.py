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

from vaopd_kernels.integrations.trl import VAOPDConfig, VAOPDTrainer  # noqa: E402


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
    if trainer.accelerator.is_main_process:
        grads = {n: p.grad for n, p in trainer.accelerator.unwrap_model(model).named_parameters() if p.grad is not None}
        torch.save({"world": world, "type": str(trainer.accelerator.distributed_type), "grads": grads}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
