"""Setup artefacts of the dilution experiment (``code_task``), written to experiments/assets.

    python -m experiments.code_setup teacher   # the shipped teacher fine-tuned on the new format
    python -m experiments.code_setup student   # the start student: code flipped, partly skilled

Teacher: ``experiments/assets/teacher`` (reads stripe widths) trained further on the code format
with the true synonyms and true widths.

Start student: ``experiments/assets/student`` (the format-only student of the stripe toy) given
partial visual skill, then the code format with *every slot flipped* (the teacher will disagree at
all 8) and the *true* width, in two phases, each stopped by a rule fixed in advance (greedy
\\boxed{} accuracy on 100 validation images every ``--check_every`` (25) steps):

- A, the short stripe template (``task.template``), where the width digit sits a few tokens after
  the image: stop at the first check with accuracy >= ``--stop_accuracy`` (45%). On the code format
  alone this student stayed at chance for 2,000 steps (docs/preregistration.md, setup exploration).
- B, the code format: stop at the first check where the format rate and the flipped-slot share
  are >= 95% and the accuracy is >= 45% again.

A first hit above 70%, or no hit within the step caps, fails the start gate
(``experiments.code_gates``); nothing is retried. Both artefacts are deterministic in ``--seed`` on
one torch build and thread count.
"""
from __future__ import annotations

import argparse
import os
import time

import torch


from . import code_task
from .code_eval import flipped_slot_share, greedy_eval, pixelated
from .student import give_partial_skill
from .supervised import checked_stop, load, save, train
from .teacher import ASSETS

TEACHER_DIR = os.path.join(ASSETS, "code_teacher")
STUDENT_DIR = os.path.join(ASSETS, "code_student")
SOURCE = {"teacher": os.path.join(ASSETS, "teacher"), "student": os.path.join(ASSETS, "student")}
FLUENT = 0.95  # the start student's format rate and flipped-slot share: phase B's stop and the gates


def _fluent_and_skilled(result: dict, stop_accuracy: float) -> bool:
    fluent = result["format_rate"] >= FLUENT and flipped_slot_share(result) >= FLUENT
    return fluent and result["accuracy"] >= stop_accuracy


def build(which: str, *, steps: int, batch: int, lr: float, seed: int, out: str, check_every: int = 25,
          stop_accuracy: float = 0.45, num_val: int = 100, source: str = None, short_steps: int = 1000) -> dict:
    """The teacher (``steps`` updates on the code format) or the start student in two phases, each
    stopped by its rule (module docstring): A, at most ``short_steps`` on the short stripe template;
    B, at most ``steps`` on the code format with the code flipped."""
    model, tokenizer, processor = load(source or SOURCE[which])
    student = which == "student"
    val = code_task.dataset(seed, "val", num_val)
    report = {"source": os.path.relpath(source or SOURCE[which], ASSETS), "batch": batch, "lr": lr, "seed": seed,
              "flipped_code": student}
    began = time.perf_counter()
    if student:  # phase A: partial visual skill where the width sits near the image
        short_steps_run, short_checks = give_partial_skill(model, tokenizer, processor, seed=seed, batch=batch, lr=lr,
                                                           max_steps=short_steps, check_every=check_every,
                                                           stop_accuracy=stop_accuracy, num_val=num_val)
        report.update(short_steps_run=short_steps_run, short_max_steps=short_steps, short_checks=short_checks)

    def batches(step):
        samples = code_task.dataset(seed, "train", batch, offset=step * batch)
        return samples, [code_task.response(code_task.code_of(s.question), s.answer, student) for s in samples]

    checks: list = []
    stop = None
    if student:  # phase B: the code format, flipped, until fluent and still partly skilled
        stop = checked_stop(lambda: greedy_eval(model, val, tokenizer, processor, reliance=False),
                        check_every=check_every, reached=lambda r: _fluent_and_skilled(r, stop_accuracy), checks=checks)
    losses = train(model, tokenizer, processor, batches, steps=steps, lr=lr, stop=stop)
    report.update(steps_run=len(losses), max_steps=steps, train_seconds=round(time.perf_counter() - began),
                  final_loss=sum(losses[-20:]) / len(losses[-20:]),
                  val=greedy_eval(model, val, tokenizer, processor, reliance=False),
                  val_pixelated=greedy_eval(model, pixelated(val), tokenizer, processor, reliance=False))
    if student:
        report.update(stop_rule=f"A: first check (every {check_every} steps, {num_val} val images, short template) "
                                f"with accuracy >= {stop_accuracy}; B: first check with format rate and flipped-slot "
                                f"share >= {FLUENT} and accuracy >= {stop_accuracy}",
                      checks=[c[:2] for c in checks], check_details=[c[2] for c in checks])
    save(model, tokenizer, processor, out, report)
    return report



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("teacher", "student"))
    parser.add_argument("--steps", type=int, default=None, help="teacher: 400; student: at most 400 (phase B)")
    parser.add_argument("--short_steps", type=int, default=1000, help="student: at most this many in phase A")
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
    build(args.which, steps=args.steps or 400, batch=args.batch,
          lr=args.lr or (2e-3 if student else 1e-3), seed=args.seed if args.seed is not None else int(student),
          out=args.out or (STUDENT_DIR if student else TEACHER_DIR), check_every=args.check_every,
          stop_accuracy=args.stop_accuracy, num_val=args.num_val, source=args.source, short_steps=args.short_steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
