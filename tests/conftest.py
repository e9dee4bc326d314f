"""Minimal shared setup: without a GPU, Triton kernels run under the CPU interpreter.

TRITON_INTERPRET is read when a kernel is defined, so it must be set before any test module
imports a Triton backend.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
