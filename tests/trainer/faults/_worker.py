"""A real CLI run with one fault injected in-process, for the tests that signal or kill a process.

Usage: _worker.py MODE MARKER.STEP CLI_ARGS...   (exits with the CLI's exit code)
  hold-save : the first torch.save into checkpoint-STEP.tmp writes a partial file, creates MARKER.STEP
              and sleeps, so that a SIGKILL lands in the middle of that save.
  slow-step : step STEP (1-based) creates MARKER.STEP and sleeps 3 s before it runs, so that a
              SIGTERM / SIGINT arrives while that step is in flight.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/trainer: _bootstrap
from _bootstrap import ensure_importable  # noqa: E402

ensure_importable()

import torch  # noqa: E402

from vaopd_trainer import cli  # noqa: E402
from vaopd_trainer.train import Trainer  # noqa: E402


def hold_save(marker, step):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if f"checkpoint-{step}.tmp" in str(f):
            with open(f, "wb") as out:
                out.write(b"partial")
                out.flush()
            open(marker, "w").close()
            time.sleep(120)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save


def slow_step(marker, step):
    real_step = Trainer.step

    def run(self, index):
        if index + 1 == step:
            open(marker, "w").close()
            time.sleep(3)
        return real_step(self, index)

    Trainer.step = run


if __name__ == "__main__":
    mode, marker, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    {"hold-save": hold_save, "slow-step": slow_step}[mode](marker, int(marker.rsplit(".", 1)[1]))
    sys.exit(cli.main(args))
