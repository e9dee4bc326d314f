"""Preemption: SIGTERM / SIGINT finish the step in flight, write a checkpoint, and stop the run.

The handler only sets a flag; the loop asks ``requested`` after every step, which sums the flag
over ranks so every rank stops after the same step. The run then raises ``Preempted``; the CLI
exits with 128 + the signal number (143 for SIGTERM, 130 for SIGINT), the code a shell, torchrun or
a scheduler reads as "killed by that signal": the job is not reported as finished and a requeue
resumes it with ``resume: latest``. A second signal while the first is pending stops at once
(KeyboardInterrupt), as a second Ctrl-C does elsewhere.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Optional

import torch

from .errors import TrainerError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(TrainerError):
    def __init__(self, signum: int, step: int, checkpoint: str):
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after step {step}; checkpoint saved to {checkpoint}; "
                         f"continue with resume: latest")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum


class PreemptionHandler:
    """Context manager installing the handlers (main thread only; elsewhere it does nothing)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self) -> "PreemptionHandler":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.signum = signum
        # os.write, not print: a handler that prints while the loop prints raises "reentrant call"
        os.write(2, f"received {signal.Signals(signum).name}: finishing the current step, then saving a "
                    f"checkpoint\n".encode())

    def requested(self, accelerator) -> Optional[int]:
        """The signal to stop for when any rank received one, else None (same answer on every rank)."""
        flag = torch.tensor(0.0 if self.signum is None else 1.0, device=accelerator.device)
        if float(accelerator.reduce(flag, "sum")) == 0:
            return None
        return self.signum or signal.SIGTERM
