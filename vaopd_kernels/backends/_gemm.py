"""cuBLAS GEMMs (through torch) with half-precision operands and fp32 results or accumulators.

torch spells "bf16 x bf16 -> fp32 out" differently across versions (``out_dtype`` in 2.6+), so
the first route that runs and matches an fp32 reference on a small probe is used per (op,
dtype, device).
"""
from __future__ import annotations

import functools

import torch


def _gemm_candidates(kind: str):
    f32 = torch.float32
    if kind == "mm":  # out[m, n] = a @ b with half a, b and fp32 out
        return [
            ("mm(out_dtype, out=)", lambda out, a, b: torch.mm(a, b, out_dtype=f32, out=out)),
            ("mm(out_dtype)+copy", lambda out, a, b: out.copy_(torch.mm(a, b, out_dtype=f32))),
            ("upcast fp32 mm", lambda out, a, b: torch.mm(a.float(), b.float(), out=out)),
        ]
    return [  # acc[m, n] += a @ b
        ("addmm(out_dtype, out=acc)", lambda acc, a, b: torch.addmm(acc, a, b, out_dtype=f32, out=acc)),
        ("acc += mm(out_dtype)", lambda acc, a, b: acc.add_(torch.mm(a, b, out_dtype=f32))),
        ("upcast fp32 addmm_", lambda acc, a, b: acc.addmm_(a.float(), b.float())),
    ]


@functools.lru_cache(maxsize=None)
def _pick_gemm(kind: str, dtype: torch.dtype, device: torch.device):
    """First candidate that runs and matches an fp32 reference on a small probe (cached)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(40, 72, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(72, 24, generator=gen).to(device=device, dtype=dtype)
    base = torch.randn(40, 24, generator=gen).to(device)
    expected = a.float() @ b.float() + (base if kind == "addmm" else 0)
    errors = []
    for name, fn in _gemm_candidates(kind):
        out = base.clone() if kind == "addmm" else torch.empty(40, 24, device=device)
        try:
            fn(out, a, b)
            if not torch.allclose(out, expected, rtol=1e-3, atol=1e-3):
                raise RuntimeError("wrong result")
        except Exception as exc:  # unsupported overload on this build/device
            errors.append(f"{name}: {type(exc).__name__}")
            continue
        return fn
    raise RuntimeError(f"no working {kind} route for {dtype} on {device}: {errors}")


def mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out = a @ b, with half-precision a, b and an fp32 out accumulated in fp32."""
    if a.dtype == out.dtype:
        torch.mm(a, b, out=out)
    else:
        _pick_gemm("mm", a.dtype, out.device)(out, a, b)


def addmm_into(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b in place, with half-precision a, b and an fp32 acc."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    else:
        _pick_gemm("addmm", a.dtype, acc.device)(acc, a, b)
