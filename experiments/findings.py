"""Measurements behind the demo's findings (docs/trainer.md, "What the demo shows"), on the stripe task.

    python -m experiments.findings               # all three, about 3 minutes on 2 CPU cores
    python -m experiments.findings eval_noise    # or one: eval_noise | teacher_copies | wrong_rollout_va

- eval_noise: the spread of one student's held-out accuracy (avg@4, T = 1) over 8 sampling seeds, on
  32 images and on the demo's 256, for the blind and the partially sighted start students.
- teacher_copies: with a wrong width already written ("The stripes are w px. \\boxed{"), the teacher's
  probability of boxing that same wrong w, and of boxing the true width instead.
- wrong_rollout_va: on the blind student's first-step rollouts (4 batches of the demo), the paper's
  VA of right and wrong rollouts: on the width reading (the first digit), anywhere (all zero, the
  largest), in the high groups (share of zero-VA tokens), and the rollouts' sibling weights.

Writes ``bench/results/distill-sanity/findings.json`` and prints it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
from typing import Dict, List

import torch

from vaopd_trainer.config import load_config
from vaopd_trainer.data import load_prepared
from vaopd_trainer.evaluate import evaluate
from vaopd_trainer.sampling import Sampling, stop_token_ids

from . import task
from .demo import CONFIG, REPO
from .sanity import OUT_DIR
from .student import SIGHTED_DIR, STUDENT_DIR
from .supervised import load, next_token_log_probs
from .teacher import TEACHER_DIR

SEEDS = range(8)


def _val() -> List:
    cfg = load_config(CONFIG)
    return [s.decoded() for s in load_prepared(os.path.join(REPO, cfg.eval_file))]


def eval_noise() -> Dict[str, dict]:
    val, out = _val(), {}
    for name, path in (("blind", STUDENT_DIR), ("sighted", SIGHTED_DIR)):
        model, tokenizer, processor = load(path)
        for images in (32, len(val)):
            accuracies = []
            for seed in SEEDS:
                torch.manual_seed(seed)
                sums = evaluate(model, val[:images], tokenizer, processor, batch_size=128, max_new_tokens=40,
                                pixelate_ratio=0.1, device="cpu", sampling=Sampling(temperature=1.0, top_p=1.0),
                                num_generations=4, eos_token_ids=stop_token_ids(model, tokenizer),
                                prompt_suffix=task.PROMPT_SUFFIX)
                accuracies.append(sums["correct"] / sums["count"])
            out[f"{name}, {images} images"] = {"min": min(accuracies), "max": max(accuracies),
                                               "sd": statistics.stdev(accuracies), "seeds": accuracies}
    return out


@torch.no_grad()
def teacher_copies(images: int = 256) -> Dict[str, float]:
    model, tokenizer, processor = load(TEACHER_DIR)
    samples = _val()[:images]
    copy, right = [], []
    for shift in (1, 2):  # each image with both wrong widths
        wrong = [str((int(s.answer) - 1 + shift) % 3 + 1) for s in samples]
        texts = [task.template(w) for w in wrong]
        probs = next_token_log_probs(model, tokenizer, processor, samples, texts,
                                     [len(t) - 2 for t in texts]).exp()  # the boxed digit
        for row, (s, w) in enumerate(zip(samples, wrong)):
            copy.append(float(probs[row, tokenizer.convert_tokens_to_ids(w)]))
            right.append(float(probs[row, tokenizer.convert_tokens_to_ids(s.answer)]))
    return {"rows": len(copy), "p_copy_wrong_width": statistics.fmean(copy), "p_true_width": statistics.fmean(right)}


def wrong_rollout_va(batches: int = 4) -> Dict[str, float]:
    from vaopd_trainer.train import Trainer

    rollouts = []
    for seed in range(batches):  # each a fresh start student, so every rollout is the start student's
        cfg = load_config(CONFIG, {"student_model": os.path.relpath(STUDENT_DIR, REPO)})
        cfg = dataclasses.replace(cfg, seed=seed, max_steps=1, val_before_train=False, num_visualize=10 ** 6,
                                  report_to="none", output_dir=os.path.join("runs", "findings", str(seed)))
        trainer = Trainer(cfg)
        trainer.step(0)
        rollouts += trainer.last_rollouts
        trainer.close()
    out: Dict[str, float] = {"rollouts": len(rollouts)}
    for outcome, group in (("right", [r for r in rollouts if r["right"]]), ("wrong", [r for r in rollouts if not r["right"]])):
        high_va = [v for r in group for v, h in zip(r["va"], r["high"]) if h]
        # the width reading: the response's first digit token
        answer_va = [v for v in (next((v for t, v in zip(r["tokens"], r["va"]) if t.isdigit()), None)
                                 for r in group) if v is not None]  # a response without a digit has none
        out.update({f"{outcome}_rollouts": len(group),
                    f"{outcome}_all_zero_va_share": statistics.fmean(max(r["va"]) == 0 for r in group),
                    f"{outcome}_answer_token_zero_va_share": statistics.fmean(v == 0 for v in answer_va),
                    f"{outcome}_answer_token_mean_va": statistics.fmean(answer_va),
                    f"{outcome}_max_va_mean": statistics.fmean(max(r["va"]) for r in group),
                    f"{outcome}_high_group_zero_va_share": statistics.fmean(v == 0 for v in high_va),
                    f"{outcome}_mean_sibling_weight": statistics.fmean(r["weight"] for r in group)})
    return out


FINDINGS = {"eval_noise": eval_noise, "teacher_copies": teacher_copies, "wrong_rollout_va": wrong_rollout_va}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # no choices=: argparse refuses an empty list against choices (the default, every finding)
    parser.add_argument("which", nargs="*", metavar="FINDING", help=f"any of {', '.join(FINDINGS)}; default: all")
    parser.add_argument("--out", default=OUT_DIR)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.which) - set(FINDINGS))
    if unknown:
        parser.error(f"which: unknown finding(s) {unknown}; choose from {list(FINDINGS)}")
    os.chdir(REPO)  # the config's paths are relative to the repository
    torch.set_num_threads(1)
    path = os.path.join(args.out, "findings.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    for name in args.which or list(FINDINGS):
        results[name] = FINDINGS[name]()
        print(name, json.dumps(results[name], indent=1), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
