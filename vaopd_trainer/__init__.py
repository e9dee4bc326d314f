"""Thin VA-OPD / OPD trainer for Qwen3-VL students and teachers (transformers + accelerate).

Entry points: ``vaopd-train`` / ``python -m vaopd_trainer`` (see ``cli.py``); the loop is in
``train.py``. Importing the package is cheap: heavy modules load on first use.
"""
__version__ = "0.1.0"
