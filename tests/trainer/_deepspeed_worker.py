"""One rank of the 2-process DeepSpeed ZeRO-2 test, started by ``accelerate launch --config_file
configs/accelerate/deepspeed_zero2.yaml`` (on a CPU: gloo). It runs the trainer's own step on its
half of a fixed, micro-batched rollout batch.

Usage: _deepspeed_worker.py CONFIG_JSON BATCH_PT OUT_PT
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _bootstrap import ensure_importable  # noqa: E402

ensure_importable()

import torch  # noqa: E402

from vaopd_trainer.config import load_config  # noqa: E402
from vaopd_trainer.train import Trainer  # noqa: E402


def main(config_json, batch_path, out_path):
    with open(config_json) as f:
        trainer = Trainer(load_config(None, json.load(f)))
    batch = torch.load(batch_path, weights_only=False)["batch"]
    rank, world = trainer.acc.process_index, trainer.acc.num_processes
    per_rank = batch.input_ids.shape[0] // world
    mine = batch.rows(rank * per_rank, (rank + 1) * per_rank)
    trainer.rollouts = lambda step: mine  # the fixed batch instead of sampling; the rest is the real step
    metrics = trainer.step(0)
    if trainer.acc.is_main_process:
        torch.save({"world": world, "engine": type(trainer.module).__name__, "optimizer_steps": trainer.module.global_steps,
                    "clipping": trainer.module.gradient_clipping(),
                    "metrics": metrics, "params": {n: p.detach().clone() for n, p in trainer.inner.named_parameters()}},
                   out_path)


if __name__ == "__main__":
    main(*sys.argv[1:4])
