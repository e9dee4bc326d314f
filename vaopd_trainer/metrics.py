"""Metrics to stdout, metrics.jsonl and TensorBoard; peak memory per training phase."""
from __future__ import annotations

import json
import os
import resource
import threading
from contextlib import contextmanager
from typing import Dict

import torch


class MetricsLogger:
    def __init__(self, output_dir: str, report_to: str, enabled: bool, fresh: bool):
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        if enabled and fresh and os.path.exists(self.path):
            os.remove(self.path)  # a new run starts a new file; a resumed one appends
        self.writer = None
        if enabled and report_to != "none":
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))
            except ImportError:
                if report_to == "tensorboard":
                    raise ImportError("report_to: tensorboard is not installed (pip install tensorboard)") from None

    def restart_at(self, step: int) -> None:
        """Keep only the lines of steps <= ``step`` (the checkpoint a run resumes from): steps done after it
        before a crash are done again, and each step must appear once. Step 0 starts a new file."""
        if not self.enabled or not os.path.exists(self.path):
            return
        if step == 0:
            os.remove(self.path)
            return
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    if json.loads(line)["step"] <= step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    pass  # a line torn by the crash
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: Dict[str, float], echo=None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)
        if echo is not None:
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k in echo)
            print(f"step {step}: {shown}", flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PhaseMemory:
    """Peak memory of each phase in MiB.

    CUDA: peak allocated bytes during the phase (reset at its start). CPU: peak resident set size
    sampled every 5 ms during the phase (Linux /proc), else the process-lifetime peak RSS.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.peaks: Dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            yield
            self.peaks[name] = torch.cuda.max_memory_allocated() / 2**20
            return
        if not os.path.exists("/proc/self/statm"):
            yield
            self.peaks[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return
        peak, stop = [_rss_bytes()], threading.Event()

        def sample():
            while not stop.wait(0.005):
                peak[0] = max(peak[0], _rss_bytes())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.peaks[name] = max(peak[0], _rss_bytes()) / 2**20

