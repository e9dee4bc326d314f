"""bench/triton_resources.py compiles a real kernel configuration for sm_90a offline (no GPU)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_ampere_only_configs_are_pruned_on_hopper():
    """The statistics kernel's extra sm_80 candidates are autotuned on Ampere only."""
    code = ("import torch\n"
            "from vaopd_kernels.backends.triton import stats as f\n"
            "k = f._stats_kernel\n"
            "for major in (8, 9, 10):\n"
            "    torch.cuda.get_device_capability = lambda *a, m=major: (m, 0)\n"
            "    kept = k.early_config_prune(k.configs, {})\n"
            "    print(major, len(kept), all(c in kept for c in f._AMPERE_CONFIGS), kept[:5] == f._CONFIGS)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:3] == ["8 7 True True", "9 5 False True", "10 5 False True"], proc.stdout
