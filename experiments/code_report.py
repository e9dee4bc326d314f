"""docs/reproduction.md and its plots from the dilution experiment's results JSON (no training here).

    python -m experiments.code_report bench/results/reproduction/results.json   # rewrite the page
"""
from __future__ import annotations

import argparse
import os
import platform
from typing import Dict, List

from .code_stats import ARMS, MAX_OPD_SD, MIN_EFFECT, decide, mean_sd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABEL = {"opd": "OPD", "va_opd": "VA-OPD", "random_high": "random-high", "va_opd_uniform": "VA-OPD, uniform weights",
         "opd_lr2.5": "OPD, lr x 2.5"}
COLOUR = {"opd": "tab:blue", "va_opd": "tab:red", "random_high": "tab:orange", "va_opd_uniform": "tab:purple",
          "opd_lr2.5": "tab:cyan"}
OUTCOME = {
    "supports": "**supports the mechanism** (VA-OPD > OPD at p < 0.05, the random-high gap is at least half the "
                "main effect, and OPD with a 2.5x step does not match VA-OPD)",
    "falsifies": "**falsifies the mechanism at this scale** (at least one falsification rule fired; see the checks)",
    "inconclusive": "**inconclusive** (neither the support nor the falsification rules are met)",
    "underpowered": f"**underpowered** (OPD's seed-to-seed SD exceeds {MAX_OPD_SD:.0f} points: intervals only)",
}


def _fmt(values: List[float], scale: float = 1.0, digits: int = 1) -> str:
    mean, sd = mean_sd([v * scale for v in values])
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def _by_arm(runs: List[dict]) -> Dict[str, List[dict]]:
    arms: Dict[str, List[dict]] = {}
    for run in sorted(runs, key=lambda r: r["seed"]):
        arms.setdefault(run["arm"], []).append(run)
    return arms


def slot_speed(run: dict) -> float:
    """Mean sampled slot accuracy over all training steps (area under the language-learning curve)."""
    values = [h["sampled_slot_accuracy"] for h in run["history"]]
    return sum(values) / len(values)


def _percent(measured: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {100 * v:.1f}%" for k, v in measured.items() if k != "visual_reliance")


def _phase_a(start: dict) -> str:
    """Phase A of the start student (short template), when the artefact had one."""
    short = start.get("short_checks")
    if not short:
        return ""
    return f"phase A stopped at step {short[-1][0]} ({100 * short[-1][1]:.0f}% on the short template), "


def _start_plot(checks: List[list], img_dir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(img_dir, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([c[0] for c in checks], [100 * c[1] for c in checks], marker=".", color="tab:green", label="student checks")
    ax.axhspan(45, 70, color="grey", alpha=0.2, label="stop window 45-70%")
    ax.axhline(100 / 3, color="black", lw=0.8, ls="--", label="chance")
    ax.set_xlabel("supervised step")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("start student: greedy accuracy at each stop-rule check")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(img_dir, "reproduction_student_start.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _gates_section(gates: dict, img_dir: str, doc_dir: str) -> List[str]:
    lines = ["## Gates (measured before any comparison)", "",
             "| gate | value | rule | |", "|---|---|---|---|"]
    for name, g in gates["gates"].items():
        lines.append(f"| {name.replace('_', ' ')} | {g['value']:.3f} | {g['rule']} | {'pass' if g['pass'] else '**FAIL**'} |")
    shares = gates["rollout_shares"]
    kinds = ", ".join(f"{k[len('opd_loss_share_'):]} {v:.1%}" for k, v in shares.items()
                      if k.startswith("opd_loss_share_") and k[len("opd_loss_share_"):] in ("slot", "digit", "fixed", "eos"))
    start, student = gates["student_start"], gates["student_val"]
    checks = start["checks"] or []
    accuracies = [c[1] for c in checks]
    lines += ["", f"Teacher on {gates['num_val']} validation images (greedy): {_percent(gates['teacher_val'])}; "
              f"on their pixelated copies: {_percent(gates['teacher_val_pixelated'])}.", "",
              f"Start student on the same images: {_percent(student)}, visual reliance "
              f"{student['visual_reliance']:.2e} nats/token. Stop rule: \"{start['stop_rule']}\"; "
              f"{_phase_a(start)}phase B ran {start['steps_run']} steps and {len(checks)} checks (accuracy {100 * min(accuracies, default=0):.0f}-"
              f"{100 * max(accuracies, default=0):.0f}%, {100 * accuracies[-1] if accuracies else float('nan'):.0f}% at "
              "the last; the start-accuracy gates read that last check).", "",
              f"OPD's loss on the start student's sampled rollouts ({shares['rollouts']} rollouts) by token kind: {kinds} "
              "(slot = a slot's first character, where the synonym is decided; fixed = the rest of the text, slot "
              "tails included).", ""]
    if checks:
        lines += [f"![start student checks]({os.path.relpath(_start_plot(checks, img_dir), doc_dir)})", ""]
    return lines


def _plots(arms: Dict[str, List[dict]], img_dir: str) -> Dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(img_dir, exist_ok=True)
    paths = {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for arm, runs in arms.items():
        steps = [h["step"] for h in runs[0]["history"]]
        for key, ax in (("sampled_slot_accuracy", axes[0]), ("truncated_fraction", axes[1])):
            curves = [[h[key] for h in r["history"]] for r in runs]
            mean = [sum(c[i] for c in curves) / len(curves) for i in range(len(steps))]
            ax.plot(steps, mean, color=COLOUR[arm], lw=2, label=f"{LABEL[arm]} ({len(runs)} seeds)")
    axes[0].set_title("slot accuracy of sampled rollouts (language learning)")
    axes[1].set_title("share of rollouts cut at the length limit")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths["curves"] = os.path.join(img_dir, "reproduction_curves.png")
    fig.savefig(paths["curves"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (arm, runs) in enumerate(arms.items()):
        values = [100 * r["final"]["accuracy"] for r in runs]
        ax.scatter([i] * len(values), values, color=COLOUR[arm], alpha=0.7)
        ax.plot([i - 0.25, i + 0.25], [mean_sd(values)[0]] * 2, color="black")
    ax.set_xticks(range(len(arms)), [LABEL[a] for a in arms], fontsize=8)
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title("primary metric per seed (1,000 test images, greedy)")
    fig.tight_layout()
    paths["accuracy"] = os.path.join(img_dir, "reproduction_accuracy.png")
    fig.savefig(paths["accuracy"], dpi=110)
    plt.close(fig)
    return paths


def _results_section(record: dict, img_dir: str, doc_dir: str) -> List[str]:
    arms = _by_arm(record["runs"])
    lines = ["## Results", "", "| arm | seeds | accuracy (%) | slot accuracy (%) | format (%) | truncated (%) | "
             "visual reliance | log p(correct digit) | slot learning (mean sampled slot acc., %) | run time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, runs in arms.items():
        f = [r["final"] for r in runs]
        lines.append(f"| {LABEL[arm]} | {len(runs)} | {_fmt([x['accuracy'] for x in f], 100)} | "
                     f"{_fmt([x['slot_accuracy'] for x in f], 100)} | {_fmt([x['format_rate'] for x in f], 100)} | "
                     f"{_fmt([x['truncation_rate'] for x in f], 100)} | {_fmt([x['visual_reliance'] for x in f], 1, 4)} | "
                     f"{_fmt([x['digit_logprob'] for x in f], 1, 3)} | {_fmt([slot_speed(r) for r in runs], 100)} | "
                     f"{_fmt([r['seconds'] for r in runs], 1, 0)} |")
    seeds = sorted({r["seed"] for r in record["runs"]})
    lines += ["", "Mean ± SD over seeds; the final columns on the 1,000 test images (greedy).", "",
              "Primary metric per seed (final greedy \\boxed{} accuracy, %):", "",
              "| seed | " + " | ".join(LABEL[a] for a in arms) + " |", "|---" * (len(arms) + 1) + "|"]
    by = {(r["arm"], r["seed"]): r for r in record["runs"]}
    for seed in seeds:
        cells = [f"{100 * by[(a, seed)]['final']['accuracy']:.1f}" if (a, seed) in by else "" for a in arms]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    high = {a: runs for a, runs in arms.items() if "high_share_slot" in runs[0]["history"][0]}
    if high:
        lines += ["", "The high group's make-up (share of its tokens by kind, mean over all steps and seeds):", "",
                  "| arm | slot | digit | fixed | eos | VA inside the high group (trainer's va_high_share) |",
                  "|---|---|---|---|---|---|"]
        for arm, runs in high.items():
            hs = [h for r in runs for h in r["history"]]
            cells = [f"{100 * sum(h.get(f'high_share_{k}', 0.0) for h in hs) / len(hs):.1f}%"
                     for k in ("slot", "digit", "fixed", "eos")]
            va_share = sum(h["va_high_share"] for h in hs) / len(hs)
            lines.append(f"| {LABEL[arm]} | " + " | ".join(cells) + f" | {100 * va_share:.1f}% |")
    plots = _plots(arms, img_dir)
    lines += ["", f"![primary metric per seed]({os.path.relpath(plots['accuracy'], doc_dir)})", "",
              f"![language learning and truncation]({os.path.relpath(plots['curves'], doc_dir)})", ""]
    if any(len(arms.get(a, [])) != seeds for a, (_, seeds) in ARMS.items()):
        return lines + ["Not every pre-registered run (arm x seed) is here: no decision is made on a partial "
                        "comparison.", ""]
    accuracy = {a: [100 * r["final"]["accuracy"] for r in runs] for a, runs in arms.items()}
    decision = decide(accuracy, {a: [slot_speed(r) for r in runs] for a, runs in arms.items()})
    main, c = decision["main"], decision["checks"]
    rnd, big = decision["va_minus_random_high"], decision["va_minus_opd_lr2.5"]
    lines += ["## Outcome by the pre-registered rules", "",
              f"VA-OPD - OPD (paired, {main['n']} seeds): {main['mean']:+.2f} points, SD {main['sd']:.2f}, "
              f"SE {main['se']:.2f}; t = {main['t']:.2f}, one-sided p = {main['p_one_sided']:.3f}; one-sided 95% "
              f"interval [{main['lower_95']:+.2f}, +inf), upper bound {main['upper_95']:+.2f}.",
              f"VA-OPD - random-high: {rnd['mean']:+.2f} ± {rnd['se']:.2f} (SE); VA-OPD - OPD at lr x 2.5 "
              f"(seeds 0-{big['n'] - 1}): {big['mean']:+.2f} ± {big['se']:.2f} (SE).", "",
              "| rule | value |", "|---|---|",
              f"| OPD seed-to-seed SD (> {MAX_OPD_SD:.0f}: underpowered) | {c['opd_sd']:.2f} points |",
              f"| VA-OPD > OPD at p < 0.05 | {c['main_significant']} |",
              f"| VA-OPD - random-high >= half the main effect | {c['random_high_gap_at_least_half']} |",
              f"| VA-OPD - OPD(lr x 2.5) >= half the main effect (the bigger step does not match) | {c['bigger_step_does_not_match']} |",
              f"| upper bound of VA-OPD - OPD < +{MIN_EFFECT:.0f} points (falsifies) | {c['upper_bound_below_min_effect']} |",
              f"| random-high >= VA-OPD in mean accuracy (falsifies) | {c['random_high_at_least_va_opd']} |",
              f"| VA-OPD's slot learning not slower than OPD's (falsifies) | {c['va_slot_learning_not_slower']} |",
              "", f"Outcome: {OUTCOME[decision['outcome']]}.", ""]
    record["decision"] = decision
    return lines


def write_report(record: dict, doc: str, img_dir: str) -> str:
    args, gates = record["args"], record.get("gates")
    doc_dir = os.path.dirname(os.path.abspath(doc))
    lines = ["# Reproduction at laptop scale: does VA-OPD beat OPD when visual tokens are diluted?", "",
             "Generated by `python -m experiments.code_reproduce` (`make reproduce`) from the results JSON it "
             "wrote; rewrite it with `python -m experiments.code_report <results.json>`. The design, gates, arms, "
             "metric, test and decision rules were committed beforehand in "
             f"[preregistration.md]({os.path.relpath(os.path.join(REPO, 'docs', 'preregistration.md'), doc_dir)}).", "",
             "Task (`experiments/code_task.py`): the stripe images (how wide, 1-3 px; chance 33%), an 8-bit code "
             "in the question, and a ~80-character response with 8 synonym slots chosen by the code, ending "
             "\"... w px. \\boxed{w}\". The start student is meant to have the code backwards at every slot and partial "
             "visual skill, so the teacher disagrees with it at ~8 language tokens and at most 2 visual ones per response.",
             "", f"Per run: {args['steps']} optimizer steps x {args['prompts']} prompts x {args['generations']} rollouts, "
             f"lr {args['lr']:g} (OPD lr x 2.5 arm: {2.5 * args['lr']:g}), {args['num_train']} training prompts, "
             f"final accuracy on {args['num_test']} fixed test images; the trainer's defaults otherwise (temperature "
             "0.7, top-p 0.95, AdamW (0.9, 0.95), wd 0.1, cosine, 5% warmup, clip 1.0, f = 0.2, lambda = 0.5).", ""]
    if "wall_seconds" in record:
        lines += [f"Wall clock: {record['wall_seconds'] / 60:.1f} min for {len(record['runs'])} runs ({args['workers']} "
                  f"in parallel, {args['threads']} torch thread each) on {os.cpu_count()} CPU cores shared with other "
                  f"jobs ({platform.machine()}).", ""]
    if gates is not None:
        lines += _gates_section(gates, img_dir, doc_dir)
    if record.get("stopped"):
        lines += ["## Outcome", "", f"Stopped: {record['stopped']}. By the pre-registration a failed gate means no "
                  "comparison, so the arms were not run and this page draws no conclusion about VA-OPD vs OPD.", ""]
    elif record["runs"]:
        lines += _results_section(record, img_dir, doc_dir)
    deviations = record.get("deviations") or ["none"]
    lines += ["## Deviations from the pre-registration", ""] + [f"- {d}" for d in deviations] + [""]
    if record.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in record["notes"]] + [""]
    text = "\n".join(lines)
    os.makedirs(doc_dir, exist_ok=True)
    with open(doc, "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--doc", default=os.path.join(REPO, "docs", "reproduction.md"))
    parser.add_argument("--img", default=os.path.join(REPO, "docs", "img"))
    args = parser.parse_args(argv)
    with open(args.results) as f:
        record = json.load(f)
    write_report(record, args.doc, args.img)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
