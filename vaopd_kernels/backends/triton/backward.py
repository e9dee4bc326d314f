"""The Triton backward: d(student hidden) and d(student head) from the saved O(N) row statistics.

The vocabulary is walked in chunks of ``Vc`` columns (``Vc`` from a fixed workspace budget,
``KernelOptions.triton_workspace_bytes``, 32 MiB by default). Per chunk:

1. ``dlogits_kernel`` recomputes the student (and teacher) logit tiles with ``_tiles.dot`` and
   writes d loss / d z_s for all N rows x Vc columns into the workspace (the only [rows, cols]
   buffer; it never grows with V): from the saved row statistics (``stats.SavedRow``), the
   gradient of the row quantity q_n times the row weight g_n (already divided by T),
   - reverse KL: g p_s (log p_s - log p_t - KL) = g p_s (z_s - z_t + gap - KL)
   - forward KL: g (p_s - p_t)
   - JSD:        g (1 - beta) p_s (log p_s - log m - KL(p_s || m))
   - log-prob:   g (onehot(y) - p_s);
   times, for a transformed head (``_tiles.head_logits``), dz/dr = s (1 - (z / c)^2) (s in g), so
   that it is d loss / d r for the raw logits r = W h; the bias's gradient is its column sums;
2. ``matmul.py`` writes d W_s[chunk] = dz^T @ h (K = N: each gradient row written once, no fp32
   copy of the head's gradient);
3. ``matmul.py`` accumulates d h += dz @ W_s[chunk] into one fp32 [N, Ds] buffer.
``backward_gemm="cublas"`` (experimental) runs steps 2 and 3 through cuBLAS instead; the gradient
filter (experimental, ``experimental_filter.py``) has step 1 flag the blocks worth keeping and
both matmuls skip the rest.

Every output element has exactly one writer: no atomics, deterministic.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from vaopd_kernels.backends._gemm import addmm_into, mm_into
from vaopd_kernels.backends.base import IDENTITY, Divergence, LogitTransform
from vaopd_kernels.backends.triton import _config as C
from vaopd_kernels.backends.triton import _codes, experimental_filter
from vaopd_kernels.backends.triton._codes import DIV_FORWARD, DIV_NONE, DIV_REVERSE
from vaopd_kernels.backends.triton._tiles import head_logits, logaddexp, logits_tile
from vaopd_kernels.backends.triton.matmul import matmul
from vaopd_kernels.backends.triton.stats import SavedRow, head_args

# rows of the saved statistics (stats.SavedRow)
LSE_S: tl.constexpr = tl.constexpr(int(SavedRow.LSE_S))
LSE_T: tl.constexpr = tl.constexpr(int(SavedRow.LSE_T))
GAP: tl.constexpr = tl.constexpr(int(SavedRow.GAP))
AUX: tl.constexpr = tl.constexpr(int(SavedRow.AUX))

# Only configurations that win some key on an H200 (autotuning compiles every candidate per key) and
# do not spill on sm_90a, as 4 warps or 128 x 256 tiles do.
_DZ_CONFIGS = [
    C.cfg(8, 4, BLOCK_N=128, BLOCK_V=128, BLOCK_D=64),
    C.cfg(8, 3, BLOCK_N=128, BLOCK_V=128, BLOCK_D=64),
    # ~110 registers on sm_90a (two CTAs per SM) against ~175 for the 128 x 128 tiles
    C.cfg(8, 3, BLOCK_N=64, BLOCK_V=128, BLOCK_D=64),
    C.cfg(8, 4, BLOCK_N=64, BLOCK_V=128, BLOCK_D=64),
]


@C.autotune(_DZ_CONFIGS, C.cfg(1, 1, BLOCK_N=16, BLOCK_V=32, BLOCK_D=32),
            key=["Ds", "Dt", "MODE", "PRECISION", "FILTER", "S_BIAS", "S_CAP", "T_BIAS", "T_CAP"])  # not N
@triton.jit
def dlogits_kernel(sh_ptr, sw_ptr, sb_ptr, th_ptr, tw_ptr, tb_ptr, y_ptr, rows_ptr, log_tau_ptr, g_ptr, dz_ptr,
                   flag_ptr, order_ptr, N, v_begin, v_end, Vc, Ds, Dt, stride_sh, stride_sw, stride_th, stride_tw,
                   stride_dz, flag_cols, s_mul, s_cap, t_mul, t_cap, one_m_beta, log_beta, log_1m_beta, filter_eps,
                   MODE: tl.constexpr, CAST_F32: tl.constexpr, PRECISION: tl.constexpr, FILTER: tl.constexpr,
                   S_BIAS: tl.constexpr, S_CAP: tl.constexpr, T_BIAS: tl.constexpr, T_CAP: tl.constexpr,
                   FLAG_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    slots = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # the workspace rows this tile writes
    offs_v = v_begin + tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    n_mask = slots < N
    v_mask = offs_v < v_end
    offs_n = slots
    if FILTER:  # rows visited grouped by confidence (see student_grads): the slot-th row of the order
        offs_n = tl.load(order_ptr + slots, mask=n_mask, other=0)
    raw, _unused = logits_tile(sh_ptr, sh_ptr, stride_sh, sw_ptr, stride_sw, offs_n, n_mask, offs_v, v_mask,
                               Ds, False, CAST_F32, PRECISION, BLOCK_N, BLOCK_V, BLOCK_D)
    z_s = head_logits(raw, sb_ptr, offs_v, v_mask, s_mul, s_cap, S_BIAS, S_CAP)
    lse_s = tl.load(rows_ptr + LSE_S * N + offs_n, mask=n_mask, other=0.0)
    g = tl.load(g_ptr + offs_n, mask=n_mask, other=0.0)
    teacher_depth = Dt
    if FILTER and MODE == DIV_REVERSE:
        # Reverse KL: where every p_s of the tile is <= its row's tau (see teacher_skip_threshold),
        # every entry is provably below the filter's threshold: the teacher's GEMM loop runs zero
        # steps and the tile's gradient is zero. (A loop bound, not a branch around the GEMM: the
        # branch cost 34-42 more registers per thread on sm_90a; a helper function moved spills.)
        log_tau = tl.load(log_tau_ptr + offs_n, mask=n_mask, other=float("inf"))  # rows past N: never live
        live = tl.max(tl.max(z_s - (lse_s + log_tau)[:, None], 1), 0) > 0.0
        teacher_depth = Dt * live.to(tl.int32)
    logp_s = z_s - lse_s[:, None]
    p_s = tl.exp(logp_s)
    if MODE == DIV_NONE:  # the target log-prob
        y = tl.load(y_ptr + offs_n, mask=n_mask, other=-1)
        dz = tl.where(offs_v[None, :] == y[:, None], 1.0, 0.0) - p_s
    else:
        raw_t, _unused_t = logits_tile(th_ptr, th_ptr, stride_th, tw_ptr, stride_tw, offs_n, n_mask, offs_v,
                                       v_mask, teacher_depth, False, CAST_F32, PRECISION, BLOCK_N, BLOCK_V, BLOCK_D)
        z_t = head_logits(raw_t, tb_ptr, offs_v, v_mask, t_mul, t_cap, T_BIAS, T_CAP)
        lse_t = tl.load(rows_ptr + LSE_T * N + offs_n, mask=n_mask, other=0.0)
        gap = tl.load(rows_ptr + GAP * N + offs_n, mask=n_mask, other=0.0)
        aux = tl.load(rows_ptr + AUX * N + offs_n, mask=n_mask, other=0.0)
        if MODE == DIV_REVERSE:
            dz = p_s * ((z_s - z_t) + (gap - aux)[:, None])
            if FILTER:
                dz = tl.where(teacher_depth > 0, dz, 0.0)
        elif MODE == DIV_FORWARD:
            dz = p_s - tl.exp(z_t - lse_t[:, None])
        else:
            logp_t = z_t - lse_t[:, None]
            logm = logaddexp(logp_t + log_beta, logp_s + log_1m_beta)
            dz = one_m_beta * p_s * (logp_s - logm - aux[:, None])
    if FILTER:
        experimental_filter.flag_blocks(dz, rows_ptr, lse_s, offs_n, n_mask, v_mask, N, flag_ptr, flag_cols,
                                        filter_eps, FLAG_BLOCK, BLOCK_N, BLOCK_V)
    if S_CAP:  # d tanh: 1 - (z / c)^2 with z / c = (z / T) / (c / T), masked columns (-1e30) kept out of it
        t = tl.where(v_mask[None, :], z_s, 0.0) / s_cap
        dz = dz * (1.0 - t * t)
    dz = dz * g[:, None]  # masked columns hold p = 0 exactly (see head_logits); the store skips them anyway
    ptrs = dz_ptr + slots[:, None] * stride_dz + (offs_v - v_begin)[None, :]
    tl.store(ptrs, dz.to(dz_ptr.dtype.element_ty), mask=n_mask[:, None] & v_mask[None, :])


_CHUNK_ALIGN = 256  # vocabulary chunks are whole multiples of every tile width


def _chunk_columns(num_rows: int, vocab_size: int, itemsize: int, workspace_bytes: int) -> int:
    cols = workspace_bytes // max(1, num_rows * itemsize)
    cols = max(_CHUNK_ALIGN, cols // _CHUNK_ALIGN * _CHUNK_ALIGN)
    return min(cols, vocab_size)


def student_grads(*, mode: Optional[Divergence], sh, sw, rows: torch.Tensor, row_grad: torch.Tensor, vocab_size: int,
                  options, temperature: float = 1.0, th=None, tw=None, targets=None, beta: float = 0.5,
                  precision: str = "ieee", student_transform: LogitTransform = IDENTITY,
                  teacher_transform: LogitTransform = IDENTITY):
    """(d hidden [N, Ds] fp32, d weight [Vs, Ds] in sw's dtype, zero rows >= V, d bias [Vs] fp32 or
    None without a student bias).

    ``sh``/``sw``/``th``/``tw`` are kernel operands (see stats.operands), the transforms too
    (stats.transform_operand); ``rows`` comes from :func:`stats.row_stats`; ``mode``: the
    divergence, or None for the target log-prob; ``options`` (KernelOptions) sets the workspace,
    the matmuls and the filter.
    """
    n, ds = sh.shape
    device = sh.device
    ws_dtype = sw.dtype if sw.dtype in (torch.bfloat16, torch.float16) else torch.float32
    g = (row_grad.detach().to(device=device, dtype=torch.float32) / temperature).contiguous()
    if student_transform.scale != 1.0:  # the logit scale's factor of dz/dr, once per row
        g = g * student_transform.scale
    bias = student_transform.bias
    grad_b = torch.zeros(bias.shape[0], dtype=torch.float32, device=device) if bias is not None else None
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
        dlogits_kernel[grid](sh_ptr=sh, sw_ptr=sw, th_ptr=th, tw_ptr=tw, y_ptr=y, rows_ptr=rows, log_tau_ptr=log_tau,
                             g_ptr=g, dz_ptr=dz, flag_ptr=flag_map if filtering else dz,
                             order_ptr=order if filtering else g, N=n, v_begin=v_begin, v_end=v_end, Vc=cols, Ds=ds,
                             Dt=th.shape[1], stride_sh=sh.stride(0), stride_sw=sw.stride(0), stride_th=th.stride(0),
                             stride_tw=tw.stride(0), stride_dz=dz.stride(0), flag_cols=flag_cols,
                             one_m_beta=1.0 - beta, log_beta=math.log(beta), log_1m_beta=math.log1p(-beta),
                             filter_eps=eps or 0.0, MODE=_codes.code(mode), CAST_F32=C.INTERPRET,
                             PRECISION=precision, FILTER=filtering, FLAG_BLOCK=C.FLAG_BLOCK,
                             **head_args("s", student_transform, temperature, g),
                             **head_args("t", teacher_transform, temperature, g))
        if grad_b is not None:  # d bias = column sums of d loss / d r: over the chunk's rows, no atomics
            grad_b[v_begin:v_end] = dz.sum(0, dtype=torch.float32)
        if cublas:
            mm_into(grad_w[v_begin:v_end], dz.t(), sh)  # same dtype in and out: torch.mm, fp32 inside
            (addmm_into if v_begin > 0 else mm_into)(grad_h, dz, sw[v_begin:v_end])
        else:
            matmul(dz.t(), sh, grad_w[v_begin:v_end], accumulate=False, precision=precision,
                   flags=flags.t() if filtering else None, order=order, ordered="b" if filtering else "")
            matmul(dz, sw[v_begin:v_end], grad_h, accumulate=v_begin > 0, precision=precision, flags=flags,
                   order=order, ordered="c" if filtering else "")
    return grad_h, grad_w, grad_b
