"""One rank of the 2-process DeepSpeed ZeRO-2 test, started by ``accelerate launch --config_file
configs/accelerate/deepspeed_zero2.yaml`` (on a CPU: gloo).

Usage: _deepspeed_worker.py MODE CONFIG_JSON OUT_PT [BATCH_PT]
  step:  the trainer's own step on this rank's half of a fixed, micro-batched rollout batch, then a
         full run (generation, evaluation, updates, checkpoints, export)
  train: a full run only (e.g. resuming from a checkpoint named in the config)
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

from _fixed_batch import my_rows, run_and_save  # noqa: E402


def make_trainer(config_json):
    with open(config_json) as f:
        return Trainer(load_config(None, json.load(f)))


def fixed_step(trainer, batch_path):
    batch = torch.load(batch_path, weights_only=False)["batch"]
    mine = batch.rows(*my_rows(trainer, batch.input_ids.shape[0]))
    trainer.rollouts = lambda step: mine  # the fixed batch instead of sampling; the rest is the real step
    metrics = trainer.step(0)
    return {"world": trainer.acc.num_processes, "engine": type(trainer.module).__name__,
            "optimizer_steps": trainer.module.global_steps, "clipping": trainer.module.gradient_clipping(),
            "metrics": metrics,
            "params": {n: p.detach().clone() for n, p in trainer.inner.named_parameters()}}


def main(mode, config_json, out_path, batch_path=None):
    out = {}
    if mode == "step":
        out.update(fixed_step(make_trainer(config_json), batch_path))
    trainer = make_trainer(config_json)
    run_and_save(trainer, out, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
