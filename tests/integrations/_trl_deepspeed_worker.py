"""One rank of the 2-process DeepSpeed test of VAOPDTrainer (torchrun, gloo on a CPU): a short training run
on fixed completions (no sampling) under the ZeRO stage given, its logged losses saved by rank 0.

Usage (torchrun): _trl_deepspeed_worker.py STAGE METHOD OUT_PT
"""
import os
import sys
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "trainer")]
from _bootstrap import ensure_importable  # noqa: E402

ensure_importable()

import torch  # noqa: E402
import tiny_vlm as tv  # noqa: E402

from accelerate import PartialState  # noqa: E402

from vaopd_kernels.integrations.trl import VAOPDConfig, VAOPDTrainer  # noqa: E402

# every prompt gets these completions in turn (token ids of the tiny tokenizer), so all runs train on one batch
COMPLETIONS = [[40, 41, 42, 43], [50, 51, 52], [60, 61, 62, 63, 64, 65]]


class FixedCompletions(VAOPDTrainer):
    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
        return [list(COMPLETIONS[i % len(COMPLETIONS)]) for i in range(len(prompt_ids))]


def main(stage, method, out_path):
    # transformers gives a DeepSpeed run no process-group backend, and a CPU needs gloo: the state is set up
    # first (as `accelerate launch` with a DeepSpeed config would) and the trainer told to use it
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    student, teacher = tv.models()
    # persistence threshold 0: ZeRO-3 partitions even these tiny heads (by default it keeps small parameters whole)
    deepspeed = {"zero_optimization": {"stage": int(stage), "stage3_param_persistence_threshold": 0},
                 "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                 "gradient_clipping": "auto"}
    args = VAOPDConfig(**tv.config_kwargs(Path(out_path).parent / f"zero{stage}", use_cpu=False, deepspeed=deepspeed,
                                          accelerator_config={"use_configured_state": True}, method=method,
                                          num_generations=2, max_steps=2, max_grad_norm=1.0))
    trainer = FixedCompletions(student, teacher, args=args, train_dataset=tv.dataset(4),
                               processing_class=tv.processor())
    trainer.train()
    if trainer.accelerator.is_main_process:
        heads = [m.get_output_embeddings().weight for m in (trainer.model, trainer.teacher_model.module)]
        torch.save({"world": trainer.accelerator.num_processes, "engine": type(trainer.model_wrapped).__name__,
                    "stage": trainer.accelerator.state.deepspeed_plugin.zero_stage,
                    "logs": [e for e in trainer.state.log_history if "loss" in e],
                    # outside a forward, a ZeRO-3 rank holds an empty placeholder for each partitioned parameter
                    "head_numel": [w.numel() for w in heads]}, out_path)
    trainer.accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()
    # Gloo's worker threads can still hold finished async work (tensors with Python references) from
    # ZeRO-3's collectives when the interpreter tears down, which then aborts the process now and then
    # ("terminate called without an active exception", pytorch/pytorch#179291). The results are saved:
    # leave without the interpreter's teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:4])
