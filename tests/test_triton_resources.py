"""bench/triton_resources.py compiles a real kernel configuration for sm_90a offline (no GPU)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _nvidia_backend() -> bool:
    try:
        from triton.backends import backends
    except Exception:
        return False
    return "nvidia" in backends


@pytest.mark.skipif(importlib.util.find_spec("triton") is None or not _nvidia_backend(),
                    reason="needs triton with its NVIDIA backend (ptxas)")
def test_offline_register_report(tmp_path):
    # The test session runs the interpreter; the report needs the compiled kernels.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    cmd = [sys.executable, "-m", "bench.triton_resources", "--arch", "90a", "--launch", "dlogits: reverse KL, filtered",
           "--max-configs", "1", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| dlogits")]
    assert len(rows) == 1, proc.stdout
    registers, stack = (int(cell) for cell in rows[0].split("|")[4:6])
    assert 24 <= registers <= 255 and stack >= 0
    assert (tmp_path / "resources.json").is_file() and (tmp_path / "resources.md").is_file()
