"""Setup artefacts of the dilution experiment (``code_task``), written to experiments/assets.

    python -m experiments.code_setup teacher   # the shipped teacher fine-tuned on the new format
    python -m experiments.code_setup student   # the start student: code flipped, partly skilled

Teacher: ``experiments/assets/teacher`` (reads stripe widths) trained further on the code format
with the true synonyms and true widths.

Start student: ``experiments/assets/student`` (the format-only student of the stripe toy) trained
on the code format with *every slot flipped* (the teacher will disagree at all 8) and the *true*
width. Its visual skill is stopped part-way by a rule fixed in advance: greedy \\boxed{} accuracy
on 100 validation images is measured every ``--check_every`` (25) steps and training stops at the first
check that reaches ``--stop_accuracy`` (45%). A first hit above 70% or no hit within ``--steps``
fails the start gate (``experiments.code_gates``); nothing is retried.
Both are deterministic in ``--seed`` on one torch build and thread count.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from vaopd_trainer.models import load_model, load_processing

from . import code_task
from .code_eval import greedy_eval, pixelated
from .supervised import save, train
from .teacher import ASSETS

TEACHER_DIR = os.path.join(ASSETS, "code_teacher")
STUDENT_DIR = os.path.join(ASSETS, "code_student")
SOURCE = {"teacher": os.path.join(ASSETS, "teacher"), "student": os.path.join(ASSETS, "student")}


def _load(path: str):
    tokenizer, processor = load_processing(path, *code_task.PIXEL_BUDGET)
    return load_model(path, torch.float32, torch.device("cpu")), tokenizer, processor


def build(which: str, *, steps: int, batch: int, lr: float, seed: int, out: str, check_every: int = 25,
          stop_accuracy: float = 0.45, num_val: int = 100, source: str = None) -> dict:
    model, tokenizer, processor = _load(source or SOURCE[which])
    flipped = which == "student"
    val = code_task.dataset(seed, "val", num_val)
    checks = []

    def batches(step):
        samples = code_task.dataset(seed, "train", batch, offset=step * batch)
        return samples, [code_task.response(code_task.code_of(s.question), s.answer, flipped) for s in samples]

    def stop(done: int) -> bool:
        if done % check_every:
            return False
        accuracy = greedy_eval(model, val, tokenizer, processor, reliance=False)["accuracy"]
        checks.append((done, accuracy))
        print(f"check at step {done}: validation accuracy {accuracy:.3f}")
        return accuracy >= stop_accuracy

    began = time.perf_counter()
    losses = train(model, tokenizer, processor, batches, steps=steps, lr=lr, stop=stop if flipped else None)
    report = {"source": os.path.relpath(source or SOURCE[which], ASSETS), "steps_run": len(losses), "max_steps": steps,
              "batch": batch, "lr": lr, "seed": seed, "flipped_code": flipped, "train_seconds": round(time.perf_counter() - began),
              "final_loss": sum(losses[-20:]) / len(losses[-20:]),
              "val": greedy_eval(model, val, tokenizer, processor, reliance=False),
              "val_pixelated": greedy_eval(model, pixelated(val), tokenizer, processor, reliance=False)}
    if flipped:
        report.update(stop_rule=f"first check (every {check_every} steps, {num_val} val images) with accuracy >= "
                                f"{stop_accuracy}", checks=checks)
    save(model, tokenizer, processor, out, report)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("teacher", "student"))
    parser.add_argument("--steps", type=int, default=None, help="teacher: 400; student: at most 2000")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None, help="teacher: 1e-3 (fine-tune); student: 2e-3")
    parser.add_argument("--seed", type=int, default=None, help="teacher: 0; student: 1")
    parser.add_argument("--check_every", type=int, default=25)
    parser.add_argument("--stop_accuracy", type=float, default=0.45)
    parser.add_argument("--num_val", type=int, default=100)
    parser.add_argument("--source", default=None, help="model folder to start from (default: the stripe toy's)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny matmuls: a second thread mostly adds contention
    student = args.which == "student"
    build(args.which, steps=args.steps or (2000 if student else 400), batch=args.batch,
          lr=args.lr or (2e-3 if student else 1e-3), seed=args.seed if args.seed is not None else int(student),
          out=args.out or (STUDENT_DIR if student else TEACHER_DIR), check_every=args.check_every,
          stop_accuracy=args.stop_accuracy, num_val=args.num_val, source=args.source)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
