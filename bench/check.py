"""Is a fast answer also right? Check an implementation's full-size outputs on a row slice.

Row-local outputs (per-token KL, VA, the student hidden-state gradient) of the timed run are
compared with the reference backend recomputed (fp32 math on the exact input values) on a
slice of rows:

- va_opd: the rows of the last prompt's rollouts. VA-OPD coefficients depend only on a prompt's
  own rollouts, so the slice (with the global prompt count) reproduces those rows' gradients.
- kl / jsd / va: the last ``SLICE_ROWS`` rows (the end of the batch catches indexing overflows).

Global values (the loss, the weight gradient) are summarised here as a fingerprint and
cross-checked between implementations by ``compare`` (report.cross_check).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

import vaopd_kernels
from bench.peers import Outputs
from bench.problem import JSD_BETA
from vaopd_kernels.testing import Inputs, rel_err

SLICE_ROWS = 128
TOLERANCE = {"float32": 1e-3, "float64": 1e-6, "bfloat16": 5e-2, "float16": 2e-2}


def _slice_rows(inputs: Inputs, task: str):
    n = inputs.student_hidden.shape[0]
    if task == "va_opd":
        last_prompt = inputs.prompt_ids[-1]
        first_rollout = int(torch.nonzero(inputs.prompt_ids == last_prompt)[0])
        start = int(inputs.cu_seqlens[first_rollout])
        return start, n, first_rollout
    return max(0, n - SLICE_ROWS), n, None


def _oracle_dtype(inputs: Inputs) -> torch.dtype:
    # float32 math on the exact input values is ~1e-6 accurate, far inside every tolerance, and
    # keeps the check cheap on a 2-core CPU; float64 inputs get a float64 oracle.
    return torch.float64 if inputs.student_hidden.dtype == torch.float64 else torch.float32


def _leaf(t: torch.Tensor, rows: slice, grad: bool, dtype: torch.dtype) -> torch.Tensor:
    return t.detach()[rows].to(dtype).requires_grad_(grad)


def reference_slice(inputs: Inputs, task: str) -> Dict:
    """Reference-backend outputs on the task's row slice (float32 math, float64 for float64 inputs)."""
    start, end, first_rollout = _slice_rows(inputs, task)
    rows = slice(start, end)
    dtype = _oracle_dtype(inputs)
    sh = _leaf(inputs.student_hidden, rows, True, dtype)
    sw = inputs.student_weight.detach().to(dtype).requires_grad_(True)
    th = _leaf(inputs.teacher_hidden, rows, False, dtype)
    thd = _leaf(inputs.teacher_hidden_degraded, rows, False, dtype)
    tw = inputs.teacher_weight.detach().to(dtype)
    y = inputs.targets[rows]
    ref: Dict = {"rows": [start, end]}
    if task == "va_opd":
        cu = inputs.cu_seqlens[first_rollout:] - inputs.cu_seqlens[first_rollout]
        pid = inputs.prompt_ids[first_rollout:]
        res = vaopd_kernels.va_opd_loss(sh, sw, th, tw, y, cu, pid, teacher_hidden_degraded=thd,
                                        num_prompts=inputs.num_prompts, backend="reference")
        res.loss.backward()
        ref.update(kl=res.kl.detach(), va=res.visual_advantage, grad_hidden=sh.grad)
    elif task in ("kl", "jsd"):
        divergence = dict(divergence="jsd", beta=JSD_BETA) if task == "jsd" else {}
        kl = vaopd_kernels.linear_kl(sh, sw, th, tw, backend="reference", **divergence)
        (kl.sum() / inputs.student_hidden.shape[0]).backward()
        ref.update(kl=kl.detach(), grad_hidden=sh.grad)
    else:
        with torch.no_grad():
            ref.update(va=vaopd_kernels.visual_advantage(th, thd, tw, y, backend="reference"))
    return ref


def fingerprint(outputs: Outputs, inputs: Inputs, seed: int = 1234) -> Dict:
    """Small global summaries for cross-implementation checks: the loss, the weight gradient's
    norm and a random bilinear projection u^T dW v (whose typical size is ||dW||)."""
    fp: Dict = {}
    if outputs.loss is not None:
        fp["loss"] = float(outputs.loss.double())
    gw = inputs.student_weight.grad
    if gw is not None:
        gen = torch.Generator(device=gw.device).manual_seed(seed)
        u = torch.randn(gw.shape[0], generator=gen, device=gw.device, dtype=torch.float64)
        v = torch.randn(gw.shape[1], generator=gen, device=gw.device, dtype=torch.float64)
        gwd = gw.double()
        fp["grad_weight_norm"] = float(gwd.norm())
        fp["grad_weight_proj"] = float(u @ (gwd @ v))
    return fp


def check(outputs: Outputs, inputs: Inputs, task: str, dtype: str) -> Dict:
    """Errors of the row-local outputs against the float64 reference slice."""
    ref = reference_slice(inputs, task)
    start, end = ref["rows"]
    rows = slice(start, end)
    errors: Dict[str, Optional[float]] = {}
    if "kl" in ref and outputs.kl is not None:
        errors["kl"] = rel_err(outputs.kl[rows], ref["kl"])
    if "va" in ref and ref["va"] is not None:
        errors["va"] = rel_err(outputs.va[rows] if outputs.va is not None else None, ref["va"])
    if "grad_hidden" in ref:
        g = inputs.student_hidden.grad
        errors["grad_hidden"] = rel_err(g[rows] if g is not None else None, ref["grad_hidden"])
    errors = {k: v for k, v in errors.items() if v is not None}
    tol = TOLERANCE.get(dtype, 1e-3)
    bad = {k: v for k, v in errors.items() if not v <= tol}
    return {"rows": [start, end], "tolerance": tol, "errors": errors, "ok": not bad and bool(errors),
            "failed": sorted(bad)}
