import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "trainer"))
from _bootstrap import REPO, ensure_importable  # noqa: E402

ensure_importable()  # vaopd_trainer from the checkout; REPO on sys.path makes `experiments` importable
