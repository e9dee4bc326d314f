import os

import pytest

from vaopd_trainer import cli
from vaopd_trainer.config import ConfigError, load_config, parse_overrides


@pytest.mark.parametrize("overrides, field", [
    ({"learning_rate": "-1"}, "learning_rate"),
    ({"top_p": "1.5"}, "top_p"),
    ({"num_generations": "0"}, "num_generations"),
    ({"method": "grpo"}, "method"),
    ({"high_fraction": "0"}, "high_fraction"),
    ({"high_weight": "1.5"}, "high_weight"),
    ({"va_temperature": "0"}, "va_temperature"),
    ({"pixelate_ratio": "1"}, "pixelate_ratio"),
    ({"max_steps": "2.5"}, "max_steps"),
    ({"bf16": "maybe"}, "bf16"),
    ({"temperature": "nan"}, "temperature"),
    ({"lr": "1e-5"}, "lr"),  # unknown name
    ({"dataset": "geometry3k"}, "train_file"),  # needs files
    ({"student_model": " "}, "student_model"),
    ({"top_k": "-1"}, "top_k"),
    ({"min_p": "1"}, "min_p"),
    ({"repetition_penalty": "0"}, "repetition_penalty"),
    ({"eval_top_p": "0"}, "eval_top_p"),
    ({"eval_temperature": "-1"}, "eval_temperature"),
    ({"eval_num_generations": "0"}, "eval_num_generations"),
    ({"min_pixels": "5000", "max_pixels": "4096"}, "min_pixels"),
    ({"resume": "/does/not/exist"}, "resume"),
    ({"num_train_samples": "2", "per_device_train_batch_size": "4"}, "num_train_samples"),
    ({"teacher_sharding": "fsdp"}, "teacher_sharding"),
    ({"teacher_offload": "true"}, "teacher_offload"),  # without teacher_sharding: fsdp2
])
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        load_config(None, overrides)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 2.0e-5\nnum_generations: 8\nbf16: true\n")
    cfg = load_config(str(path), parse_overrides(["--num_generations", "2", "--gradient_checkpointing", "--seed=7"]))
    assert (cfg.learning_rate, cfg.num_generations, cfg.bf16, cfg.gradient_checkpointing, cfg.seed) == (2e-5, 2, True, True, 7)


def test_unknown_yaml_key_and_missing_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rat: 1\n")
    with pytest.raises(ConfigError, match="^learning_rat: unknown"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="^config: file not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_dataset_files_checked(tmp_path):
    train = tmp_path / "train.parquet"
    train.write_bytes(b"x")
    with pytest.raises(ConfigError, match="^eval_file:"):
        load_config(None, {"dataset": "prepared", "train_file": str(train)})
    with pytest.raises(ConfigError, match="^image_root:"):
        load_config(None, {"dataset": "virl39k", "train_file": str(train), "eval_file": str(train)})
    # a name that is not a local file may be a hub id or dataset folder: load_dataset decides, not the config
    cfg = load_config(None, {"dataset": "geometry3k", "train_file": "hiyouga/geometry3k", "eval_file": "hiyouga/geometry3k",
                             "student_model": "Qwen/Qwen3-VL-2B-Instruct"})
    assert (cfg.train_file, cfg.dataset_train_split, cfg.dataset_test_split) == ("hiyouga/geometry3k", "train", "validation")


def test_cli_rejects_before_loading_models(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["--output_dir", str(out), "--top_p", "3"]) == 2
    assert "top_p" in capsys.readouterr().err
    assert not out.exists()  # nothing built, nothing loaded


def test_shipped_configs_parse(repo_root):
    import yaml

    configs = os.path.join(repo_root, "configs")
    assert load_config(os.path.join(configs, "demo.yaml")).method == "va_opd"
    for name in os.listdir(os.path.join(configs, "accelerate")):
        with open(os.path.join(configs, "accelerate", name)) as f:
            assert "distributed_type" in yaml.safe_load(f), name


# The paper's recipe (arXiv 2605.21924, the authors' release), setting by setting
PAPER = dict(student_model="Qwen/Qwen3-VL-2B-Instruct", teacher_model="Qwen/Qwen3-VL-8B-Instruct", dataset="prepared",
             min_pixels=262144, max_pixels=4194304, prompt_suffix="", method="va_opd", high_fraction=0.2,
             high_weight=0.5, pixelate_ratio=0.1, va_temperature=1.0, num_generations=4, max_completion_length=4096,
             temperature=0.7, top_p=0.95, top_k=0, min_p=0.0, repetition_penalty=1.0, learning_rate=1e-6,
             adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.1, max_grad_norm=1.0, warmup_ratio=0.05,
             num_train_epochs=5, max_steps=-1, bf16=True, gradient_checkpointing=True, eval_steps=50,
             eval_num_generations=8, eval_do_sample=True, eval_temperature=1.0, eval_top_p=1.0, eval_top_k=0,
             val_before_train=True, seed=42)


def test_geometry3k_config_spells_out_the_paper_recipe(repo_root):
    import yaml

    path = os.path.join(repo_root, "configs", "geometry3k.yaml")
    with open(path) as f:
        written = yaml.safe_load(f)
    missing = [k for k in PAPER if k not in written]
    assert not missing, f"not written out explicitly: {missing}"
    cfg = load_config(path)
    assert {k: getattr(cfg, k) for k in PAPER} == PAPER
    # 16 prompts x 4 rollouts per step on one 8-GPU node
    with open(os.path.join(repo_root, "configs", "accelerate", "ddp.yaml")) as f:
        processes = yaml.safe_load(f)["num_processes"]
    assert cfg.per_device_train_batch_size * processes == 16
    text = open(path).read()
    assert "accelerate launch --config_file configs/accelerate/ddp.yaml -m vaopd_trainer --config configs/geometry3k.yaml" in text
    assert "--format geometry3k --source hiyouga/geometry3k" in text
