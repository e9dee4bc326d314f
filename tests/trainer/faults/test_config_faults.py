"""Invalid values are rejected at config time, before any model loads, naming the field."""
import pytest

from vaopd_kernels.backends import resolve_backend
from vaopd_trainer import cli
from vaopd_trainer.config import KERNEL_BACKENDS, ConfigError, load_config


@pytest.mark.parametrize("yaml_text, field", [
    ("kernel_backend: tritn\n", "kernel_backend"),
    ("learning_rate: true\n", "learning_rate"),  # YAML bools are not numbers
    ("max_steps: true\n", "max_steps"),
    ("seed: false\n", "seed"),
    ("max_grad_norm: .inf\n", "max_grad_norm"),
    ("weight_decay: .nan\n", "weight_decay"),
    ("save_total_limit: 0\n", "save_total_limit"),
    ("max_skipped_steps: 0\n", "max_skipped_steps"),
    ("overwrite_output_dir: maybe\n", "overwrite_output_dir"),
])
def test_invalid_values_name_the_field(tmp_path, yaml_text, field):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        load_config(str(path))


def test_kernel_backend_error_lists_the_allowed_values(tmp_path, capsys):
    assert cli.main(["--kernel_backend", "tritn", "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "kernel_backend" in err and all(name in err for name in KERNEL_BACKENDS)
    assert not (tmp_path / "run").exists()  # rejected before anything was built


def test_config_backend_names_are_the_kernel_package_names():
    import torch

    for name in KERNEL_BACKENDS:
        try:
            resolve_backend(name, torch.device("cpu"))
        except RuntimeError:
            pass  # known but not available on this machine
    with pytest.raises(ValueError, match="backend: expected one of"):
        resolve_backend("tritn", torch.device("cpu"))
