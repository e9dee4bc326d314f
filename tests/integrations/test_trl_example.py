"""examples/trl_offline.py, run as a user runs it: VAOPDTrainer on the shipped tiny pair, offline, on the CPU."""
import math
import os
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_trl_offline_example_trains_with_visual_advantage(tmp_path):
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)  # this checkout's packages
    env = dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, os.path.join(repo, "examples", "trl_offline.py"), "--steps", "2",
                           "--output_dir", str(tmp_path / "run")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = re.findall(r"^step (\d+): loss=(\S+) kl_mean=(\S+) va_mean=(\S+)", proc.stdout, flags=re.M)
    assert [int(s[0]) for s in steps] == [1, 2], proc.stdout[-2000:]
    for _, loss, kl, va in steps:
        assert math.isfinite(float(loss)) and float(kl) > 0
        assert float(va) > 0  # the teacher reads the stripe width: the pixelated view scores it lower
