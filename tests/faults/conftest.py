"""The fault-injection suite runs the real trainer on the tiny models, as tests/trainer does: it
reuses that folder's fixtures (tiny_models, make_config, repo_root) and helpers."""
import importlib.util
import json
import os
import sys

import pytest

HERE = os.path.dirname(__file__)
TRAINER_TESTS = os.path.join(HERE, "..", "trainer")
sys.path.insert(0, TRAINER_TESTS)
from _bootstrap import ensure_importable  # noqa: E402

ensure_importable()

_spec = importlib.util.spec_from_file_location("_trainer_test_fixtures", os.path.join(TRAINER_TESTS, "conftest.py"))
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
tiny_models, make_config, repo_root = _fixtures.tiny_models, _fixtures.make_config, _fixtures.repo_root


def losses(outputs):
    return [h["loss"] for h in outputs["history"]]


def metric_steps(output_dir):
    """Steps of the training lines (those with a loss) in output_dir/metrics.jsonl, in file order."""
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["step"] for r in rows if "loss" in r]


_REFERENCE = {}


@pytest.fixture
def uninterrupted(make_config, tmp_path_factory):
    """Losses of the 4-step run that every interrupted-then-resumed run must replay exactly (computed once)."""
    if "losses" not in _REFERENCE:
        from vaopd_trainer.train import Trainer

        out = tmp_path_factory.mktemp("reference") / "run"
        _REFERENCE["losses"] = losses(Trainer(make_config(max_steps=4, save_steps=0, output_dir=str(out))).train())
    return _REFERENCE["losses"]
