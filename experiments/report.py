"""docs/reproduction.md and its plots from the runs ``reproduce`` collected (no training here)."""
from __future__ import annotations

import math
import os
import platform
from typing import Dict, List, Sequence

from .va_tokens import KINDS

LABEL = {"opd": "OPD", "va_opd": "VA-OPD"}


def _mean_std(values: Sequence[float]) -> tuple:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def _fmt(values: Sequence[float], scale: float = 1.0, digits: int = 1, style: str = "f") -> str:
    mean, std = _mean_std([v * scale for v in values])
    return f"{mean:.{digits}{style}} ± {std:.{digits}{style}}"


def _eval_curve(run: dict, key: str) -> List[tuple]:
    """(step, value) from the trainer's evals: 'before' is step 0, 'step N', 'after' the last step."""
    last = run["history"][-1]["step"] if run["history"] else 0
    points = []
    for tag, values in run["evals"].items():
        step = 0 if tag == "before" else last if tag == "after" else int(tag.split()[1])
        points.append((step, values[key]))
    return sorted(points)


def _plots(runs: List[dict], img_dir: str) -> Dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(img_dir, exist_ok=True)
    paths = {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in ((axes[0], "eval_accuracy", "test accuracy (greedy, \\boxed{})"),
                           (axes[1], "eval_visual_reliance", "student visual reliance (nats/token)")):
        for method, colour in (("opd", "tab:blue"), ("va_opd", "tab:red")):
            curves = [_eval_curve(r, key) for r in runs if r["method"] == method]
            for i, curve in enumerate(curves):
                ax.plot(*zip(*curve), color=colour, alpha=0.35, lw=1)
            steps = [s for s, _ in curves[0]]
            means = [_mean_std([c[j][1] for c in curves])[0] for j in range(len(steps))]
            ax.plot(steps, means, color=colour, lw=2.2, marker="o", label=f"{LABEL[method]} (mean of {len(curves)})")
        ax.set_xlabel("optimizer step")
        if key == "eval_visual_reliance":
            ax.set_yscale("symlog", linthresh=1e-4)  # spans 1e-6 (ignores the image) to ~1e-1
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    paths["curves"] = os.path.join(img_dir, "reproduction_curves.png")
    fig.savefig(paths["curves"], dpi=110)
    plt.close(fig)

    profiles = [r["va_after"] for r in runs] + [r["va_before"] for r in runs if "va_before" in r]
    kinds = [k for k in KINDS if any(k in p["mean_va"] for p in profiles)]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    width = 0.27
    groups = [("before", [r["va_before"] for r in runs if "va_before" in r], "grey")]
    groups += [(LABEL[m], [r["va_after"] for r in runs if r["method"] == m], c)
               for m, c in (("opd", "tab:blue"), ("va_opd", "tab:red"))]
    for g, (name, ps, colour) in enumerate(groups):
        means = [_mean_std([p["mean_va"].get(k, float("nan")) for p in ps])[0] for k in kinds]
        ax.bar([i + (g - 1) * width for i in range(len(kinds))], means, width, color=colour, label=f"student {name}")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylabel("mean teacher VA per token (nats)")
    ax.set_title("where the visual advantage sits (teacher on student rollouts)")
    ax.legend()
    fig.tight_layout()
    paths["va"] = os.path.join(img_dir, "reproduction_va_kinds.png")
    fig.savefig(paths["va"], dpi=110)
    plt.close(fig)
    return paths


def _load() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg()) + " (1/5/15 min)"
    except OSError:
        return "unknown"


def _verdict(diffs: Sequence[float]) -> str:
    """A plain reading of the paired differences: is the mean outside twice its standard error?"""
    mean, std = _mean_std(diffs)
    if len(diffs) < 2:
        return "One seed: no error bar, no conclusion."
    err = std / math.sqrt(len(diffs))
    if std == 0 and mean == 0:
        return "Identical outcomes: a null result at this budget."
    if abs(mean) <= 2 * err:
        return f"|mean| <= 2 standard errors ({2 * err * 100:.1f} points): no detectable difference (a null result at this scale)."
    better = "VA-OPD" if mean > 0 else "OPD"
    return f"|mean| > 2 standard errors ({2 * err * 100:.1f} points): {better} ahead at this budget, over {len(diffs)} seeds."


def _teacher_line(args: dict) -> str:
    import json

    path = os.path.join(args["teacher"], "training.json")
    if not os.path.isfile(path):
        return "no training.json next to the weights"
    with open(path) as f:
        t = json.load(f)
    return (f"{t['steps']} steps, {t['train_seconds']} s; validation accuracy {100 * t['val_accuracy']:.0f}%,"
            f" {100 * t['val_accuracy_pixelated']:.0f}% on pixelated images")


def write_report(runs: List[dict], args: dict, wall: float, doc: str, img_dir: str) -> str:
    paths = _plots(runs, img_dir)
    rel = lambda p: os.path.relpath(p, os.path.dirname(os.path.abspath(doc)))  # noqa: E731
    by = {m: [r for r in runs if r["method"] == m] for m in LABEL}
    seeds = sorted({r["seed"] for r in runs})
    lines = [
        "# Reproduction at laptop scale: OPD vs VA-OPD on a fine-detail visual task",
        "",
        "Generated by `python -m experiments.reproduce` (code in `experiments/`); every number below comes from",
        "the run that wrote this page. Task (`experiments/task.py`): a 64 x 64 image with a frame and a box",
        "filled with 1, 2 or 3 px wide stripes (random position, size, orientation, colours); question",
        "\"How wide are the stripes?\" (uniform answers: chance = 33%); response template",
        "`The stripes are w px. \\boxed{w}`. Every width is half ink, so 10% pixelation blurs all three",
        "to the same tint. Teacher: tiny Qwen3-VL (hidden 96, 3 layers) trained by `experiments.teacher`",
        f"({_teacher_line(args)}); student: hidden 64, 2 layers, trained by `experiments.student` on the",
        "template with *random* answers (it starts with the format, not the skill).",
        "",
        f"Budget per run: {args['steps']} optimizer steps x {args['prompts']} prompts x {args['generations']} rollouts,"
        f" lr {args['lr']}, {args['num_train']} training images; accuracy on {args['num_eval']} test images"
        f" (greedy); seeds {seeds}. Everything else is the trainer's default (paper recipe: temperature 0.7,"
        " top-p 0.95, AdamW (0.9, 0.95), wd 0.1, cosine, 5% warmup, clip 1.0, f = 0.2, lambda = 0.5).",
        f"Wall clock: {wall / 60:.1f} min for all runs ({args['workers']} runs in parallel, {args['threads']}"
        f" torch thread each, nice 10) on {os.cpu_count()} CPU cores shared with other jobs"
        f" ({platform.machine()}; load average {_load()} when this page was written).",
        "",
        "## Accuracy and visual reliance (mean ± std over seeds)",
        "",
        "| method | accuracy before (%) | accuracy after (%) | visual reliance before | visual reliance after | run time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for method, rs in by.items():
        ev = lambda tag, key: [r["evals"][tag][key] for r in rs]  # noqa: E731
        lines.append(f"| {LABEL[method]} | {_fmt(ev('before', 'eval_accuracy'), 100)} | {_fmt(ev('after', 'eval_accuracy'), 100)} "
                     f"| {_fmt(ev('before', 'eval_visual_reliance'), 1, 2, 'e')} | {_fmt(ev('after', 'eval_visual_reliance'), 1, 2, 'e')} "
                     f"| {_fmt([r['seconds'] for r in rs], 1, 0)} |")
    from . import task

    answers = [s.answer for s in task.dataset(args["data_seed"], "test", args["num_eval"])]
    majority = max(answers.count(a) for a in task.ANSWERS) / len(answers)
    lines += ["", f"Reference points on this test split: chance 33.3%; always giving its most frequent answer {100 * majority:.1f}%"
              " (a student that ignores the image and always says one width scores one of the per-answer shares:"
              f" {', '.join(f'{a}: {100 * answers.count(a) / len(answers):.1f}%' for a in task.ANSWERS)})."]
    diffs = [a["evals"]["after"]["eval_accuracy"] - b["evals"]["after"]["eval_accuracy"]
             for a in by["va_opd"] for b in by["opd"] if a["seed"] == b["seed"]]
    lines += ["", f"Paired difference VA-OPD - OPD in final accuracy (same seed): {_fmt(diffs, 100)} points "
              f"(per seed: {', '.join(f'{100 * d:+.1f}' for d in diffs)}). {_verdict(diffs)}", "",
              "| seed | " + " | ".join(f"{LABEL[m]} accuracy after (%)" for m in by) + " |", "|---|" + "---|" * len(by)]
    shares = {round(answers.count(a) / len(answers), 6): a for a in task.ANSWERS}

    def cell(r):
        acc = r["evals"]["after"]["eval_accuracy"]
        # matching a constant-answer score is a hint, not proof, that the student ignores the image
        hint = f" (= always '{shares[round(acc, 6)]}')" if round(acc, 6) in shares else " (format broken)" if acc == 0 else ""
        return f"{100 * acc:.1f}{hint}"

    for seed in seeds:
        cells = [cell(r) for m in by for r in by[m] if r["seed"] == seed]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines += ["", "Training health per run (from the trainer's metrics.jsonl): student entropy of its sampled tokens",
              "(first 10 / last 20 steps), the share of rollouts cut at the length limit (no EOS: the format broke)",
              "over the last 20 steps, and the largest per-step mean KL.", "",
              "| run | entropy first 10 | entropy last 20 | truncated last 20 | max mean KL |", "|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["method"], r["seed"])):
        h = r["history"]
        mean = lambda rows, key: sum(x[key] for x in rows) / max(len(rows), 1)  # noqa: E731
        lines.append(f"| {LABEL[r['method']]} seed {r['seed']} | {mean(h[:10], 'entropy_mean'):.3f} | "
                     f"{mean(h[-20:], 'entropy_mean'):.3f} | {100 * mean(h[-20:], 'truncated_fraction'):.0f}% | "
                     f"{max(x['kl_mean'] for x in h):.2f} |")
    lines += ["",
              "Visual reliance = the student's own mean max(log p(y | image) - log p(y | pixelated), 0) over its greedy",
              "answer tokens (nats/token).", "", f"![accuracy and visual reliance over training]({rel(paths['curves'])})", "",
              "## Where the visual advantage sits", "",
              f"The teacher scores sampled student rollouts ({args['profile_prompts']} test prompts x {args['generations']}) on both views;",
              "VA_n = max(log p_t(y_n | image) - log p_t(y_n | pixelated), 0).", "",
              "| student | share of VA held by each rollout's top 20% tokens (pooled over rollouts) | ... when the answer is right | ... when wrong |",
              "|---|---|---|---|"]
    groups = [("before training", [r["va_before"] for r in runs if "va_before" in r])]
    groups += [(f"after {LABEL[m]}", [r["va_after"] for r in rs]) for m, rs in by.items()]
    for name, ps in groups:
        lines.append(f"| {name} | {_fmt([p['top_share'] for p in ps], 100)}% | {_fmt([p['top_share_correct'] for p in ps], 100)}% "
                     f"| {_fmt([p['top_share_wrong'] for p in ps], 100)}% |")
    lines += ["", "| student | " + " | ".join(f"{k}: mean VA (share of all VA)" for k in KINDS) + " |",
              "|---|" + "---|" * len(KINDS)]
    for name, ps in groups:
        cells = []
        for k in KINDS:
            mean = _mean_std([p["mean_va"].get(k, float("nan")) for p in ps])[0]
            share = _mean_std([p["va_share"].get(k, float("nan")) for p in ps])[0]
            cells.append(f"{mean:.3f} ({100 * share:.0f}%)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    va_runs = [h for r in by["va_opd"] for h in r["history"] if "va_high_share" in h]
    if va_runs:
        lines += ["", f"During VA-OPD training the trainer's own `va_high_share` (VA inside the high groups) averaged "
                  f"{_fmt([h['va_high_share'] for h in va_runs], 100)}% over {len(va_runs)} steps; high-group tokens with"
                  f" VA = 0 (groups filled by ties when a rollout has fewer positive-VA tokens than 20%):"
                  f" {_fmt([h['high_zero_va_fraction'] for h in va_runs], 100)}%; rollout weights ranged"
                  f" {_fmt([h['rollout_weight_min'] for h in va_runs], 1, 3)} (min) to"
                  f" {_fmt([h['rollout_weight_max'] for h in va_runs], 1, 3)} (max) per step (uniform = 0.25 for K = 4)."]
    lines += ["", f"![mean VA per token kind]({rel(paths['va'])})", "",
              "## How to rerun, and what this can and cannot show", "",
              "```",
              "python -m experiments.reproduce                              # this page (uses the shipped assets)",
              "python -m experiments.teacher && python -m experiments.student  # regenerate experiments/assets",
              "python -m experiments.report runs/reproduce/results.json     # rewrite this page from saved results",
              "```", "",
              "- Scale: a 0.35 M-parameter teacher and a 0.16 M-parameter student, a few hundred optimizer",
              "  steps, one visual fact per image and one answer token that depends on it. The paper's setting",
              "  (2B student, Geometry3K, thousands of steps, long reasoning) is not reproduced; this exercises",
              "  the method's ingredients on a task where the answer provably needs the fine detail.",
              "- VA is measured on the token the student *sampled*. When the sampled width digit is right, it",
              "  carries all the VA of the rollout and sits in the high group; when it is wrong, the teacher is",
              "  *more* sure it is wrong with the image than without, so its VA is 0, the high group fills with",
              "  tied zero-VA template tokens, and the rollout's weight drops. VA-OPD therefore leans on rollouts",
              "  that already read the image; a student that answers one width for everything gets",
              "  identical siblings and hence uniform weights. The top-20% concentration above follows from",
              "  this construction (one image-dependent token per response) more than it tests a hypothesis.",
              "- Accuracy is measured on a fixed test split with greedy decoding; with 96 images one image is",
              "  ~1 point, and the seed-to-seed spread is the error bar that matters.",
              "- Adam normalises update sizes, so reweighting tokens changes the *direction* of the student's",
              "  update, not its size; when the template tokens are already learned (KL ~ 0) OPD's gradient is",
              "  also dominated by the answer token, which narrows the gap VA-OPD can open here.", ""]
    os.makedirs(os.path.dirname(os.path.abspath(doc)), exist_ok=True)
    with open(doc, "w") as f:
        f.write("\n".join(lines) + "\n")
    return doc


def main(argv=None) -> int:
    """Rewrite the page from a saved ``results.json`` (no training): python -m experiments.report PATH."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results")
    parser.add_argument("--doc", default=None)
    parser.add_argument("--img", default=None)
    a = parser.parse_args(argv)
    with open(a.results) as f:
        saved = json.load(f)
    args = saved["args"]
    print(write_report(saved["runs"], args, saved["wall_seconds"], a.doc or args["doc"], a.img or args["img"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
