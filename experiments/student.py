"""The tiny students of the stripe task, written to experiments/assets.

    python -m experiments.student blind      # ~1 min; regenerates experiments/assets/student
    python -m experiments.student sighted    # ~1 min; regenerates experiments/assets/sighted_student

blind: the answer template with *random* answers, so it starts knowing the format (and a uniform
guess over the answers) but not how to read the image. The answer in each training example is
drawn independently of its image, so nothing in the data rewards looking at the stripes.

sighted: the blind student given *partial* visual skill, as the paper's 2B student has: supervised
on the true template answers, stopped by a rule fixed in advance (greedy \\boxed{} accuracy on
``--num_val`` validation images every ``--check_every`` steps; the first check at or above
``--stop_accuracy`` ends it). The blind student needs hundreds of distillation steps before it reads
the width at all; this one starts where distillation has something to sharpen, which is what
`make demo` shows within a few minutes of CPU.
"""
from __future__ import annotations

import argparse
import os
from typing import List, Tuple

import numpy as np
import torch

from . import task
from .supervised import checked_stop, load, new_model, save, train
from .teacher import ASSETS, accuracy

STUDENT_DIR = os.path.join(ASSETS, "student")
SIGHTED_DIR = os.path.join(ASSETS, "sighted_student")
SHAPE = dict(hidden=64, layers=2, vocab_padding=8)  # the trainer's tiny student shape


def give_partial_skill(model, tokenizer, processor, *, seed: int, batch: int, lr: float, max_steps: int,
                       check_every: int, stop_accuracy: float, num_val: int) -> Tuple[int, List[list]]:
    """Supervised training on the short stripe template with the true widths until the first check
    (greedy accuracy on ``num_val`` validation images, every ``check_every`` steps) reaches
    ``stop_accuracy``, or ``max_steps``. Returns (steps run, [[step, accuracy], ...])."""
    val = task.dataset(seed, "val", num_val)
    checks: list = []

    def batches(step):
        samples = task.dataset(seed, "train", batch, offset=step * batch)
        return samples, [task.template(s.answer) for s in samples]

    stop = checked_stop(lambda: {"accuracy": accuracy(model, tokenizer, processor, val, pixelated=False)},
                        check_every=check_every, reached=lambda r: r["accuracy"] >= stop_accuracy, checks=checks)
    losses = train(model, tokenizer, processor, batches, steps=max_steps, lr=lr, stop=stop)
    return len(losses), [list(c[:2]) for c in checks]


def blind(args) -> None:
    model, tokenizer, processor = new_model(seed=args.seed, **SHAPE)

    def batches(step):
        samples = task.dataset(args.seed, "train", args.batch, offset=step * args.batch)
        guesses = np.random.default_rng([args.seed, step]).choice(task.ANSWERS, size=len(samples))
        return samples, [task.template(str(g)) for g in guesses]

    losses = train(model, tokenizer, processor, batches, steps=args.steps, lr=args.lr)
    val = task.dataset(args.seed, "val", 128)
    report = {"steps": args.steps, "seed": args.seed, "final_loss": sum(losses[-50:]) / len(losses[-50:]),
              "val_accuracy": accuracy(model, tokenizer, processor, val, pixelated=False), **SHAPE}
    save(model, tokenizer, processor, args.out or STUDENT_DIR, report)


def sighted(args) -> None:
    model, tokenizer, processor = load(args.source)
    steps_run, checks = give_partial_skill(model, tokenizer, processor, seed=args.seed, batch=args.batch, lr=args.lr,
                                           max_steps=args.steps, check_every=args.check_every,
                                           stop_accuracy=args.stop_accuracy, num_val=args.num_val)
    report = {"source": os.path.relpath(args.source, ASSETS), "seed": args.seed, "batch": args.batch, "lr": args.lr,
              "steps_run": steps_run, "max_steps": args.steps, "checks": checks,
              "stop_rule": f"first check (every {args.check_every} steps, {args.num_val} val images, greedy) with "
                           f"accuracy >= {args.stop_accuracy}",
              "val_accuracy": accuracy(model, tokenizer, processor, task.dataset(args.seed, "val", 500),
                                       pixelated=False), "val_images": 500}
    save(model, tokenizer, processor, args.out or SIGHTED_DIR, report)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("blind", "sighted"))
    parser.add_argument("--steps", type=int, default=None, help="blind: 200; sighted: at most 1000")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--source", default=STUDENT_DIR, help="sighted: the model folder to start from")
    parser.add_argument("--check_every", type=int, default=25, help="sighted")
    parser.add_argument("--stop_accuracy", type=float, default=0.6, help="sighted")
    parser.add_argument("--num_val", type=int, default=100, help="sighted")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    args.steps = args.steps or (200 if args.which == "blind" else 1000)
    torch.set_num_threads(1)  # tiny matmuls: a second thread mostly adds contention
    (blind if args.which == "blind" else sighted)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
