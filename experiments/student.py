"""The format-only student: the answer template with *random* answers, so it starts knowing the
format (and a uniform guess over the answers) but not how to read the image.

    python -m experiments.student            # ~1 min; regenerates experiments/assets/student

The answer in each training example is drawn independently of its image, so nothing in the data
rewards looking at the marks: the student's visual skill must come from distillation.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from . import task
from .supervised import new_model, save, train
from .teacher import ASSETS, accuracy

STUDENT_DIR = os.path.join(ASSETS, "student")
SHAPE = dict(hidden=64, layers=2, vocab_padding=8)  # the trainer's tiny student shape


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=STUDENT_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny matmuls: a second thread mostly adds contention
    model, tokenizer, processor = new_model(seed=args.seed, **SHAPE)

    def batches(step):
        samples = task.dataset(args.seed, "train", args.batch, offset=step * args.batch)
        guesses = np.random.default_rng([args.seed, step]).choice(task.ANSWERS, size=len(samples))
        return samples, [task.template(str(g)) for g in guesses]

    losses = train(model, tokenizer, processor, batches, steps=args.steps, lr=args.lr)
    val = task.dataset(args.seed, "val", 128)
    report = {"steps": args.steps, "seed": args.seed, "final_loss": sum(losses[-50:]) / len(losses[-50:]),
              "val_accuracy": accuracy(model, tokenizer, processor, val, pixelated=False), **SHAPE}
    save(model, tokenizer, processor, args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
