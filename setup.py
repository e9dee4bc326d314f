"""Build hook: compiles the optional CUDA extension ``vaopd_kernels._cuda_ext`` from csrc/.

All metadata lives in pyproject.toml. The extension is built only when torch is importable at
build time, is a CUDA build (``torch.version.cuda`` is set) and a CUDA toolkit is found
(``CUDA_HOME``); anywhere else (CPU machines, pip's isolated build env without torch) the
pure-Python package is installed and the cuda backend falls back to a JIT build on first use.

    pip install -e . --no-build-isolation     # on a CUDA machine: builds the extension
    VAOPD_CUDA_ARCH="90a" pip install ...      # target architectures (default "80;90a")
    VAOPD_NO_CUDA_EXT=1 pip install ...        # never build it
"""
import os

from setuptools import setup


def _arch_flags():
    spec = os.environ.get("VAOPD_CUDA_ARCH", "80;90a")
    archs = [a.strip().replace(".", "") for a in spec.replace(",", ";").split(";") if a.strip()]
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


def _cuda_extension():
    if os.environ.get("VAOPD_NO_CUDA_EXT", "") not in ("", "0"):
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except Exception:  # no torch in the build environment (e.g. pip's build isolation)
        return {}
    if torch.version.cuda is None or CUDA_HOME is None:
        return {}
    here = os.path.dirname(os.path.abspath(__file__))
    ext = CUDAExtension(
        name="vaopd_kernels._cuda_ext",
        sources=["csrc/vaopd_kernels.cu", "csrc/objective.cu", "csrc/bindings.cpp"],
        include_dirs=[os.path.join(here, "csrc")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo", *_arch_flags()]},
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(**_cuda_extension())
