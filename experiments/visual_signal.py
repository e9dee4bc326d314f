"""The pre-registered visual-signal comparison (docs/preregistration-visual-signal.md).

    python -m experiments.visual_signal              # gates, then the 36 runs (2 at a time), then the report
    python -m experiments.visual_signal --report     # the report again from the results file

Every run's record is appended to ``bench/results/visual-signal/runs.jsonl`` as it finishes, so an
interrupted invocation resumes where it stopped. The report, ``docs/visual-signal.md``, is written
from ``bench/results/visual-signal/results.json`` by the page's rules (``decide``).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

import torch

from .code_stats import mean_sd, t_quantile
from .demo import CONFIG, REPO
from .student import SIGHTED_DIR, STUDENT_DIR
from .teacher import TEACHER_DIR

OUT_DIR = os.path.join(REPO, "bench", "results", "visual-signal")
RUNS = os.path.join(OUT_DIR, "runs.jsonl")
REPORT = os.path.join(REPO, "docs", "visual-signal.md")
ARMS = {"opd": dict(method="opd"), "sampled": dict(method="va_opd", visual_signal="sampled"),
        "divergence": dict(method="va_opd", visual_signal="divergence")}
STUDENTS = {"blind": dict(student_model=os.path.relpath(STUDENT_DIR, REPO), max_steps=400),
            "sighted": dict(student_model=os.path.relpath(SIGHTED_DIR, REPO), max_steps=40)}
SEEDS = range(1, 7)
TEST_IMAGES, DELTA = 500, 0.03
PAIRS = (("divergence", "sampled"), ("divergence", "opd"), ("sampled", "opd"))


def test_samples():
    from . import task
    return task.dataset(0, "test", TEST_IMAGES)


def test_file() -> str:
    from vaopd_trainer.data import write_prepared
    path = os.path.join("runs", "visual_signal", "test.parquet")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_prepared(test_samples(), path)
    return path


@torch.no_grad()
def greedy_measures(path: str) -> Dict[str, float]:
    """Greedy accuracy, collapse (share of the most frequent boxed answer) and mean log p(true width)
    under teacher forcing, for the model folder ``path`` on the test images."""
    from vaopd_trainer.evaluate import extract_boxed, is_correct
    from vaopd_trainer.rollout import encode_prompts, generate, responses_text
    from vaopd_trainer.sampling import Sampling, stop_token_ids

    from . import task
    from .supervised import load, next_token_log_probs

    model, tokenizer, processor = load(path)
    model.eval()
    samples = [s.decoded() for s in test_samples()]
    answers, right, logp = [], [], []
    for start in range(0, len(samples), 125):
        chunk = samples[start:start + 125]
        batch = encode_prompts(chunk, tokenizer, processor, repeat=1, pixelate_ratio=None,
                               prompt_suffix=task.PROMPT_SUFFIX)
        batch = generate(model, batch, tokenizer, max_new_tokens=40, sampling=Sampling(do_sample=False),
                         eos_token_ids=stop_token_ids(model, tokenizer))
        texts = responses_text(batch, tokenizer)
        answers += [extract_boxed(t) for t in texts]
        right += [is_correct(t, s.answer) for t, s in zip(texts, chunk)]
        truth = [task.template(s.answer) for s in chunk]
        lp = next_token_log_probs(model, tokenizer, processor, chunk, truth,
                                  [t.index(s.answer) for t, s in zip(truth, chunk)])  # the width reading
        logp += [float(lp[row, tokenizer.convert_tokens_to_ids(s.answer)]) for row, s in enumerate(chunk)]
    counts = collections.Counter(answers)
    return {"greedy_accuracy": sum(right) / len(right), "collapse": counts.most_common(1)[0][1] / len(answers),
            "logp_true_width": sum(logp) / len(logp)}


def run_one(arm: str, student: str, seed: int) -> dict:
    from vaopd_trainer.config import load_config
    from vaopd_trainer.train import Trainer

    torch.set_num_threads(1)  # two runs share the two cores
    out = os.path.join("runs", "visual_signal", f"{student}-{arm}-seed{seed}")
    overrides = {**ARMS[arm], **STUDENTS[student], "seed": seed, "output_dir": out, "eval_file": test_file(),
                 "val_before_train": False, "eval_steps": 0, "eval_greedy": False, "num_visualize": 0,
                 "report_to": "none", "save_steps": 0}
    trainer = Trainer(load_config(CONFIG, {k: str(v) for k, v in overrides.items()}))
    try:
        outputs = trainer.train()
    finally:
        trainer.close()
    history = outputs["history"]
    after = outputs["evals"]["after"]
    return {"arm": arm, "student": student, "seed": seed, **greedy_measures(outputs["student"]),
            "avg4_accuracy": after["eval_accuracy"], "visual_reliance": after["eval_visual_reliance"],
            "kl_last10": sum(h["kl_mean"] for h in history[-10:]) / 10,
            "train_seconds": round(outputs["train_seconds"], 1)}


def gates() -> Dict[str, object]:
    """Gates 2-4 of the page (gate 1, the kernel contract, is tests/kernels/test_visual_signal.py)."""
    from vaopd_trainer.config import load_config
    from vaopd_trainer.train import Trainer

    from .supervised import load
    from .teacher import accuracy

    teacher, tokenizer, processor = load(TEACHER_DIR)
    samples = test_samples()
    result: Dict[str, object] = {
        "teacher_clean": accuracy(teacher, tokenizer, processor, samples, pixelated=False),
        "teacher_pixelated": accuracy(teacher, tokenizer, processor, samples, pixelated=True),
        "blind_start": greedy_measures(STUDENT_DIR)["greedy_accuracy"],
        "sighted_start": greedy_measures(SIGHTED_DIR)["greedy_accuracy"]}
    cfg = load_config(CONFIG, {"student_model": STUDENTS["blind"]["student_model"], "visual_signal": "divergence",
                               "max_steps": "1", "val_before_train": "false", "num_visualize": "1000",
                               "report_to": "none", "output_dir": os.path.join("runs", "visual_signal", "gate4")})
    trainer = Trainer(cfg)
    trainer.step(0)
    peaks = [r["tokens"][max(range(len(r["va"])), key=r["va"].__getitem__)].isdigit() for r in trainer.last_rollouts]
    trainer.close()
    result["signal_peak_on_digit"] = sum(peaks) / len(peaks)
    result["passed"] = (result["teacher_clean"] >= 0.95 and result["teacher_pixelated"] <= 0.45
                        and result["blind_start"] <= 0.40 and 0.55 <= result["sighted_start"] <= 0.75
                        and result["signal_peak_on_digit"] >= 0.90)
    return result


def interval(a: List[float], b: List[float]) -> Dict[str, float]:
    """Mean of the paired differences a - b and its two-sided 95% t-interval."""
    diffs = [x - y for x, y in zip(a, b)]
    mean, sd = mean_sd(diffs)
    half = t_quantile(0.975, len(diffs) - 1) * sd / len(diffs) ** 0.5
    return {"mean": mean, "low": mean - half, "high": mean + half, "half": half, "n": len(diffs)}


def decide(tests: Dict[str, Dict[str, dict]]) -> str:
    """The page's decision rules, in its order."""
    blind, sighted = tests["blind"], tests["sighted"]
    if blind["divergence-sampled"]["low"] > 0 and blind["divergence-opd"]["low"] > -DELTA:
        return "supports"
    if all(tests[s]["divergence-sampled"]["high"] < DELTA for s in STUDENTS):
        return "falsifies"
    if any(tests[s]["divergence-sampled"]["half"] > 2 * DELTA for s in STUDENTS):
        return "underpowered"
    return "inconclusive"


def analyse(rows: List[dict]) -> Dict[str, object]:
    by = {(r["student"], r["arm"], r["seed"]): r for r in rows}
    tests = {s: {f"{a}-{b}": interval([by[s, a, k]["greedy_accuracy"] for k in SEEDS],
                                      [by[s, b, k]["greedy_accuracy"] for k in SEEDS]) for a, b in PAIRS}
             for s in STUDENTS}
    means = {s: {a: {m: mean_sd([by[s, a, k][m] for k in SEEDS])[0]
                     for m in ("greedy_accuracy", "avg4_accuracy", "logp_true_width", "collapse", "visual_reliance",
                               "kl_last10")} for a in ARMS} for s in STUDENTS}
    return {"tests": tests, "means": means, "outcome": decide(tests)}


def seeds_needed(half: float, n: int, target: float) -> int:
    """The smallest seed count whose 95% t half-width, at the spread behind ``half`` (from ``n`` seeds),
    is at most ``target``."""
    sd = half * n ** 0.5 / t_quantile(0.975, n - 1)
    m = 2
    while t_quantile(0.975, m - 1) * sd / m ** 0.5 > target:
        m += 1
    return m


def report(results: dict) -> str:
    lines = ["# Visual signal: the pre-registered comparison", "",
             f"Pre-registration: [preregistration-visual-signal.md](preregistration-visual-signal.md). Results: "
             f"[bench/results/visual-signal/results.json](../bench/results/visual-signal/results.json) "
             f"({results['machine']}). Written by `python -m experiments.visual_signal --report`.", "",
             f"## Outcome: **{results['outcome']}**", ""]
    if results["outcome"] == "underpowered":
        for student, tests in results["tests"].items():
            t = tests["divergence-sampled"]
            if t["half"] > 2 * DELTA:
                lines.append(f"- {student}: divergence - sampled has a half-width of {t['half']:.3f} (> 2 x delta = "
                             f"{2 * DELTA:.2f}); at the spread seen over {t['n']} seeds, "
                             f"{seeds_needed(t['half'], t['n'], 2 * DELTA)} seeds would bring it to 2 x delta and "
                             f"{seeds_needed(t['half'], t['n'], DELTA)} to delta.")
        lines += ["- By the page, nothing changes: the library's default stays `\"sampled\"`, `\"divergence\"` "
                  "stays available, and neither is recommended over the other.", ""]
    lines += ["## Gates", ""]
    g = results["gates"]
    lines += [f"- teacher greedy on the {TEST_IMAGES} test images: {g['teacher_clean']:.3f} clean (>= 0.95), "
              f"{g['teacher_pixelated']:.3f} pixelated (<= 0.45)",
              f"- start students: blind {g['blind_start']:.3f} (<= 0.40), sighted {g['sighted_start']:.3f} (0.55-0.75)",
              f"- the divergence's largest token is a digit in {g['signal_peak_on_digit']:.0%} of the blind student's "
              f"first rollouts (>= 90%)", f"- all passed: {g['passed']}", "",
              "## Paired differences of final greedy accuracy (6 seeds, 95% t-interval)", "",
              "| student | pair | mean | 95% interval |", "|---|---|---|---|"]
    for s, tests in results["tests"].items():
        lines += [f"| {s} | {pair} | {t['mean']:+.3f} | [{t['low']:+.3f}, {t['high']:+.3f}] |" for pair, t in tests.items()]
    lines += ["", "## Means over seeds", "",
              "| student | arm | greedy | avg@4 | log p(true width) | collapse | visual reliance | KL, last 10 steps |",
              "|---|---|---|---|---|---|---|---|"]
    for s, arms in results["means"].items():
        for a, m in arms.items():
            lines.append(f"| {s} | {a} | {m['greedy_accuracy']:.3f} | {m['avg4_accuracy']:.3f} | "
                         f"{m['logp_true_width']:.3f} | {m['collapse']:.3f} | {m['visual_reliance']:.4f} | "
                         f"{m['kl_last10']:.4f} |")
    lines += ["", "## Deviations from the page", "",
              "- The page says the pilots' seeds are not in the report, yet chose seeds 1-6: the blind student's OPD "
              "pilots (`python -m experiments.sanity --cases opd_blind`, a 300-step schedule) ran seeds 0-2, so the "
              "report's seeds 1 and 2 share their data order and sampling stream with two pilots (the report's runs "
              "are new 400-step runs).",
              "- Gate 1 (the kernel contract) is checked by the test suite (`tests/kernels/test_visual_signal.py`), "
              "not by this runner.", "", "## Per run", "", "| student | arm | seed | greedy | avg@4 | collapse | train s |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['student']} | {r['arm']} | {r['seed']} | {r['greedy_accuracy']:.3f} | {r['avg4_accuracy']:.3f} | "
              f"{r['collapse']:.3f} | {r['train_seconds']} |" for r in results["rows"]]
    return "\n".join(lines) + "\n"


def _done() -> List[dict]:
    return [json.loads(line) for line in open(RUNS)] if os.path.exists(RUNS) else []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", nargs=3, metavar=("ARM", "STUDENT", "SEED"), help="one run (used by the runner)")
    parser.add_argument("--report", action="store_true", help="only write the report from the results file")
    parser.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args(argv)
    os.chdir(REPO)  # the config's paths are relative to the repository
    os.makedirs(OUT_DIR, exist_ok=True)
    if args.job:
        row = run_one(args.job[0], args.job[1], int(args.job[2]))
        with open(RUNS, "a") as f:
            f.write(json.dumps(row) + "\n")
        return 0
    results_path = os.path.join(OUT_DIR, "results.json")
    if not args.report:
        began = time.perf_counter()
        gate_path = os.path.join(OUT_DIR, "gates.json")
        g = json.load(open(gate_path)) if os.path.exists(gate_path) else gates()
        json.dump(g, open(gate_path, "w"), indent=1)
        print("gates:", json.dumps(g), flush=True)
        if not g["passed"]:
            print("a gate failed: no arm runs (the page's rule)")
            return 1
        test_file()  # written once, before the runs share it
        done = {(r["arm"], r["student"], r["seed"]) for r in _done()}
        jobs = [(a, s, k) for s in STUDENTS for k in SEEDS for a in ARMS if (a, s, k) not in done]
        running: List[subprocess.Popen] = []
        for a, s, k in jobs:
            while len(running) >= args.parallel:
                running = [p for p in running if p.poll() is None]
                time.sleep(1)
            running.append(subprocess.Popen([sys.executable, "-m", "experiments.visual_signal", "--job", a, s, str(k)]))
        for p in running:
            p.wait()
        machine = (f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
                   f"this invocation {time.perf_counter() - began:.0f} s")
        rows = sorted(_done(), key=lambda r: (list(STUDENTS).index(r["student"]), list(ARMS).index(r["arm"]), r["seed"]))
        json.dump({"machine": machine, "gates": g, "rows": rows, **analyse(rows)}, open(results_path, "w"), indent=1)
    with open(REPORT, "w") as f:
        f.write(report(json.load(open(results_path))))
    print(open(REPORT).read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
