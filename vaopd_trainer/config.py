"""Training configuration: one dataclass, read from YAML, overridden from the command line.

Field names follow TRL where TRL has one. ``validate`` checks every value and every input path
before anything heavy happens, so a typo fails in a second instead of after a model load.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional

import yaml

TINY = "tiny"  # model name that means "build the tiny offline Qwen3-VL models locally"
DATASETS = ("synthetic", "geometry3k", "virl39k", "prepared")
METHODS = ("va_opd", "opd")
TEACHER_SHARDINGS = ("none", "fsdp2")
# vaopd_kernels' backend names (its backends registry); kept here so the config is checked without importing torch
KERNEL_BACKENDS = ("auto", "reference", "torch", "triton", "cuda")
# the objective's ablation names (vaopd_kernels.objective), kept here like KERNEL_BACKENDS; a test ties them
HIGH_SELECTIONS = ("va", "random")
ROLLOUT_WEIGHTINGS = ("va", "uniform")
VISUAL_SIGNALS = ("sampled", "divergence")  # vaopd_kernels.validation's, kept here like KERNEL_BACKENDS


class ConfigError(ValueError):
    """A config value is wrong; the message names the field."""


def _field(default: Any, help: str) -> Any:
    """A config field with its one-line help (``vaopd-train --help`` lists them)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # models
    student_model: str = _field(TINY, "hub id or local folder (from_pretrained); 'tiny': a small random offline "
                                      "pair built under output_dir/tiny_models")
    teacher_model: str = _field(TINY, "hub id or local folder, or 'tiny' (as student_model)")
    # data
    dataset: str = _field("synthetic", f"one of {DATASETS}")
    train_file: Optional[str] = _field(None, "parquet file, or a dataset folder / hub id that datasets.load_dataset reads")
    eval_file: Optional[str] = _field(None, "as train_file, for evaluation")
    dataset_train_split: str = _field("train", "split read from train_file when it is a folder / hub id")
    dataset_test_split: str = _field("validation", "split read from eval_file when it is a folder / hub id")
    image_root: Optional[str] = _field(None, "ViRL39K: the folder its image paths are relative to")
    num_train_samples: int = _field(64, "synthetic only: training problems")
    num_eval_samples: int = _field(16, "synthetic only: evaluation problems (real data evaluates all of eval_file)")
    image_size: int = _field(64, "synthetic only: image side in pixels")
    min_pixels: int = _field(262144, "the image processor resizes each image (aspect kept) to at least this "
                                     "many pixels (512 x 512)")
    max_pixels: int = _field(4194304, "... and at most this many (2048 x 2048)")
    skip_bad_images: bool = _field(False, "an undecodable image: false = stop naming its row, true = skip and count it")
    # method
    method: str = _field("va_opd", f"one of {METHODS}")
    high_fraction: float = _field(0.2, "share of each rollout's tokens in its high-VA group (f)")
    high_weight: float = _field(0.5, "loss mass of the high-VA group (lambda)")
    pixelate_ratio: float = _field(0.1, "degraded view: down to floor(ratio x side), nearest back up")
    va_temperature: float = _field(1.0, "tau of the softmax over sibling rollouts' VA z-scores")
    high_selection: str = _field("va", "ablation 'random': ceil(f T) random tokens per rollout (seeded by seed, step)")
    rollout_weighting: str = _field("va", "ablation 'uniform': sibling rollouts weighted 1/K")
    visual_signal: str = _field("sampled", "VA: 'sampled' (the paper's, at the sampled token) or 'divergence' "
                                           "(KL between the teacher's two views, docs/math.md)")
    kernel_backend: str = _field("auto", f"vaopd_kernels backend, one of {KERNEL_BACKENDS}")
    # rollouts
    per_device_train_batch_size: int = _field(16, "prompts per device per step")
    num_generations: int = _field(4, "rollouts per prompt (K)")
    max_completion_length: int = _field(4096, "tokens per rollout at most")
    temperature: float = _field(0.7, "sampling temperature of the rollouts")
    top_p: float = _field(0.95, "nucleus sampling of the rollouts")
    top_k: int = _field(0, "top-k sampling of the rollouts; 0 = off (the paper: off)")
    min_p: float = _field(0.0, "min-p sampling of the rollouts; 0 = off")
    repetition_penalty: float = _field(1.0, "1 = off")
    prompt_suffix: str = _field("", "appended to the raw question inside the chat template (paper: nothing)")
    micro_batch_size: int = _field(0, "rollouts per student forward/backward; 0 = the whole batch at once")
    # optimisation
    learning_rate: float = _field(1e-6, "AdamW learning rate (cosine schedule after warm-up)")
    adam_beta1: float = _field(0.9, "AdamW beta1")
    adam_beta2: float = _field(0.95, "AdamW beta2")
    weight_decay: float = _field(0.1, "AdamW weight decay")
    max_grad_norm: float = _field(1.0, "gradient clipping; 0 = none (the norm is still computed and logged)")
    warmup_ratio: float = _field(0.05, "share of the steps spent warming up the learning rate")
    num_train_epochs: int = _field(5, "passes over the training set")
    max_steps: int = _field(-1, "> 0 overrides num_train_epochs")
    bf16: bool = _field(False, "bf16 teacher and mixed precision")
    gradient_checkpointing: bool = _field(False, "recompute the student's activations in backward")
    # Default none: the whole bf16 8B teacher (16.3 GiB) fits beside the student on 80 GB cards under
    # both engines, and sharding only pays where it does not (24 GB cards)
    teacher_sharding: str = _field("none", "the frozen teacher per GPU (docs/trainer.md, 'Memory per GPU'): none = a "
                                           "whole copy on every GPU; fsdp2 = sharded over the processes, all-gathered "
                                           "layer by layer in each teacher pass")
    teacher_offload: bool = _field(False, "with teacher_sharding fsdp2: the teacher's shards stay on the CPU and are "
                                          "copied in for each pass (one GPU that cannot hold student and teacher)")
    max_skipped_steps: int = _field(3, "non-finite loss/gradient steps in a row before the run stops as diverged")
    # bookkeeping
    output_dir: str = _field("runs/vaopd", "checkpoints, metrics.jsonl, curves, the exported student")
    seed: int = _field(42, "seed of sampling, data order and the tiny models")
    logging_steps: int = _field(1, "log every this many steps")
    save_steps: int = _field(50, "checkpoint every this many steps; 0 = only the final checkpoint")
    save_total_limit: Optional[int] = _field(None, "keep at most this many checkpoints (the oldest go); None = all")
    eval_steps: int = _field(0, "evaluate every this many steps; 0 = only at the end")
    eval_num_generations: int = _field(8, "samples per validation problem; accuracy = their mean (avg@8)")
    per_device_eval_batch_size: int = _field(0, "answers generated at once in evaluation; 0 = the training rollout "
                                                "batch (per_device_train_batch_size x num_generations)")
    eval_do_sample: bool = _field(True, "false: one greedy answer per problem")
    eval_greedy: bool = _field(False, "with eval_do_sample: also one greedy answer per problem (eval_greedy_accuracy)")
    eval_temperature: float = _field(1.0, "evaluation sampling temperature")
    eval_top_p: float = _field(1.0, "evaluation nucleus sampling")
    eval_top_k: int = _field(0, "evaluation top-k sampling; 0 = off")
    val_before_train: bool = _field(True, "evaluate once before the first step")
    resume: Optional[str] = _field(None, "a checkpoint folder, or 'latest' (the newest in output_dir)")
    overwrite_output_dir: bool = _field(False, "a fresh run may replace another run's checkpoints/metrics in output_dir")
    num_visualize: int = _field(4, "rollouts shown in the token-level VA page (va_tokens.html)")
    report_to: str = _field("auto", "'auto' (TensorBoard when installed), 'tensorboard' or 'none'")


def _coerce(name: str, value: Any, typ: Any) -> Any:
    """Turn a YAML or command-line value into the field's type, or raise naming the field."""
    optional = isinstance(typ, str) and typ.startswith("Optional[")
    base = typ[len("Optional["):-1] if optional else typ
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"{name}: a value is required")
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {base}, got {value!r}") from None


def _apply(cfg: TrainConfig, values: Dict[str, Any], source: str) -> TrainConfig:
    known = {f.name: f.type for f in fields(TrainConfig)}
    updates = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{key}: unknown config field (from {source})")
        updates[key] = _coerce(key, value, known[key])
    return dataclasses.replace(cfg, **updates)


def parse_overrides(argv: List[str]) -> Dict[str, str]:
    """``--name value`` / ``--name=value`` pairs; a bare ``--flag`` means true."""
    out: Dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"{arg}: expected --field value")
        key = arg[2:].replace("-", "_")
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            i += 1
        else:
            value = "true"
        out[key] = value
        i += 1
    return out


def load_config(path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """Defaults < YAML file < overrides, then ``validate``."""
    cfg = TrainConfig()
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config: file not found: {path}")
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config: {path} must hold a mapping of field: value")
        cfg = _apply(cfg, data, path)
    cfg = _apply(cfg, overrides or {}, "overrides")
    validate(cfg)
    return cfg


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {message}")


def _check_objective(cfg: TrainConfig) -> None:
    """high_fraction, high_weight, va_temperature: the kernels' own range check."""
    from vaopd_kernels.validation import check_objective_options  # on use: importing the config stays torch-free
    try:
        check_objective_options(cfg.high_fraction, cfg.high_weight, cfg.va_temperature)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_model(name: str, value: str) -> None:
    # whether a hub id or folder exists is from_pretrained's to say (cache, HF_HUB_OFFLINE, its own error)
    _check(value.strip() != "", name, f"expected a hub id, a local model folder or '{TINY}'")


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first bad field. Touches only the filesystem."""
    _check(cfg.method in METHODS, "method", f"must be one of {METHODS}, got {cfg.method!r}")
    _check(cfg.high_selection in HIGH_SELECTIONS, "high_selection",
           f"must be one of {HIGH_SELECTIONS}, got {cfg.high_selection!r}")
    _check(cfg.rollout_weighting in ROLLOUT_WEIGHTINGS, "rollout_weighting",
           f"must be one of {ROLLOUT_WEIGHTINGS}, got {cfg.rollout_weighting!r}")
    _check(cfg.visual_signal in VISUAL_SIGNALS, "visual_signal",
           f"must be one of {VISUAL_SIGNALS}, got {cfg.visual_signal!r}")
    for name in ("high_selection", "rollout_weighting"):
        _check(cfg.method == "va_opd" or getattr(cfg, name) == "va", name,
               f"is a VA-OPD ablation; method={cfg.method!r} needs the default 'va'")
    _check(cfg.method == "va_opd" or cfg.visual_signal == "sampled", "visual_signal",
           f"is VA-OPD's; method={cfg.method!r} needs the default 'sampled'")
    _check(cfg.teacher_sharding in TEACHER_SHARDINGS, "teacher_sharding",
           f"must be one of {TEACHER_SHARDINGS}, got {cfg.teacher_sharding!r}")
    _check(not cfg.teacher_offload or cfg.teacher_sharding == "fsdp2", "teacher_offload",
           "needs teacher_sharding: fsdp2 (the offload is FSDP2's)")
    _check(cfg.dataset in DATASETS, "dataset", f"must be one of {DATASETS}, got {cfg.dataset!r}")
    _check(cfg.report_to in ("auto", "tensorboard", "none"), "report_to", "must be auto, tensorboard or none")
    _check(cfg.kernel_backend in KERNEL_BACKENDS, "kernel_backend",
           f"must be one of {KERNEL_BACKENDS}, got {cfg.kernel_backend!r}")
    _check_model("student_model", cfg.student_model)
    _check_model("teacher_model", cfg.teacher_model)
    for name in ("per_device_train_batch_size", "num_generations", "max_completion_length", "num_train_epochs",
                 "logging_steps", "image_size", "min_pixels", "max_pixels", "eval_num_generations",
                 "max_skipped_steps"):
        _check(getattr(cfg, name) >= 1, name, f"must be >= 1, got {getattr(cfg, name)}")
    for name in ("micro_batch_size", "save_steps", "eval_steps", "num_visualize", "seed", "top_k", "eval_top_k",
                 "per_device_eval_batch_size"):
        _check(getattr(cfg, name) >= 0, name, f"must be >= 0, got {getattr(cfg, name)}")
    _check(cfg.max_steps == -1 or cfg.max_steps >= 1, "max_steps", f"must be -1 or >= 1, got {cfg.max_steps}")
    _check(cfg.save_total_limit is None or cfg.save_total_limit >= 1, "save_total_limit",
           f"must be >= 1 or None (keep all), got {cfg.save_total_limit}")
    for name in ("learning_rate", "temperature", "eval_temperature", "pixelate_ratio", "repetition_penalty"):
        value = getattr(cfg, name)
        _check(math.isfinite(value) and value > 0, name, f"must be a positive finite number, got {value}")
    for name in ("top_p", "eval_top_p"):
        _check(0 < getattr(cfg, name) <= 1.0, name, f"must be in (0, 1], got {getattr(cfg, name)}")
    _check(0 <= cfg.min_p < 1.0, "min_p", f"must be in [0, 1), got {cfg.min_p}")
    _check(cfg.min_pixels <= cfg.max_pixels, "min_pixels", f"must be <= max_pixels ({cfg.max_pixels}), got {cfg.min_pixels}")
    _check(cfg.pixelate_ratio < 1.0, "pixelate_ratio", f"must be in (0, 1), got {cfg.pixelate_ratio}")
    for name in ("warmup_ratio", "adam_beta1", "adam_beta2"):
        value = getattr(cfg, name)
        _check(0.0 <= value < 1.0, name, f"must be in [0, 1), got {value}")
    _check_objective(cfg)
    for name in ("weight_decay", "max_grad_norm"):
        value = getattr(cfg, name)
        _check(math.isfinite(value) and value >= 0, name, f"must be a finite number >= 0, got {value}")
    if cfg.dataset == "synthetic":
        _check(cfg.num_train_samples >= cfg.per_device_train_batch_size, "num_train_samples",
               f"must be >= per_device_train_batch_size ({cfg.per_device_train_batch_size})")
        _check(cfg.num_eval_samples >= 1, "num_eval_samples", "must be >= 1")
    else:
        for name in ("train_file", "eval_file"):  # existence: load_dataset's error, as for a hub id
            _check(getattr(cfg, name) is not None, name, f"required for dataset={cfg.dataset}: a file, folder or hub id")
        if cfg.dataset == "virl39k":
            _check(cfg.image_root is not None and os.path.isdir(cfg.image_root), "image_root",
                   f"folder not found: {cfg.image_root!r} (ViRL39K image paths are relative to it)")
    if cfg.resume not in (None, "latest"):
        _check(os.path.isdir(cfg.resume), "resume", f"checkpoint folder not found: {cfg.resume!r}")


def to_dict(cfg: TrainConfig) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def fields_help() -> str:
    """Every field with its type, default and help, in TrainConfig's order (``vaopd-train --help``)."""
    rows = [(f"--{f.name} {f.type.removeprefix('Optional[').removesuffix(']')}",
             f"{f.metadata['help']} [default: {f.default!r}]") for f in fields(TrainConfig)]
    width = max(len(flag) for flag, _ in rows)
    return "\n".join(f"  {flag:<{width}}  {text}" for flag, text in rows)
