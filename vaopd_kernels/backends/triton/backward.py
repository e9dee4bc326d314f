"""Backward: d(student hidden) and d(student head) from saved O(N) row statistics.

The vocabulary is walked in chunks of ``Vc`` columns (``Vc`` from a fixed workspace budget,
``KernelOptions.triton_workspace_bytes``, 32 MiB by default). Per chunk:

1. ``dlogits.py`` recomputes the logit tiles and writes d loss / d z_s for all N rows x Vc columns
   into the workspace (the only [rows, cols] buffer; it never grows with V);
2. ``matmul.py`` writes d W_s[chunk] = dz^T @ h (K = N: each gradient row written once, no fp32
   copy of the head's gradient);
3. ``matmul.py`` accumulates d h += dz @ W_s[chunk] into one fp32 [N, Ds] buffer.
``backward_gemm="cublas"`` (experimental) runs steps 2 and 3 through cuBLAS instead; the gradient
filter (experimental, ``experimental_filter.py``) makes both matmuls skip negligible blocks.

Every output element has exactly one writer: no atomics, deterministic.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton

from vaopd_kernels.backends._gemm import addmm_into, mm_into
from vaopd_kernels.backends.base import Divergence
from vaopd_kernels.backends.triton import _config as C
from vaopd_kernels.backends.triton import experimental_filter
from vaopd_kernels.backends.triton.dlogits import MODE_LOGPROB, dlogits_kernel
from vaopd_kernels.backends.triton.matmul import matmul

_CHUNK_ALIGN = 256  # vocabulary chunks are whole multiples of every tile width


def _chunk_columns(num_rows: int, vocab_size: int, itemsize: int, workspace_bytes: int) -> int:
    cols = workspace_bytes // max(1, num_rows * itemsize)
    cols = max(_CHUNK_ALIGN, cols // _CHUNK_ALIGN * _CHUNK_ALIGN)
    return min(cols, vocab_size)


def student_grads(*, mode: Optional[Divergence], sh, sw, rows: torch.Tensor, row_grad: torch.Tensor, vocab_size: int,
                  options, temperature: float = 1.0, th=None, tw=None, targets=None, beta: float = 0.5,
                  precision: str = "ieee"):
    """(d hidden [N, Ds] fp32, d weight [Vs, Ds] in sw's dtype, zero rows >= V).

    ``sh``/``sw``/``th``/``tw`` are kernel operands (see stats.operands); ``rows`` comes from
    :func:`stats.saved_rows`; ``mode``: the divergence, or None for the target log-prob; ``options``
    (KernelOptions) sets the workspace, the matmuls and the filter.
    """
    n, ds = sh.shape
    device = sh.device
    ws_dtype = sw.dtype if sw.dtype in (torch.bfloat16, torch.float16) else torch.float32
    g = (row_grad.detach().to(device=device, dtype=torch.float32) / temperature).contiguous()
    rows = rows.contiguous()
    grad_w = torch.empty(sw.shape, dtype=sw.dtype, device=device)
    if C.POISON:
        grad_w.fill_(float("nan"))
    grad_w[vocab_size:].zero_()
    grad_h = torch.empty(n, ds, dtype=torch.float32, device=device)
    if C.POISON:
        grad_h.fill_(float("nan"))
    cols = _chunk_columns(n, vocab_size, torch.finfo(ws_dtype).bits // 8, options.triton_workspace_bytes)
    workspace = torch.empty(n, cols, dtype=ws_dtype, device=device)
    eps = options.gradient_filter_eps
    filtering = eps is not None
    cublas = options.backward_gemm == "cublas"  # KernelOptions rejects it together with the filter
    flag_cols = triton.cdiv(cols, C.FLAG_BLOCK)
    flag_map = torch.empty(triton.cdiv(n, C.FLAG_BLOCK), flag_cols if filtering else 0, dtype=torch.int8,
                           device=device)
    reverse_filter = filtering and mode == Divergence.REVERSE
    log_tau = experimental_filter.teacher_skip_threshold(rows, eps).log() if reverse_filter else g
    order = experimental_filter.confidence_order(rows) if filtering else None
    th = th if th is not None else sh
    tw = tw if tw is not None else sw
    y = targets if targets is not None else g
    beta = min(max(beta, 1e-12), 1.0 - 1e-12)
    for v_begin in range(0, vocab_size, cols):
        v_end = min(v_begin + cols, vocab_size)
        width = v_end - v_begin
        dz = workspace[:, :width]
        if C.POISON:
            dz.fill_(float("nan"))
        flags = flag_map[:, :triton.cdiv(width, C.FLAG_BLOCK)] if filtering else None
        if flags is not None and C.POISON:
            flags.zero_()  # an unwritten flag would drop a live block: the tests would see it
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(width, meta["BLOCK_V"]))  # noqa: E731
        dlogits_kernel[grid](sh, sw, th, tw, y, rows, log_tau, g, dz, flag_map if filtering else dz,
                             order if filtering else g, n, v_begin, v_end, cols, ds, th.shape[1], sh.stride(0),
                             sw.stride(0), th.stride(0), tw.stride(0), dz.stride(0), flag_cols, 1.0 / temperature,
                             1.0 - beta, math.log(beta), math.log1p(-beta), eps or 0.0,
                             MODE=MODE_LOGPROB.value if mode is None else int(mode), CAST_F32=C.INTERPRET,
                             PRECISION=precision, FILTER=filtering, FLAG_BLOCK=C.FLAG_BLOCK)
        if cublas:
            mm_into(grad_w[v_begin:v_end], dz.t(), sh)  # same dtype in and out: torch.mm, fp32 inside
            (addmm_into if v_begin > 0 else mm_into)(grad_h, dz, sw[v_begin:v_end])
        else:
            matmul(dz.t(), sh, grad_w[v_begin:v_end], accumulate=False, precision=precision,
                   flags=flags.t() if filtering else None, order=order, ordered="b" if filtering else "")
            matmul(dz, sw[v_begin:v_end], grad_h, accumulate=v_begin > 0, precision=precision, flags=flags,
                   order=order, ordered="c" if filtering else "")
    return grad_h, grad_w

