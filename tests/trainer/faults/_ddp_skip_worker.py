"""One rank of a 2-process gloo run in which only rank 1 sees a non-finite loss at step 2.

Usage (torchrun): _ddp_skip_worker.py CONFIG_JSON OUT_PREFIX   (writes OUT_PREFIX.<rank>.pt)
"""
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/trainer: _bootstrap
from _bootstrap import ensure_importable  # noqa: E402

ensure_importable()

import torch  # noqa: E402

from vaopd_trainer.config import load_config  # noqa: E402
from vaopd_trainer.train import Trainer  # noqa: E402


def main(config_json, out_prefix):
    with open(config_json) as f:
        trainer = Trainer(load_config(None, json.load(f)))
    real = trainer.loss_and_backward
    calls = []

    def nan_loss_on_rank_1(*args, **kwargs):
        result, va = real(*args, **kwargs)  # gradients stay finite: DDP averaged them over both ranks
        calls.append(None)
        if len(calls) == 2 and trainer.acc.process_index == 1:
            result = dataclasses.replace(result, loss=result.loss * float("nan"))
        return result, va

    trainer.loss_and_backward = nan_loss_on_rank_1
    outputs = trainer.train()
    torch.save({"skipped": [h["skipped_steps"] for h in outputs["history"]],
                "optimizer_steps": sorted({int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()}),
                "weights": {n: p.detach().clone() for n, p in trainer.module.named_parameters()}},
               f"{out_prefix}.{trainer.acc.process_index}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:3])
