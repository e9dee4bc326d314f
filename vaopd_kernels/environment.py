"""Every environment variable vaopd_kernels reads, read here only (docs/backends.md, "Settings").

Standard library only: setup.py loads this file by path, before the package can be imported.
Numerical behaviour is never set here: that is ``KernelOptions``.
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

# sm_80 (A100) and sm_90a (H100/H200): built when VAOPD_CUDA_ARCH is unset and no GPU is visible
DEFAULT_CUDA_ARCHS = "80;90a"


def _flag(name: str) -> bool:
    """Set to anything but empty or "0"."""
    return os.environ.get(name, "") not in ("", "0")


def triton_interpret() -> bool:
    """TRITON_INTERPRET=1: Triton's CPU interpreter (read by Triton when a kernel is defined)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_poison() -> bool:
    """VAOPD_TRITON_POISON=1: fill kernel outputs with NaN before launch (tests)."""
    return os.environ.get("VAOPD_TRITON_POISON", "0") == "1"


def triton_autotune() -> bool:
    """VAOPD_TRITON_AUTOTUNE=0 keeps each kernel's first configuration (quick GPU checks)."""
    return os.environ.get("VAOPD_TRITON_AUTOTUNE", "1") != "0"


def cuda_archs(device_capability: Optional[Tuple[int, int]] = None) -> List[str]:
    """The architectures the CUDA extension is built for: VAOPD_CUDA_ARCH ("80;90a", "8.0,9.0a"),
    else the visible GPU's (``device_capability``; sm_90 and sm_100 as 90a / 100a, whose
    arch-specific instructions the kernels may use), else DEFAULT_CUDA_ARCHS."""
    spec = os.environ.get("VAOPD_CUDA_ARCH", "").strip()
    if not spec and device_capability is not None:
        major, minor = device_capability
        return [f"{major}{minor}" + ("a" if (major, minor) in ((9, 0), (10, 0)) else "")]
    spec = spec or DEFAULT_CUDA_ARCHS
    return [a.strip().replace(".", "") for a in spec.replace(",", ";").split(";") if a.strip()]


def gencode_flags(archs: List[str]) -> List[str]:
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


def cuda_build_dir() -> Optional[str]:
    """VAOPD_CUDA_BUILD_DIR: where the JIT build goes (None: the default cache folder)."""
    return os.environ.get("VAOPD_CUDA_BUILD_DIR") or None


def cuda_verbose() -> bool:
    """VAOPD_CUDA_VERBOSE: show the JIT build's compiler output."""
    return _flag("VAOPD_CUDA_VERBOSE")


def no_cuda_extension() -> bool:
    """VAOPD_NO_CUDA_EXT: setup.py never builds the extension."""
    return _flag("VAOPD_NO_CUDA_EXT")
