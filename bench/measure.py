"""Time and peak memory of one job (one implementation, one task, one shape).

CPU: wall time (``time.perf_counter``) of each run; peak memory = the process's peak RSS
(VmHWM) during the first run above its RSS just before it (the inputs already allocated). The
peak is reset with ``/proc/self/clear_refs`` where the kernel allows, else the baseline is
the VmHWM reached so far.
GPU: CUDA events around each run; peak memory = ``torch.cuda.max_memory_allocated`` during the
first run above ``torch.cuda.memory_allocated`` with the inputs in place.

The first run gives the memory peak and warms up (allocator, Triton autotuning, torch.compile);
it is kept as a raw "cold" sample but not in the median.
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import torch

from bench.peers import Outputs
from vaopd_kernels.testing import Inputs


def _proc_status_kib() -> Dict[str, int]:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key, value = line.split(":")
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_fallback_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


@dataclass
class Measurement:
    samples_ms: List[float]
    cold_ms: float
    peak_extra_bytes: int
    memory_method: str
    outputs: Outputs = field(repr=False, default=None)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms) if self.samples_ms else self.cold_ms


class _Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time_ms(self, fn: Callable[[], Outputs]):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            return out, start.elapsed_time(end)
        t0 = time.perf_counter()
        out = fn()
        return out, (time.perf_counter() - t0) * 1e3


def measure(fn: Callable[[Inputs], Outputs], inputs: Inputs, reps: int, warmup: int = 1) -> Measurement:
    """Run ``fn(inputs)`` 1 + (warmup - 1) + reps times; see the module docstring."""
    device = inputs.student_hidden.device
    clock = _Clock(device)
    inputs.zero_grad()
    gc.collect()
    clock.sync()

    # run 1: memory peak (and cold time)
    if clock.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        method = "torch.cuda.max_memory_allocated - memory_allocated(inputs)"
    elif _reset_peak_rss():
        base = _proc_status_kib().get("VmRSS", 0) * 1024
        method = "VmHWM - VmRSS(inputs), peak reset via /proc/self/clear_refs"
    else:
        base = _proc_status_kib().get("VmHWM", 0) * 1024 or _peak_rss_fallback_bytes()
        method = "VmHWM - VmHWM(before), getrusage fallback"
    out, cold_ms = clock.time_ms(lambda: fn(inputs))
    if clock.cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = (_proc_status_kib().get("VmHWM", 0) * 1024 or _peak_rss_fallback_bytes()) - base

    for _ in range(max(0, warmup - 1)):
        del out
        inputs.zero_grad()
        out = fn(inputs)
    samples = []
    for _ in range(reps):
        del out
        inputs.zero_grad()
        out, ms = clock.time_ms(lambda: fn(inputs))
        samples.append(ms)
    return Measurement(samples, cold_ms, int(peak), method, out)
