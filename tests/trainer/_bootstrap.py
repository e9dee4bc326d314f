"""Make ``vaopd_kernels`` and ``vaopd_trainer`` importable from this checkout (no install needed,
and an install elsewhere never shadows the code under test). Used by the conftests and by the
worker subprocesses the multi-process tests start."""
import os
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def ensure_importable() -> None:
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
