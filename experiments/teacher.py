"""Train the tiny teacher on the fine-detail task and write it to ``experiments/assets/teacher``.

    python -m experiments.teacher            # ~6 min on 2 busy cores; regenerates the shipped weights

Deterministic in ``--seed`` (same weights on the same torch build and thread count). The teacher
sees a fresh batch of training-split images every step, so it cannot memorise a small set. Its
loss sits at chance on the digit for a few hundred steps before it learns to read the stripes,
hence 1000 steps: at 400 it had reached only 71% validation accuracy.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from vaopd_trainer.evaluate import evaluate

from . import task
from .supervised import new_model, save, train

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
TEACHER_DIR = os.path.join(ASSETS, "teacher")
SHAPE = dict(hidden=96, layers=3, vocab_padding=16)  # the trainer's tiny teacher shape


def accuracy(model, tokenizer, processor, samples, pixelated: bool) -> float:
    """Greedy \\boxed{} accuracy on the original images, or on their 10% pixelated copies."""
    from vaopd_kernels.pixelate import pixelate
    from vaopd_trainer.data import Sample
    from vaopd_trainer.sampling import Sampling, stop_token_ids

    if pixelated:
        samples = [Sample(pixelate(s.image, 0.1), s.question, s.answer) for s in samples]
    out = evaluate(model, samples, tokenizer, processor, batch_size=32, max_new_tokens=32, pixelate_ratio=0.1,
                   device="cpu", sampling=Sampling(do_sample=False), num_generations=1,
                   eos_token_ids=stop_token_ids(model, tokenizer), prompt_suffix=task.PROMPT_SUFFIX)
    return out["correct"] / out["count"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val", type=int, default=128, help="validation images for the final accuracy")
    parser.add_argument("--out", default=TEACHER_DIR)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny matmuls: a second thread mostly adds contention
    model, tokenizer, processor = new_model(seed=args.seed, **SHAPE)

    def batches(step):
        samples = task.dataset(args.seed, "train", args.batch, offset=step * args.batch)
        return samples, [task.template(s.answer) for s in samples]

    began = time.perf_counter()
    losses = train(model, tokenizer, processor, batches, steps=args.steps, lr=args.lr)
    seconds = time.perf_counter() - began
    val = task.dataset(args.seed, "val", args.val)
    report = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed, "train_seconds": round(seconds),
              "final_loss": sum(losses[-50:]) / len(losses[-50:]),
              "val_accuracy": accuracy(model, tokenizer, processor, val, pixelated=False),
              "val_accuracy_pixelated": accuracy(model, tokenizer, processor, val, pixelated=True), **SHAPE}
    save(model, tokenizer, processor, args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
