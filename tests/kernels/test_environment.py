"""The environment is read in one kernel module, vaopd_kernels/environment.py, with one parser and
one default for the CUDA architectures (shared with setup.py)."""
import re
from pathlib import Path

from vaopd_kernels import environment

PACKAGE = Path(environment.__file__).parent


def test_only_environment_py_reads_the_environment():
    readers = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
               if re.search(r"os\.environ|os\.getenv|getenv\(", p.read_text())]
    assert readers == ["environment.py"]


def test_cuda_archs_one_parser_one_default(monkeypatch):
    monkeypatch.delenv("VAOPD_CUDA_ARCH", raising=False)
    assert environment.cuda_archs() == ["80", "90a"]  # no GPU visible: DEFAULT_CUDA_ARCHS
    assert environment.cuda_archs((9, 0)) == ["90a"] and environment.cuda_archs((8, 9)) == ["89"]
    monkeypatch.setenv("VAOPD_CUDA_ARCH", " 8.0, 9.0a ;")
    assert environment.cuda_archs((8, 9)) == ["80", "90a"]  # the variable wins over the visible GPU
    assert environment.gencode_flags(["90a"]) == ["-gencode=arch=compute_90a,code=sm_90a"]


def test_setup_py_uses_the_same_module():
    setup = (PACKAGE.parent / "setup.py").read_text()
    assert "vaopd_kernels\", \"environment.py\"" in setup and "os.environ" not in setup
