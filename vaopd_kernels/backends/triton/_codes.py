"""The divergence codes the Triton kernels take: ``base.Divergence``'s values as constexprs, plus
one code for "no divergence". csrc/vaopd_kernels.cuh's ``enum class Divergence`` holds the same
values (tests/kernels/test_divergence_codes.py reads the header and checks them)."""
from __future__ import annotations

from typing import Optional

import triton.language as tl

from vaopd_kernels.backends.base import Divergence

DIV_REVERSE: tl.constexpr = tl.constexpr(int(Divergence.REVERSE))
DIV_FORWARD: tl.constexpr = tl.constexpr(int(Divergence.FORWARD))
DIV_JSD: tl.constexpr = tl.constexpr(int(Divergence.JSD))
# No divergence: the statistics kernel sums no cross term, the backward differentiates the target log-prob.
DIV_NONE: tl.constexpr = tl.constexpr(max(Divergence) + 1)


def code(divergence: Optional[Divergence]) -> int:
    """The kernels' code for ``divergence`` (None: DIV_NONE)."""
    return DIV_NONE.value if divergence is None else int(divergence)
