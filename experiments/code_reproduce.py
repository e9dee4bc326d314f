"""The pre-registered comparison on the dilution task (docs/preregistration.md): five arms, paired
seeds, CPU only.

    python -m experiments.code_reproduce     # all arms; writes bench/results/reproduction/results.json
                                             # and, from it, docs/reproduction.md (+ docs/img/)

Uses the shipped setup artefacts (``experiments/assets/code_teacher`` and ``code_student``; see
``experiments.code_setup``) and refuses to compare unless their gates (``experiments.code_gates``)
pass. Each run is the trainer itself (``vaopd_trainer.train.Trainer``) in its own process; only
the arm's options differ between runs of one seed (same start, data order and sampling seed).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List

from . import code_task
from .task import PROMPT_SUFFIX
from .code_setup import STUDENT_DIR, TEACHER_DIR
from .code_stats import ARMS

STEPS = 40  # fixed from the timing run recorded in docs/preregistration.md
LR = 1e-3
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def probe_trainer_class():
    """The trainer, plus per-step probes of the sampled rollouts: slot accuracy and format rate
    (language learning), and the high group's make-up by token kind (VA arms)."""
    from vaopd_trainer.data import step_prompts
    from vaopd_trainer.train import Trainer

    class ProbedTrainer(Trainer):
        def rollouts(self, step: int):
            # the step's prompts, as Trainer.rollouts picks them (single process): their codes
            indices = step_prompts(len(self.train_samples), self.global_prompts, step, self.cfg.seed)
            self._codes = [code_task.code_of(self.train_samples[i].question) for i in indices]
            return super().rollouts(step)

        def loss_and_backward(self, batch, teacher_hidden, teacher_degraded, step: int = 0):
            result, va = super().loss_and_backward(batch, teacher_hidden, teacher_degraded, step)
            self._probe = rollout_probe(batch, result, self.tokenizer, self._codes, self.cfg.num_generations)
            return result, va

        def step(self, step: int):
            metrics = super().step(step)
            metrics.update(self._probe)
            return metrics

    return ProbedTrainer


def rollout_probe(batch, result, tokenizer, codes: List[str], num_generations: int) -> Dict[str, float]:
    """Sampled slot accuracy and format rate of a step's rollouts; for VA-OPD arms also the share
    of the high group's tokens of each kind (slot / digit / fixed / eos)."""
    eos = tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id)
    cu, targets = batch.cu_seqlens().tolist(), batch.targets().tolist()
    high = result.high_mask.tolist()
    slots = formats = 0.0
    made_of: Dict[str, float] = {}
    for r in range(len(cu) - 1):
        tokens = tokenizer.convert_ids_to_tokens(targets[cu[r]:cu[r + 1]])
        score = code_task.score(tokenizer.convert_tokens_to_string([t for t in tokens if t != eos]),
                                codes[r // num_generations])
        slots += score.slots_correct / code_task.NUM_BITS
        formats += score.format_ok
        for kind, h in zip(code_task.token_kinds(tokens, eos), high[cu[r]:cu[r + 1]]):
            if h:
                made_of[kind] = made_of.get(kind, 0.0) + 1
    rollouts = len(cu) - 1
    out = {"sampled_slot_accuracy": slots / rollouts, "sampled_format_rate": formats / rollouts}
    n_high = sum(made_of.values())
    if n_high:
        out.update({f"high_share_{k}": made_of.get(k, 0.0) / n_high for k in ("slot", "digit", "fixed", "eos")})
    return out


def write_data(out_dir: str, data_seed: int, num_train: int, num_test: int) -> Dict[str, str]:
    """The training prompts, the 1,000 fixed test images, and a small file the trainer's own
    end-of-run evaluation reads (the primary metric is measured here, on the test file)."""
    from vaopd_trainer.data import write_prepared

    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f"{name}.parquet") for name in ("train", "test", "trainer_eval")}
    write_prepared(code_task.dataset(data_seed, "train", num_train), paths["train"])
    write_prepared(code_task.dataset(data_seed, "test", num_test), paths["test"])
    write_prepared(code_task.dataset(data_seed, "val", 4), paths["trainer_eval"])
    return paths


def run_one(job: dict) -> dict:
    """One arm x seed in a fresh process: train, then the primary and secondary metrics on the test set."""
    import torch

    torch.set_num_threads(job["threads"])
    from vaopd_trainer.config import load_config
    from vaopd_trainer.data import load_prepared
    from vaopd_trainer.models import load_model, load_processing

    from .code_eval import digit_logprob, greedy_eval

    cfg = load_config(None, {k: str(v) for k, v in job["config"].items()})
    began = time.perf_counter()
    outputs = probe_trainer_class()(cfg).train()
    train_seconds = time.perf_counter() - began
    tokenizer, processor = load_processing(cfg.student_model, cfg.min_pixels, cfg.max_pixels)
    student = load_model(outputs["student"], torch.float32, torch.device("cpu")).eval()
    test = load_prepared(job["test_file"])
    final = greedy_eval(student, test, tokenizer, processor)
    final["digit_logprob"] = digit_logprob(student, test, tokenizer, processor)
    return {"arm": job["arm"], "seed": cfg.seed, "train_seconds": train_seconds,
            "seconds": time.perf_counter() - began, "final": final,
            "history": [{k: v for k, v in h.items() if not k.startswith("peak_mem")} for h in outputs["history"]]}


def jobs(args, data: Dict[str, str]) -> List[dict]:
    """Seed-major order, so that whatever has finished is a set of complete pairs."""
    out = []
    for seed in range(max(n for _, n in ARMS.values())):
        for arm in args.arms:
            options, seeds = ARMS[arm]
            if seed >= min(seeds, args.max_seeds):
                continue
            options = dict(options)
            lr = args.lr * options.pop("lr_scale", 1.0)
            config = dict(student_model=args.student, teacher_model=args.teacher, dataset="prepared",
                          train_file=data["train"], eval_file=data["trainer_eval"], seed=seed,
                          per_device_train_batch_size=args.prompts, num_generations=args.generations,
                          max_completion_length=args.max_completion_length, learning_rate=lr,
                          max_steps=args.steps, eval_steps=0, save_steps=0, val_before_train=False, num_visualize=0,
                          report_to="none", output_dir=os.path.join(args.out, f"{arm}-seed{seed}"),
                          overwrite_output_dir=True, min_pixels=code_task.PIXEL_BUDGET[0],
                          max_pixels=code_task.PIXEL_BUDGET[1], prompt_suffix=PROMPT_SUFFIX, **options)
            out.append(dict(arm=arm, config=config, threads=args.threads, test_file=data["test"]))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per run (pre-registered)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--generations", type=int, default=4, help="rollouts per prompt (K)")
    parser.add_argument("--lr", type=float, default=LR, help="the one learning rate of every arm (opd_lr2.5: x 2.5)")
    parser.add_argument("--max_completion_length", type=int, default=96)
    parser.add_argument("--num_train", type=int, default=512)
    parser.add_argument("--num_test", type=int, default=1000)
    parser.add_argument("--data_seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--max_seeds", type=int, default=6, help="cap on seeds per arm (smoke runs)")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (one per core)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--teacher", default=TEACHER_DIR)
    parser.add_argument("--student", default=STUDENT_DIR)
    parser.add_argument("--gates", default=None, help="gates.json already measured (default: measure them now)")
    parser.add_argument("--skip_gates", action="store_true", help="smoke runs only: compare without the gates")
    parser.add_argument("--out", default=os.path.join(REPO, "runs", "code"))
    parser.add_argument("--doc", default=os.path.join(REPO, "docs", "reproduction.md"))
    parser.add_argument("--img", default=os.path.join(REPO, "docs", "img"))
    parser.add_argument("--results", default=os.path.join(REPO, "bench", "results", "reproduction", "results.json"),
                        help="results JSON to write (the page is generated from it)")
    parser.add_argument("--deviation", action="append", default=[], help="a deviation from the pre-registration, "
                        "stated on the page (repeatable)")
    parser.add_argument("--note", action="append", default=[], help="a remark for the page's last section (repeatable)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.gates:
        with open(args.gates) as f:
            gates = json.load(f)
    elif args.skip_gates:
        gates = None
    else:
        from .code_gates import measure

        gates = measure(args.teacher, args.student)
    results_path = args.results
    record = {"args": vars(args), "gates": gates, "runs": [], "deviations": args.deviation, "notes": args.note}
    if gates is not None and not gates["pass"]:
        record["stopped"] = "a gate failed: no comparison was run"
        failed = [name for name, g in gates["gates"].items() if not g["pass"]]
        print(f"gates failed ({', '.join(failed)}): no comparison")
    else:
        data = write_data(os.path.join(args.out, "data"), args.data_seed, args.num_train, args.num_test)
        began = time.perf_counter()
        # a fresh process per run: each Trainer owns its Accelerator state, RNGs and thread count
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context, max_tasks_per_child=1) as pool:
            record["runs"] = list(pool.map(run_one, jobs(args, data)))
        record["wall_seconds"] = time.perf_counter() - began
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    with open(results_path, "w") as f:
        json.dump(record, f, indent=1)
    from .code_report import write_report

    print(write_report(record, args.doc, args.img))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
