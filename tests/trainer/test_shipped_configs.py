"""Every shipped config loads and validates: configs/*.yaml through the trainer's loader,
configs/accelerate/*.yaml through accelerate's own config and launch parsing."""
import glob
import os

import pytest
import yaml

from _bootstrap import REPO
from vaopd_trainer.config import load_config

TRAIN_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
ACCELERATE_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "accelerate", "*.yaml")))
PATH_FIELDS = ("student_model", "teacher_model", "train_file", "eval_file", "image_root")


def test_every_config_folder_is_covered():
    assert TRAIN_CONFIGS and ACCELERATE_CONFIGS
    assert {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "configs", "*"))} <= (
        {os.path.basename(p) for p in TRAIN_CONFIGS} | {"accelerate"})


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=os.path.basename)
def test_train_config_loads_and_its_repo_paths_exist(path):
    cfg = load_config(path)  # every field known, typed and validated
    for name in PATH_FIELDS:
        value = getattr(cfg, name)
        # a path into a folder this repository ships must exist there (commands run from the repo root);
        # hub ids and paths that a documented command creates (data/...) are not checked
        if value and os.path.isdir(os.path.join(REPO, value.split("/")[0])):
            assert os.path.exists(os.path.join(REPO, value)), f"{name}: {value}"


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=os.path.basename)
def test_accelerate_config_launches_its_processes(path):
    """accelerate's own parsing of the YAML (as ``accelerate launch --config_file`` does) picks a
    multi-process launcher with the YAML's process count; a MULTI_CPU file would pick one process."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    with open(path) as f:
        raw = yaml.safe_load(f)
    for key in ("compute_environment", "distributed_type", "num_machines", "num_processes", "mixed_precision"):
        assert key in raw, key
    config = load_config_from_file(path)
    assert config.compute_environment.value == "LOCAL_MACHINE" and config.num_machines == 1
    args = launch_command_parser().parse_args(["--config_file", path, "train.py"])
    args, _, _ = _validate_launch_command(args)
    assert args.multi_gpu or args.use_deepspeed or args.use_fsdp, "accelerate would start one process"
    assert args.num_processes == raw["num_processes"] >= 2
