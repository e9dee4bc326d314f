"""ctypes access to native/objective_host.cpp: the CUDA objective's algorithm (csrc/objective_core.h)
compiled for the host, so its code is tested on machines without a GPU."""
from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).resolve().parent / "native" / "objective_host.cpp"
HEADER = ROOT / "csrc" / "objective_core.h"
_library = None


def unavailable_reason() -> Optional[str]:
    return None if shutil.which("g++") else "g++ not found (needed to build the host objective)"


def _build() -> ctypes.CDLL:
    global _library
    if _library is None:
        digest = hashlib.sha256(SOURCE.read_bytes() + HEADER.read_bytes()).hexdigest()[:16]
        target = Path(tempfile.gettempdir()) / f"vaopd_objective_host_{digest}.so"
        if not target.exists():
            partial = target.with_suffix(f".{id(target)}.tmp")
            cmd = ["g++", "-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", "-Wall", "-Wextra", "-Werror",
                   f"-I{ROOT / 'csrc'}", str(SOURCE), "-o", str(partial)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"g++ failed ({' '.join(cmd)}):\n{proc.stderr[-6000:]}")
            partial.replace(target)  # atomic: concurrent test processes never load a half-written file
        _library = ctypes.CDLL(str(target))
    return _library


def _ptr(t: torch.Tensor):
    return ctypes.c_void_p(t.data_ptr())


def va_opd_coefficients(visual_advantage, cu_seqlens, prompt_ids, high_fraction, high_weight, va_temperature, eps,
                        num_prompts, team_size=1):
    """Same signature and outputs as torch.ops.vaopd.va_opd_coefficients (plus the team size), on CPU tensors."""
    va = visual_advantage.detach().to("cpu", torch.float64).contiguous()
    cu = cu_seqlens.to("cpu", torch.int64).contiguous()
    pid = prompt_ids.to("cpu", torch.int64).contiguous()
    token_weight = torch.full_like(va, float("nan"))  # poisoned: every entry must be written
    rollout_weight = torch.full((pid.numel(),), float("nan"), dtype=torch.float64)
    high = torch.zeros(va.numel(), dtype=torch.bool)
    mean_va = torch.empty(pid.numel(), dtype=torch.float64)
    d = ctypes.c_double
    _build().vaopd_va_opd_coefficients_host(
        ctypes.c_int64(pid.numel()), _ptr(va), _ptr(cu), _ptr(pid), d(high_fraction), d(high_weight),
        d(va_temperature), d(eps), ctypes.c_int64(num_prompts), _ptr(token_weight), _ptr(rollout_weight), _ptr(high),
        _ptr(mean_va), ctypes.c_int(team_size))
    device = visual_advantage.device
    return token_weight.to(device), rollout_weight.to(device), high.to(device)
