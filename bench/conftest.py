"""Fixtures for the pytest-benchmark microbenchmarks (``pytest bench/ --benchmark-only``).

Not part of ``pytest tests/`` (pyproject's testpaths is tests/). Runs on CUDA when present,
else on the CPU; backends come from ``vaopd_kernels.available_backends()``.
"""
from __future__ import annotations

import pytest
import torch

from vaopd_kernels.testing import Shape, make_inputs

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Small shapes: the point is per-op, per-backend relative cost, not the headline numbers.
SHAPES = {
    "tiny": Shape(64, 32, 48, 1024, "float32"),
    "small": Shape(256, 128, 256, 8192, "float32" if DEVICE.type == "cpu" else "bfloat16"),
}


def bench_backends():
    """Backends runnable on DEVICE; the GPU kernel backends are not timed under a CPU interpreter."""
    import vaopd_kernels

    names = vaopd_kernels.available_backends()
    if DEVICE.type != "cuda":
        names = [n for n in names if n not in ("triton", "cuda")]
    return names


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(params=list(SHAPES), scope="module")
def inputs(request):
    return request.param, make_inputs(SHAPES[request.param], DEVICE)
