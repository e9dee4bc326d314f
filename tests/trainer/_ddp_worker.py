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


def main(config_json, batch_path, out_path):
    with open(config_json) as f:
        trainer = Trainer(load_config(None, json.load(f)))
    saved = torch.load(batch_path, weights_only=False)
    batch, th, td = saved["batch"], saved["teacher_hidden"], saved["teacher_degraded"]
    rank, world = trainer.acc.process_index, trainer.acc.num_processes
    per_rank = batch.input_ids.shape[0] // world
    lo_row, hi_row = rank * per_rank, (rank + 1) * per_rank
    cu = batch.cu_seqlens().tolist()
    mine = batch.rows(lo_row, hi_row)
    trainer.loss_and_backward(mine, th[cu[lo_row]:cu[hi_row]], td[cu[lo_row]:cu[hi_row]])
    if trainer.acc.is_main_process:
        grads = {n: p.grad for n, p in trainer.acc.unwrap_model(trainer.module).named_parameters() if p.grad is not None}
        torch.save({"world": world, "grads": grads}, out_path)
    trainer.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
