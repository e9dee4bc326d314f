"""Another run's files in output_dir, a foreign checkpoint, a schedule that grows."""
import shutil

import pytest

from vaopd_trainer import checkpoint, cli
from vaopd_trainer.errors import RunMismatchError
from vaopd_trainer.train import Trainer


_FINISHED = {}


@pytest.fixture
def finished_run(make_config, tmp_path, tmp_path_factory):
    """A copy of one finished 1-step run (checkpoint-1, metrics, student), trained once for the module."""
    if "path" not in _FINISHED:
        _FINISHED["path"] = tmp_path_factory.mktemp("finished") / "run"
        Trainer(make_config(max_steps=1, output_dir=str(_FINISHED["path"]))).train()
    out = tmp_path / "run"
    shutil.copytree(_FINISHED["path"], out)
    return out


def test_fresh_run_refuses_an_output_dir_holding_a_run(make_config, finished_run, capsys):
    with pytest.raises(RunMismatchError, match=r"^output_dir: .*checkpoint-1.*metrics.jsonl.*overwrite_output_dir"):
        Trainer(make_config(output_dir=str(finished_run)))
    with pytest.raises(RunMismatchError, match=r"^output_dir: "):  # resuming another folder's checkpoint into it
        Trainer(make_config(output_dir=str(finished_run), resume=str(finished_run.parent)))
    args = ["--output_dir", str(finished_run), "--max_steps", "1", "--report_to", "none"]
    assert cli.main(args) == 1
    assert "output_dir" in capsys.readouterr().err
    assert checkpoint.latest(str(finished_run)).endswith("checkpoint-1")  # untouched


def test_overwrite_output_dir_replaces_the_old_run(make_config, finished_run):
    (finished_run / "checkpoint-7").mkdir()  # as if the old run had gone further
    (finished_run / "checkpoint-7" / "trainer_state.json").write_text('{"step": 7}')
    Trainer(make_config(max_steps=1, output_dir=str(finished_run), overwrite_output_dir=True)).train()
    assert sorted(p.name for p in finished_run.glob("checkpoint-*")) == ["checkpoint-1"]


@pytest.mark.parametrize("changes, named", [
    (dict(seed=1), ["seed"]),
    (dict(per_device_train_batch_size=1, num_generations=2), ["per_device_train_batch_size", "num_generations"]),
    (dict(method="opd"), ["method"]),
])
def test_resume_refuses_a_checkpoint_of_another_run(make_config, finished_run, changes, named):
    trainer = Trainer(make_config(max_steps=4, output_dir=str(finished_run), resume="latest", **changes))
    with pytest.raises(RunMismatchError, match="belongs to a different run") as err:
        trainer.train()
    for field in named:
        assert field in str(err.value)
    assert "max_steps" not in str(err.value)


def test_resume_may_grow_max_steps(make_config, finished_run):
    resumed = Trainer(make_config(max_steps=2, output_dir=str(finished_run), resume="latest")).train()
    assert [h["step"] for h in resumed["history"]] == [2]
