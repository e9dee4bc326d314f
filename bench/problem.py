"""Benchmark tasks and the GEMM floor of each (shapes and inputs: ``vaopd_kernels.testing``)."""
from __future__ import annotations

from vaopd_kernels.testing import Shape

# The tasks every implementation may offer (see peers.py):
#   va_opd  forward + backward of the VA-OPD loss, with the pixelated teacher pass
#   kl      forward + backward of the mean per-token reverse KL (no VA)
#   va      visual advantage only: target log-probs of both teacher views, no grad
#   jsd     forward + backward of the mean per-token generalized JSD, beta = JSD_BETA (TRL's convention)
TASKS = ("va_opd", "kl", "va", "jsd")
JSD_BETA = 0.5


def floor_flops(shape: Shape, task: str) -> float:
    """GEMM FLOPs that even a full-logit implementation cannot avoid (docs/benchmarks.md).

    va_opd: student logits, d hidden, d weight (3 Ds) + teacher logits of both views (2 Dt).
    kl, jsd: 3 Ds + one teacher view (Dt).   va: two teacher views (2 Dt), no backward.
    """
    n, v, ds, dt = shape.num_rows, shape.vocab, shape.student_dim, shape.teacher_dim
    per_dim = {"va_opd": 3 * ds + 2 * dt, "kl": 3 * ds + dt, "jsd": 3 * ds + dt, "va": 2 * dt}[task]
    return 2.0 * n * v * per_dim
