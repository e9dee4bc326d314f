"""Build hook: compiles the optional CUDA extension ``vaopd_kernels._cuda_ext`` from csrc/.

All metadata lives in pyproject.toml. The extension is built only when torch is importable at
build time, is a CUDA build (``torch.version.cuda`` is set) and a CUDA toolkit is found
(``CUDA_HOME``); anywhere else (CPU machines, pip's isolated build env without torch) the
pure-Python package is installed and the cuda backend falls back to a JIT build on first use.

    pip install -e . --no-build-isolation     # on a CUDA machine: builds the extension
    VAOPD_CUDA_ARCH="90a" pip install ...      # target architectures (default: the visible GPU's, else "80;90a")
    VAOPD_NO_CUDA_EXT=1 pip install ...        # never build it
"""
import importlib.util
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _environment():
    """vaopd_kernels/environment.py (standard library only), loaded by path: the package itself
    cannot be imported before it is built."""
    spec = importlib.util.spec_from_file_location("_vaopd_environment",
                                                  os.path.join(HERE, "vaopd_kernels", "environment.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cuda_extension():
    env = _environment()
    if env.no_cuda_extension():
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except Exception:  # no torch in the build environment (e.g. pip's build isolation)
        return {}
    if torch.version.cuda is None or CUDA_HOME is None:
        return {}
    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    ext = CUDAExtension(
        name="vaopd_kernels._cuda_ext",
        sources=["csrc/vaopd_kernels.cu", "csrc/objective.cu", "csrc/bindings.cpp"],
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo",
                                                     *env.gencode_flags(env.cuda_archs(capability))]},
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(**_cuda_extension())
