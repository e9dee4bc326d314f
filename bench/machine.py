"""What machine is this: description, package versions, result-folder tag, matmul rate."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Dict, Optional

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)|processor|cpu @.*|corporation", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:40]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_tag(device: torch.device) -> str:
    if device.type == "cuda":
        return "gpu-" + _slug(torch.cuda.get_device_name(device))
    return f"cpu-{_slug(cpu_model())}-{usable_cores()}c"


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> Dict[str, Optional[str]]:
    import vaopd_kernels

    out = {"python": platform.python_version(), "torch": torch.__version__, "vaopd_kernels": vaopd_kernels.__version__,
           "triton": _version("triton"), "liger-kernel": _version("liger-kernel") or _version("liger_kernel"),
           "cut-cross-entropy": _version("cut-cross-entropy"), "numpy": _version("numpy")}
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            out["git"] = head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def describe(device: torch.device) -> Dict:
    info = {"tag": machine_tag(device), "device": str(device), "platform": platform.platform(),
            "cpu": cpu_model(), "cores": usable_cores(), "torch_threads": torch.get_num_threads()}
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}")
    return info


def matmul_rate(device: torch.device, dtype: torch.dtype, size: Optional[int] = None, reps: int = 10) -> Dict:
    """Best measured FLOP/s of a square matmul in ``dtype`` (the floor's denominator)."""
    if size is None:
        size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    flops = 2.0 * size ** 3
    best = float("inf")
    if device.type == "cuda":
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            torch.cuda.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
    else:
        a @ b
        for _ in range(max(3, reps // 2)):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return {"flops_per_s": flops / best, "size": size, "dtype": str(dtype).replace("torch.", ""),
            "best_s": best}
