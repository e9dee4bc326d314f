"""Backend registry: name -> module implementing the two primitives of ``backends/base.py``.

``ops.py`` is the only caller; backends never validate user input again and never import each
other.
"""
from __future__ import annotations

import importlib
from typing import Dict, List

import torch

from vaopd_kernels.backends.base import Backend

# name -> module path
_BACKEND_MODULES: Dict[str, str] = {
    "reference": "vaopd_kernels.backends.reference",
    "torch": "vaopd_kernels.backends.torch_chunked",
    "triton": "vaopd_kernels.backends.triton",
    "cuda": "vaopd_kernels.backends.cuda",
}


def _load(name: str) -> Backend:
    return importlib.import_module(_BACKEND_MODULES[name])


def backend_unavailable_reason(name: str) -> str | None:
    """None when backend ``name`` can run here, else a human-readable reason."""
    try:
        module = _load(name)
    except ImportError as exc:  # optional dependency missing (triton, compiled extension)
        return f"import failed: {exc}"
    return module.unavailable_reason() if hasattr(module, "unavailable_reason") else None


def available_backends() -> List[str]:
    """Names of the backends that can run on this machine."""
    return [name for name in _BACKEND_MODULES if backend_unavailable_reason(name) is None]


def check_backend_name(name) -> None:
    if not isinstance(name, str) or (name != "auto" and name not in _BACKEND_MODULES):
        raise ValueError(f"backend: expected one of {['auto', *_BACKEND_MODULES]}, got {name!r}")


def resolve_backend(name: str, device: torch.device) -> Backend:
    """The backend module for ``name`` ("auto" picks the fastest that runs on ``device``)."""
    if name == "auto":
        name = "triton" if device.type == "cuda" and backend_unavailable_reason("triton") is None else "torch"
    check_backend_name(name)
    reason = backend_unavailable_reason(name)
    if reason is not None:
        raise RuntimeError(f"backend={name!r} is not available on this machine: {reason}")
    module = _load(name)
    if hasattr(module, "supports_device") and not module.supports_device(device):
        raise RuntimeError(f"backend={name!r} cannot run on device {device}")
    return module
