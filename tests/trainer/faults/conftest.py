"""The fault-injection suite runs the real trainer on the tiny models with tests/trainer's fixtures
(tiny_models, make_config, repo_root: the conftest.py one folder up)."""
import pytest
from _runs import losses

_REFERENCE = {}


@pytest.fixture
def uninterrupted(make_config, tmp_path_factory):
    """Losses of the 4-step run that every interrupted-then-resumed run must replay exactly (computed once)."""
    if "losses" not in _REFERENCE:
        from vaopd_trainer.train import Trainer

        out = tmp_path_factory.mktemp("reference") / "run"
        _REFERENCE["losses"] = losses(Trainer(make_config(max_steps=4, save_steps=0, output_dir=str(out))).train())
    return _REFERENCE["losses"]
