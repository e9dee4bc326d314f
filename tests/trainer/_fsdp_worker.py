"""One rank of the 2-process gloo FSDP2 test. The student is sharded by ``engines.shard_fsdp2`` with the
plugin accelerate builds from the shipped ``configs/accelerate/fsdp2.yaml`` (through accelerate's own
launch parsing), i.e. the wrapping ``accelerate launch --config_file configs/accelerate/fsdp2.yaml``
gives on GPUs; only mixed precision stays off (fp32 on the CPU, for exact comparisons). The teacher
is sharded as the config says (``teacher_sharding``).

Usage (torchrun): _fsdp_worker.py MODE CONFIG_JSON OUT_PT [BATCH_PT]
  grad:  the gradient (gathered) of this rank's half of a fixed batch, then a full run
         (generation, evaluation, loss, backward, optimizer, checkpoints, export)
  train: a full run only (e.g. resuming from a checkpoint named in the config)
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _bootstrap import REPO, ensure_importable  # noqa: E402

ensure_importable()

import torch  # noqa: E402

from vaopd_trainer.config import load_config  # noqa: E402
from vaopd_trainer.train import Trainer  # noqa: E402

from _fixed_batch import half_batch_backward, run_and_save  # noqa: E402

FSDP2_YAML = os.path.join(REPO, "configs", "accelerate", "fsdp2.yaml")


def fsdp_plugin_from_accelerate_config(path: str, num_processes: int):
    """The FullyShardedDataParallelPlugin that ``accelerate launch --config_file path`` hands each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", path, "--num_processes", str(num_processes), "x.py"])
    env = prepare_multi_gpu_env(_validate_launch_command(args)[0])
    os.environ.update({k: v for k, v in env.items() if k.startswith("FSDP_")})
    return FullyShardedDataParallelPlugin()


def full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def local_bytes(tensors) -> int:
    """Bytes this rank holds (its shard of each DTensor)."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    return sum(t.numel() * t.element_size() for t in local)


def make_trainer(config_json):
    with open(config_json) as f:
        cfg = load_config(None, json.load(f))
    return Trainer(cfg, fsdp_plugin=fsdp_plugin_from_accelerate_config(FSDP2_YAML, int(os.environ["WORLD_SIZE"])))


def gradient(trainer, batch_path):
    batch = half_batch_backward(trainer, batch_path)
    grads = {n: full(p.grad) for n, p in trainer.module.named_parameters() if p.grad is not None}
    sharded = sum(hasattr(p, "full_tensor") for p in trainer.module.parameters())
    memory = {"parameters": local_bytes(trainer.module.parameters()),
              "gradients": local_bytes(p.grad for p in trainer.module.parameters()),
              "teacher": local_bytes(trainer.teacher.parameters())}
    norm = float(trainer.acc.clip_grad_norm_(trainer.module.parameters(), trainer.cfg.max_grad_norm))
    trainer.optimizer.step()
    memory["optimizer"] = local_bytes(t for s in trainer.optimizer.state.values() for t in s.values())
    trainer.optimizer.zero_grad(set_to_none=True)
    return {"grads": grads, "grad_norm": norm, "sharded_params": sharded, "memory": memory,
            "uneven_generation": uneven_generation(trainer, batch)}


def uneven_generation(trainer, batch) -> int:
    """Ranks that stop generating at different steps (here: different lengths) must not deadlock:
    every decode step all-gathers the layers, so a finished rank keeps joining (synced_gpus)."""
    rank = trainer.acc.process_index
    prompts = batch.rows(0, 2)
    out = trainer.inner.run_on_student(
        lambda student: student.generate(**prompts.model_inputs(), max_new_tokens=2 + 3 * rank, do_sample=False,
                                         pad_token_id=trainer.tokenizer.pad_token_id))
    return out.shape[1] - prompts.input_ids.shape[1]


def main(mode, config_json, out_path, batch_path=None):
    trainer = make_trainer(config_json)
    out = {"world": trainer.acc.num_processes}
    if mode == "grad":
        out.update(gradient(trainer, batch_path))
        trainer = make_trainer(config_json)  # fresh weights and optimizer for the run
    run_and_save(trainer, out, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
