"""``vaopd-train --help`` lists every TrainConfig field with its default and help (generated from the dataclass)."""
import dataclasses

from vaopd_trainer import cli
from vaopd_trainer.config import TrainConfig


def test_help_lists_every_field_with_default_and_help(capsys):
    assert cli.main(["--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for field in dataclasses.fields(TrainConfig):
        assert field.metadata.get("help", "").strip(), f"{field.name}: no help"
        (line,) = [line for line in lines if line.split()[:1] == [f"--{field.name}"]]
        assert field.metadata["help"] in line and f"[default: {field.default!r}]" in line, line
    assert any(line.startswith("exit status: 0 done; 1 ") and "2 a bad command line" in line for line in lines)


def test_config_errors_exit_2_as_help_says(tmp_path, capsys):
    assert cli.main(["--learning_rat", "1e-3", "--output_dir", str(tmp_path / "run")]) == 2
    assert cli.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config error: learning_rat: unknown config field" in capsys.readouterr().err
