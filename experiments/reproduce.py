"""OPD vs VA-OPD on the fine-detail task: same budget, several seeds, CPU only.

    python -m experiments.reproduce                      # 3 seeds, writes docs/reproduction.md + docs/img/
    python -m experiments.reproduce --seeds 0 --steps 2  # a smoke run

Uses the shipped teacher and format-only student (``experiments/assets``; regenerate them with
``python -m experiments.teacher`` and ``python -m experiments.student``). Each (seed, method) run is
the trainer itself (``vaopd_trainer.train.Trainer``) on a prepared parquet of the task, in its own
process; afterwards the teacher scores the trained student's sampled rollouts (``va_tokens``).
Only the method differs between paired runs: same data, prompts order, budget and hyperparameters.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List

from . import task
from .student import STUDENT_DIR
from .teacher import TEACHER_DIR

METHODS = ("opd", "va_opd")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check_assets(*folders: str) -> None:
    for folder in folders:
        if not os.path.isfile(os.path.join(folder, "model.safetensors")):
            raise FileNotFoundError(f"{folder}: no model.safetensors; regenerate it with "
                                    f"python -m experiments.{os.path.basename(folder)}")


def write_data(out_dir: str, data_seed: int, num_train: int, num_eval: int) -> Dict[str, str]:
    from vaopd_trainer.data import write_prepared

    os.makedirs(out_dir, exist_ok=True)
    paths = {"train": os.path.join(out_dir, "train.parquet"), "test": os.path.join(out_dir, "test.parquet")}
    write_prepared(task.dataset(data_seed, "train", num_train), paths["train"])
    write_prepared(task.dataset(data_seed, "test", num_eval), paths["test"])
    return paths


def run_one(job: dict) -> dict:
    """One training run in a fresh process, then the VA profile of its final student."""
    import torch

    torch.set_num_threads(job["threads"])
    from vaopd_trainer.config import load_config
    from vaopd_trainer.models import load_model, load_processing
    from vaopd_trainer.sampling import Sampling
    from vaopd_trainer.train import Trainer

    from .va_tokens import profile

    cfg = load_config(None, {k: str(v) for k, v in job["config"].items()})
    began = time.perf_counter()
    outputs = Trainer(cfg).train()
    seconds = time.perf_counter() - began
    tokenizer, processor = load_processing(cfg.student_model, cfg.min_pixels, cfg.max_pixels)
    teacher = load_model(cfg.teacher_model, torch.float32, torch.device("cpu")).eval()
    samples = task.dataset(job["data_seed"], "test", job["profile_prompts"])
    result = {"seed": cfg.seed, "method": cfg.method, "seconds": seconds,
              "history": outputs["history"], "evals": outputs["evals"]}
    for name, path in (("after", outputs["student"]), ("before", cfg.student_model)):
        if name == "before" and not job["profile_before"]:
            continue
        student = load_model(path, torch.float32, torch.device("cpu")).eval()
        result[f"va_{name}"] = profile(teacher, student, samples, tokenizer, processor,
                                       num_generations=cfg.num_generations, max_new_tokens=cfg.max_completion_length,
                                       sampling=Sampling.for_rollouts(cfg), pixelate_ratio=cfg.pixelate_ratio,
                                       high_fraction=cfg.high_fraction, seed=cfg.seed, prompt_suffix=cfg.prompt_suffix)
    return result


def jobs(args, data: Dict[str, str]) -> List[dict]:
    out = []
    for seed in args.seeds:
        for method in METHODS:
            config = dict(student_model=args.student, teacher_model=args.teacher, dataset="prepared",
                          train_file=data["train"], eval_file=data["test"], method=method, seed=seed,
                          per_device_train_batch_size=args.prompts, num_generations=args.generations,
                          max_completion_length=40, learning_rate=args.lr, max_steps=args.steps,
                          min_pixels=16 * 16, max_pixels=task.IMAGE_SIZE ** 2, prompt_suffix=task.PROMPT_SUFFIX,
                          eval_do_sample=False,  # greedy accuracy, as docs/reproduction.md reports
                          eval_steps=max(1, args.steps // args.evals), save_steps=0, val_before_train=True,
                          report_to="none", output_dir=os.path.join(args.out, f"{method}-seed{seed}"),
                          overwrite_output_dir=True)  # each invocation reruns the experiment from scratch
            out.append(dict(config=config, threads=args.threads, data_seed=args.data_seed,
                            profile_prompts=args.profile_prompts,
                            profile_before=seed == args.seeds[0] and method == METHODS[0]))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per run (the budget)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--generations", type=int, default=4, help="rollouts per prompt (K)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--evals", type=int, default=5, help="evaluations during training (plus before)")
    parser.add_argument("--num_train", type=int, default=256)
    parser.add_argument("--num_eval", type=int, default=96)
    parser.add_argument("--profile_prompts", type=int, default=16, help="test prompts for the VA profile")
    parser.add_argument("--data_seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (one per core)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--teacher", default=TEACHER_DIR)
    parser.add_argument("--student", default=STUDENT_DIR)
    parser.add_argument("--out", default=os.path.join(REPO, "runs", "reproduce"))
    parser.add_argument("--doc", default=os.path.join(REPO, "docs", "reproduction.md"))
    parser.add_argument("--img", default=os.path.join(REPO, "docs", "img"))
    args = parser.parse_args(argv)
    _check_assets(args.teacher, args.student)
    data = write_data(os.path.join(args.out, "data"), args.data_seed, args.num_train, args.num_eval)
    began = time.perf_counter()
    # a fresh process per run: each Trainer owns its Accelerator state, RNGs and thread count
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=context, max_tasks_per_child=1) as pool:
        results = list(pool.map(run_one, jobs(args, data)))
    wall = time.perf_counter() - began
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "wall_seconds": wall, "runs": results}, f, indent=1)
    from .report import write_report

    print(write_report(results, vars(args), wall, args.doc, args.img))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
