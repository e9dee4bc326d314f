"""Where a run starts: refuse another run's files, resume only this run's checkpoints, skip corrupt ones.

A run's identity is what fixes its trajectory: the models, the training data, the method and its
hyper-parameters, the seed and the batch shape. ``max_steps`` / ``num_train_epochs`` (and the
learning-rate schedule, evaluation and saving settings) may change on resume.
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import Dict, List, Optional, Tuple

from . import checkpoint
from .config import TINY, TrainConfig
from .errors import CheckpointError, RunMismatchError

logger = logging.getLogger("vaopd_trainer")

RUN_FIELDS = ("student_model", "teacher_model", "dataset", "train_file", "image_root", "num_train_samples",
              "image_size", "max_pixels", "method", "high_fraction", "high_weight", "pixelate_ratio",
              "va_temperature", "seed", "per_device_train_batch_size", "num_generations")
_PATH_FIELDS = ("student_model", "teacher_model", "train_file", "image_root")


def run_identity(cfg: TrainConfig, num_processes: int) -> Dict[str, object]:
    """The values a checkpoint must share with the run that resumes it (paths made absolute)."""
    identity: Dict[str, object] = {}
    for name in RUN_FIELDS:
        value = getattr(cfg, name)
        if name in _PATH_FIELDS and value is not None and value != TINY:
            value = os.path.abspath(value)
        identity[name] = value
    identity["num_processes"] = num_processes
    return identity


def differing_fields(saved: Dict[str, object], current: Dict[str, object]) -> List[str]:
    return [f"{name} ({saved.get(name)!r} in the checkpoint, {current[name]!r} now)"
            for name in current if saved.get(name) != current[name]]


def prepare_output_dir(cfg: TrainConfig, is_main_process: bool) -> None:
    """A fresh run (or one resuming a checkpoint from elsewhere) refuses an ``output_dir`` holding another
    run, unless ``overwrite_output_dir`` (then that run's checkpoints, metrics and export are removed)."""
    continuing = cfg.resume == "latest" or (
        cfg.resume is not None and os.path.dirname(os.path.abspath(cfg.resume)) == os.path.abspath(cfg.output_dir))
    if continuing:
        return
    found = checkpoint.run_files(cfg.output_dir)
    if not found:
        return
    if not cfg.overwrite_output_dir:
        raise RunMismatchError(
            f"output_dir: {cfg.output_dir} already holds a run ({', '.join(found[:4])}); set resume: latest to "
            f"continue it, overwrite_output_dir: true to replace it, or choose another output_dir")
    if is_main_process:
        for name in found:
            path = os.path.join(cfg.output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def restore(accelerator, cfg: TrainConfig, identity: Dict[str, object]) -> Tuple[int, Dict[str, object], Optional[str]]:
    """Load the checkpoint ``cfg.resume`` names -> (steps done, its trainer state, its path).

    ``latest`` tries the complete checkpoints newest first and skips (with a warning naming it) one
    that fails to load; a checkpoint of another run stops the run naming the differing fields.
    No checkpoint (a fresh run, or ``latest`` in an empty folder) -> (0, {}, None).
    """
    if cfg.resume is None:
        return 0, {}, None
    explicit = cfg.resume != "latest"
    paths = [cfg.resume] if explicit else checkpoint.candidates(cfg.output_dir)
    failures = []
    for path in paths:
        try:
            state = checkpoint.read_state(path)
        except (OSError, ValueError, CheckpointError) as err:
            state, error = None, err
        if state is not None:
            if "run" not in state:
                raise RunMismatchError(f"resume: {path} records no run identity (written by another tool or an "
                                       f"older trainer); it cannot be checked against this run")
            differing = differing_fields(state["run"], identity)
            if differing:
                raise RunMismatchError(f"resume: {path} belongs to a different run: " + "; ".join(differing)
                                       + ". Resume it with the same settings or start a new output_dir")
            error = None
            try:
                step = checkpoint.load(accelerator, path)
            except Exception as err:  # noqa: BLE001 - a corrupt file raises anything from json to safetensors
                error = err
        if checkpoint.all_ranks_ok(accelerator, error is None):
            return step, state, path
        if explicit:
            raise CheckpointError(f"resume: {path} cannot be loaded ({error or 'failed on another process'})")
        failures.append(path)
        logger.warning("resume: skipping %s: it cannot be loaded (%s); trying the previous checkpoint", path,
                       error or "failed on another process")
    if failures:
        raise CheckpointError(f"resume: no checkpoint in {cfg.output_dir} can be loaded ({', '.join(failures)})")
    return 0, {}, None
