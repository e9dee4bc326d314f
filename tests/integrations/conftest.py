import os
import sys

import pytest

pytest.importorskip("trl", reason="the trl extra: pip install -e \".[trl]\"")

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "trainer"))
from _bootstrap import ensure_importable  # noqa: E402

ensure_importable()  # vaopd_kernels and vaopd_trainer from the checkout (the tiny tokenizer and config)
