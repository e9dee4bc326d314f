"""One divergence code: csrc's header enum and the Triton kernels' constexprs hold the values of
``vaopd_kernels.backends.base.Divergence``."""
import re
from pathlib import Path

import pytest

from vaopd_kernels.backends.base import Divergence

HEADER = Path(__file__).resolve().parents[2] / "csrc" / "vaopd_kernels.cuh"


def test_csrc_enum_holds_the_python_values():
    body = re.search(r"enum class Divergence\s*:\s*int\s*\{([^}]*)\}", HEADER.read_text()).group(1)
    codes = {name.upper(): int(value) for name, value in re.findall(r"k(\w+)\s*=\s*(\d+)", body)}
    assert codes == {d.name: d.value for d in Divergence}


def test_triton_codes_are_the_enum_values():
    codes = pytest.importorskip("vaopd_kernels.backends.triton._codes")
    assert {d.name: getattr(codes, f"DIV_{d.name}").value for d in Divergence} == {d.name: d.value for d in Divergence}
    assert codes.DIV_NONE.value not in {d.value for d in Divergence}
    assert [codes.code(d) for d in (None, *Divergence)] == [codes.DIV_NONE.value, *(d.value for d in Divergence)]
