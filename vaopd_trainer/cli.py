"""Command line: ``vaopd-train [--config FILE] [--field value ...]`` and ``vaopd-train prepare ...``."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from .config import ConfigError, fields_help, load_config, parse_overrides
from .intervals import paired_gain_ci95

EXIT_CODES = ("exit status: 0 done; 1 a fault the trainer detected (its message says what to do); 2 a bad "
              "command line or config value, before any model loads; 128 + N stopped by signal N with a checkpoint")


def _summary(outputs: dict) -> str:
    history = outputs["history"]
    rows = []
    if history:
        first, last = history[0], history[-1]
        for key in ("loss", "kl_mean", "va_high_share", "rollout_weight_max", "entropy_mean", "rollout_accuracy",
                    "response_length", "tokens_per_s"):
            if key in last:
                rows.append((key, f"{first[key]:.4g}", f"{last[key]:.4g}"))
        for key in sorted(k for k in last if k.startswith("peak_mem_")):
            rows.append((key, f"{first[key]:.0f}", f"{last[key]:.0f}"))
    evals = outputs["evals"]
    for key in ("eval_accuracy", "eval_greedy_accuracy", "eval_visual_reliance"):
        cells = [_with_interval(evals.get(tag, {}), key) for tag in ("before", "after")]
        if cells != ["-", "-"]:
            rows.append((key, *cells))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{width}}  {'first/before':>15}  {'last/after':>15}", "-" * (width + 34)]
    lines += [f"{name:<{width}}  {a:>15}  {b:>15}" for name, a, b in rows]
    lines += [f"{key} gain: {accuracy_gain(outputs, key)}" for key in ("eval_accuracy", "eval_greedy_accuracy")
              if all(key in outputs["eval_scores"].get(tag, {}) for tag in ("before", "after"))]
    lines.append(f"steps: {len(history)}  train time: {outputs['train_seconds']:.1f}s")
    for key in ("metrics", "curves", "va_page", "checkpoint", "best", "student"):
        if outputs.get(key):
            lines.append(f"{key:<10} {os.path.abspath(str(outputs[key]))}")
    return "\n".join(lines)


def _with_interval(result: dict, key: str) -> str:
    if key not in result:
        return "-"
    ci = result.get(f"{key}_ci95")
    return f"{result[key]:.4g}" if ci is None else f"{result[key]:.3f} +- {ci:.3f}"


def accuracy_gain(outputs: dict, key: str, before: str = "before", after: str = "after") -> str:
    """'+0.123 [0.080, 0.166]': the mean per-image change of ``key`` and its paired 95% interval."""
    scores = outputs["eval_scores"]
    gain, half = paired_gain_ci95(scores[before][key], scores[after][key])
    return f"{gain:+.3f} [{gain - half:+.3f}, {gain + half:+.3f}] (95% interval, {len(scores[after][key])} images)"


def prepare_main(argv: List[str]) -> int:
    from .data import prepare

    parser = argparse.ArgumentParser(prog="vaopd-train prepare",
                                     description="Raw Geometry3K / ViRL39K -> train.parquet + val.parquet")
    parser.add_argument("--format", required=True, choices=("geometry3k", "virl39k"))
    parser.add_argument("--source", required=True,
                        help="geometry3k: a hub id (hiyouga/geometry3k) or a local dataset folder with train and "
                             "validation splits; virl39k: a parquet file (or a hub id / folder: its train split)")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--val_size", type=int, default=200,
                        help="geometry3k: problems drawn from the validation split; virl39k: held out of train")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--image_root", default=None, help="ViRL39K: folder its image paths are relative to")
    args = parser.parse_args(argv)
    for path in prepare(args.source, args.format, args.out_dir, args.val_size, args.seed, args.image_root):
        print(path)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["prepare"]:
        return prepare_main(argv[1:])
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{__doc__.strip()}\n\nfields (defaults < --config YAML < --field value):\n{fields_help()}\n\n{EXIT_CODES}")
        return 0
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            print("error: --config: a file is required", file=sys.stderr)
            return 2
        config_path = argv[i + 1]
        del argv[i:i + 2]
    try:
        cfg = load_config(config_path, parse_overrides(argv))
    except ConfigError as err:  # before any model is loaded
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from .errors import TrainerError
    from .signals import Preempted
    from .train import Trainer  # heavy imports only once the config is known good

    try:
        trainer = Trainer(cfg)
        outputs = trainer.train()
    except Preempted as stop:  # SIGTERM / SIGINT: checkpoint written; exit as a process killed by it would
        print(str(stop), file=sys.stderr)
        trainer.close()  # every rank got the signal and saved together
        return stop.exit_code
    except (TrainerError, ConfigError) as err:  # a fault the trainer detected: its message says what to do
        print(f"error: {err}", file=sys.stderr)
        return 1
    if trainer.acc.is_main_process:
        print(_summary(outputs))
    trainer.close()
    return 0
