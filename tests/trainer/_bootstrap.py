"""Make ``vaopd_trainer`` importable from a source checkout that has not been pip-installed.

The package lives in the ``trainer/`` folder (pyproject maps it); without an install, register
that folder under the package name. Used by conftest.py and by the DDP worker subprocess.
"""
import importlib.util
import os
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def ensure_importable() -> None:
    if REPO not in sys.path:
        sys.path.insert(0, REPO)  # vaopd_kernels from the checkout
    try:
        import vaopd_trainer  # noqa: F401  (installed: nothing to do)
        return
    except ImportError:
        pass
    folder = os.path.join(REPO, "trainer")
    spec = importlib.util.spec_from_file_location("vaopd_trainer", os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules["vaopd_trainer"] = module
    spec.loader.exec_module(module)
