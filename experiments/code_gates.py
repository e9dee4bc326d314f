"""The gates of the dilution experiment, measured before any comparison (docs/preregistration.md).

    python -m experiments.code_gates          # prints and writes runs/code/gates.json

If one fails the comparison does not run. All on the validation split (the arms' primary metric
uses the test split); rollouts are sampled as in training (temperature 0.7, top-p 0.95).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from typing import Dict

import torch

import vaopd_kernels
from vaopd_trainer.loss import backbone_hidden
from vaopd_trainer.models import lm_head, load_model, load_processing
from vaopd_trainer.rollout import encode_prompts, generate
from vaopd_trainer.sampling import Sampling, stop_token_ids

from . import code_task
from .task import PROMPT_SUFFIX
from .code_eval import MAX_NEW_TOKENS, flipped_slot_share, greedy_eval, pixelated
from .code_setup import FLUENT, STUDENT_DIR, TEACHER_DIR

THRESHOLDS = {
    "teacher_accuracy": (">=", 0.98), "teacher_slot_accuracy": (">=", 0.98), "teacher_pixelated_accuracy": ("<=", 0.40),
    "opd_loss_share_language": (">=", 0.70), "opd_loss_share_digits": ("<=", 0.15), "va_top20_share": (">=", 0.90),
    "student_format_rate": (">=", FLUENT), "student_flipped_slot_share": (">=", FLUENT),
    "student_start_accuracy_min": (">=", 0.45), "student_start_accuracy_max": ("<=", 0.70),
}


@torch.no_grad()
def rollout_shares(teacher, student, samples, tokenizer, processor, *, num_generations: int, seed: int,
                   high_fraction: float = 0.2, batch_prompts: int = 16) -> Dict[str, float]:
    """On the start student's sampled rollouts: the share of OPD's loss (token weights 1/(R T_r)
    times the per-token KL) on each token kind, and the pooled share of the teacher's VA held by
    each rollout's top ceil(f T_r) tokens."""
    torch.manual_seed(seed)
    vocab, eos = len(tokenizer), tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id)
    loss_by_kind: Dict[str, float] = {}
    top, total, rollouts = 0.0, 0.0, 0
    for start in range(0, len(samples), batch_prompts):
        chunk = samples[start:start + batch_prompts]
        batch = encode_prompts(chunk, tokenizer, processor, repeat=num_generations, pixelate_ratio=0.1,
                               prompt_suffix=PROMPT_SUFFIX)
        batch = generate(student, batch, tokenizer, max_new_tokens=MAX_NEW_TOKENS,
                         sampling=Sampling(temperature=0.7, top_p=0.95), eos_token_ids=stop_token_ids(student, tokenizer))
        th, td = backbone_hidden(teacher, batch), backbone_hidden(teacher, batch, degraded=True)
        kl = vaopd_kernels.linear_kl(backbone_hidden(student, batch), lm_head(student), th, lm_head(teacher),
                                     vocab_size=vocab).double()
        va = vaopd_kernels.visual_advantage(th, td, lm_head(teacher), batch.targets(), vocab_size=vocab).double()
        cu, targets = batch.cu_seqlens().tolist(), batch.targets().tolist()
        for r in range(len(cu) - 1):
            lo, hi = cu[r], cu[r + 1]
            kinds = code_task.token_kinds(tokenizer.convert_ids_to_tokens(targets[lo:hi]), eos)
            for kind, value in zip(kinds, kl[lo:hi].tolist()):
                loss_by_kind[kind] = loss_by_kind.get(kind, 0.0) + value / (hi - lo)  # OPD: 1/(R T_r), R cancels
            row = va[lo:hi]
            top += float(row.topk(math.ceil(round(high_fraction * row.numel(), 9))).values.sum())
            total += float(row.sum())
        rollouts += len(cu) - 1
    loss = sum(loss_by_kind.values())
    shares = {f"opd_loss_share_{k}": v / loss for k, v in loss_by_kind.items()}
    shares["opd_loss_share_language"] = 1.0 - shares.get("opd_loss_share_digit", 0.0)
    shares["opd_loss_share_digits"] = shares.get("opd_loss_share_digit", 0.0)
    shares["va_top20_share"] = top / total if total > 0 else float("nan")
    shares["rollouts"] = rollouts
    return shares


def measure(teacher_dir: str = TEACHER_DIR, student_dir: str = STUDENT_DIR, *, num_val: int = 500,
            num_rollout_prompts: int = 64, num_generations: int = 4, data_seed: int = 0, seed: int = 0) -> dict:
    tokenizer, processor = load_processing(student_dir, *code_task.PIXEL_BUDGET)
    teacher = load_model(teacher_dir, torch.float32, torch.device("cpu")).eval()
    student = load_model(student_dir, torch.float32, torch.device("cpu")).eval()
    val = code_task.dataset(data_seed, "val", num_val)
    t_clean = greedy_eval(teacher, val, tokenizer, processor, reliance=False)
    t_pix = greedy_eval(teacher, pixelated(val), tokenizer, processor, reliance=False)
    s_clean = greedy_eval(student, val, tokenizer, processor)
    with open(os.path.join(student_dir, "training.json")) as f:
        start = json.load(f)
    start_accuracy = start["checks"][-1][1] if start.get("checks") else float("nan")
    shares = rollout_shares(teacher, student, val[:num_rollout_prompts], tokenizer, processor,
                            num_generations=num_generations, seed=seed)
    values = {
        "teacher_accuracy": t_clean["accuracy"], "teacher_slot_accuracy": t_clean["slot_accuracy"],
        "teacher_pixelated_accuracy": t_pix["accuracy"],
        "opd_loss_share_language": shares["opd_loss_share_language"],
        "opd_loss_share_digits": shares["opd_loss_share_digits"], "va_top20_share": shares["va_top20_share"],
        "student_format_rate": s_clean["format_rate"],
        "student_flipped_slot_share": flipped_slot_share(s_clean),
        "student_start_accuracy_min": start_accuracy, "student_start_accuracy_max": start_accuracy,
    }
    gates = {name: {"value": values[name], "rule": f"{op} {bound}",
                    "pass": bool(values[name] >= bound if op == ">=" else values[name] <= bound)}
             for name, (op, bound) in THRESHOLDS.items()}
    return {"pass": all(g["pass"] for g in gates.values()), "gates": gates, "teacher_val": t_clean,
            "teacher_val_pixelated": t_pix, "student_val": s_clean, "rollout_shares": shares,
            "student_start": {k: start.get(k) for k in ("short_checks", "steps_run", "checks", "stop_rule")},
            "num_val": num_val, "num_rollout_prompts": num_rollout_prompts, "num_generations": num_generations}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=TEACHER_DIR)
    parser.add_argument("--student", default=STUDENT_DIR)
    parser.add_argument("--num_val", type=int, default=500)
    parser.add_argument("--num_rollout_prompts", type=int, default=64)
    parser.add_argument("--out", default=os.path.join("runs", "code", "gates.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = measure(args.teacher, args.student, num_val=args.num_val, num_rollout_prompts=args.num_rollout_prompts)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for name, gate in result["gates"].items():
        print(f"{'PASS' if gate['pass'] else 'FAIL'} {name}: {gate['value']:.4f} ({gate['rule']})")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
