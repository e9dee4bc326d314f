"""Distillation sanity benchmark: does the trainer do what distillation should, on the stripe task?

    python -m experiments.sanity                         # every case, seeds 0 1 2 (about 25 min, 2 CPU cores)
    python -m experiments.sanity --cases self drift_wd --seeds 0

Cases (each a ``configs/demo.yaml`` run with the overrides below, greedy accuracy on the demo's held-out
images before and after, with 95% intervals; the gain's interval is paired by image):
- ``self``: the teacher distilled into itself, weight decay 0: KL must stay 0 and accuracy must stay.
- ``drift_wd``: the same with weight decay 0.1 at lr 1e-3: AdamW turns ~0 gradients into lr-sized
  steps against the decay, so even a perfect student drifts (why small-model runs want wd 0).
- ``drift_low_lr``: the same at lr 1e-4: the drift is 100x slower.
- ``opd_sighted``: OPD from the partially sighted student with the demo's settings: improves.
- ``opd_blind``: OPD from the blind student, 300 steps: improves only after a few hundred steps.

Writes ``bench/results/distill-sanity/results.json`` and ``sanity.md`` (per seed and per case).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from typing import Dict, List

import torch

from vaopd_trainer.config import load_config
from vaopd_trainer.intervals import mean_ci95, paired_gain_ci95

from .demo import CONFIG, REPO

OUT_DIR = os.path.join(REPO, "bench", "results", "distill-sanity")
TEACHER, BLIND = "experiments/assets/teacher", "experiments/assets/student"
SELF = dict(student_model=TEACHER, method="opd", weight_decay=0.0, learning_rate=1e-3, max_steps=30)
CASES: Dict[str, dict] = {
    "self": SELF,
    "drift_wd": {**SELF, "weight_decay": 0.1},
    "drift_low_lr": {**SELF, "weight_decay": 0.1, "learning_rate": 1e-4},
    "opd_sighted": dict(method="opd"),
    "opd_blind": dict(student_model=BLIND, method="opd", max_steps=300, eval_steps=100),
}
# every case: one greedy answer per held-out image (sampled avg@k would multiply the eval time)
COMMON = dict(eval_do_sample=False, eval_greedy=False, num_visualize=0, report_to="none", save_steps=0)


def run_case(name: str, seed: int, out_dir: str) -> dict:
    from vaopd_trainer.train import Trainer

    overrides = {**COMMON, **CASES[name], "seed": seed, "output_dir": os.path.join(out_dir, f"{name}-seed{seed}")}
    cfg = load_config(CONFIG, {k: str(v) for k, v in overrides.items()})
    trainer = Trainer(cfg)
    try:
        outputs = trainer.train()
    finally:
        trainer.close()
    scores = outputs["eval_scores"]
    before, after = scores["before"]["eval_accuracy"], scores["after"]["eval_accuracy"]
    kl = [h["kl_mean"] for h in outputs["history"]]
    return {"case": name, "seed": seed, "steps": cfg.max_steps, "learning_rate": cfg.learning_rate,
            "weight_decay": cfg.weight_decay, "student": cfg.student_model, "images": len(after),
            "before": mean_ci95(before), "after": mean_ci95(after), "gain": paired_gain_ci95(before, after),
            "kl_first": kl[0], "kl_last": kl[-1], "kl_max": max(kl),
            "evals": {tag: result["eval_accuracy"] for tag, result in outputs["evals"].items()},
            "train_seconds": round(outputs["train_seconds"], 1)}


def _interval(pair) -> str:
    mean, half = pair
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]"


def markdown(rows: List[dict]) -> str:
    machines = sorted({r["machine"] for r in rows})
    lines = ["# Distillation sanity (stripe task, shipped tiny models)", "",
             f"`python -m experiments.sanity`; greedy accuracy on {rows[0]['images']} held-out images "
             "(95% intervals over images; gains paired by image). Runs: " + "; ".join(machines) + ".", "",
             "| case | seed | student | steps | lr | wd | before | after | gain [95% interval] | KL first / last / max |"
             " evals by step | train s |", "|" + "---|" * 12]
    for r in rows:
        evals = ", ".join(f"{tag}: {acc:.3f}" for tag, acc in r["evals"].items())
        lines.append(f"| {r['case']} | {r['seed']} | {os.path.basename(r['student'])} | {r['steps']} | "
                     f"{r['learning_rate']:g} | {r['weight_decay']:g} | {r['before'][0]:.3f} | {r['after'][0]:.3f} | "
                     f"{_interval(r['gain'])} | {r['kl_first']:.3g} / {r['kl_last']:.3g} / {r['kl_max']:.3g} | "
                     f"{evals} | {r['train_seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs_dir", default="runs/sanity")
    parser.add_argument("--out", default=OUT_DIR)
    args = parser.parse_args(argv)
    os.chdir(REPO)  # the config's paths are relative to the repository
    began = time.perf_counter()
    rows = []
    for name in args.cases:
        for seed in args.seeds:
            rows.append(run_case(name, seed, args.runs_dir))
            print(json.dumps(rows[-1]), flush=True)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - began:.0f} s, 1-min load average at the end "
               f"{os.getloadavg()[0]:.1f} (other jobs slow the train times)")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    # a later invocation (other cases or seeds) adds its rows; a (case, seed) run again replaces its row
    earlier = json.load(open(path))["rows"] if os.path.exists(path) else []
    ran = {(r["case"], r["seed"]) for r in rows}
    rows = [r for r in earlier if (r["case"], r["seed"]) not in ran] + rows
    rows.sort(key=lambda r: (list(CASES).index(r["case"]), r["seed"]))
    for r in rows:
        r.setdefault("machine", machine)
    with open(path, "w") as f:
        json.dump({"cases": CASES, "common": COMMON, "rows": rows}, f, indent=1)
    with open(os.path.join(args.out, "sanity.md"), "w") as f:
        f.write(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
