"""One rank of the 2-process gloo test: gradient of its half of a fixed batch, all-reduced by DDP.

Usage (torchrun): _ddp_worker.py CONFIG_JSON BATCH_PT OUT_PT
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

from _fixed_batch import half_batch_backward  # noqa: E402


def main(config_json, batch_path, out_path):
    with open(config_json) as f:
        trainer = Trainer(load_config(None, json.load(f)))
    half_batch_backward(trainer, batch_path)
    if trainer.acc.is_main_process:
        grads = {n: p.grad for n, p in trainer.acc.unwrap_model(trainer.module).named_parameters() if p.grad is not None}
        torch.save({"world": trainer.acc.num_processes, "grads": grads}, out_path)
    trainer.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
