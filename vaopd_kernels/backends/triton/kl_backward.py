"""Backward: d(student hidden) and d(student head) from saved O(N) row statistics.

The vocabulary is walked in chunks of ``Vc`` columns (``Vc`` from a fixed workspace budget,
``KernelOptions.triton_workspace_bytes``, 32 MiB by default). Per chunk:

1. ``_dlogits_kernel`` recomputes the student (and teacher) logit tiles with ``tl.dot`` and
   writes d loss / d z_s for all N rows x Vc columns into the workspace (the only [rows, cols]
   buffer; it never grows with V);
2. ``matmul`` writes d W_s[chunk] = dz^T @ h (K = N: each gradient row written once, no fp32
   copy of the head's gradient);
3. ``matmul`` accumulates d h += dz @ W_s[chunk] into one fp32 [N, Ds] buffer.
(``backward_gemm="cublas"`` runs steps 2 and 3 through cuBLAS instead.)
With gradient filtering (``gradient_filter_eps``) the rows are visited in an order grouped by confidence (the workspace
holds them in that order; step 2 gathers h's rows and step 3 scatters d h's rows through it).

Every output element has exactly one writer: no atomics, deterministic.

Gradient of the row quantity q_n times the row weight g_n (already divided by T):
- reverse KL: g p_s (log p_s - log p_t - KL) = g p_s (z_s - z_t + gap - KL)
- forward KL: g (p_s - p_t)
- JSD:        g (1 - beta) p_s (log p_s - log m - KL(p_s || m))
- log-prob:   g (onehot(y) - p_s)
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from vaopd_kernels.backends._gemm import addmm_into, mm_into
from vaopd_kernels.backends.triton import _config as C
from vaopd_kernels.backends.triton._tiles import dot, logaddexp, logits_tile, scaled
from vaopd_kernels.backends.triton.kl_forward import RowStats

MODE_REVERSE, MODE_FORWARD, MODE_JSD, MODE_LOGPROB = 0, 1, 2, 3
MODES = {"reverse": MODE_REVERSE, "forward": MODE_FORWARD, "jsd": MODE_JSD, "logprob": MODE_LOGPROB}

# The H200 (2026-11-27) chose the first of each list for every key; configurations that won
# nothing there and spill on sm_90a (4 warps; 128 x 256 dlogits tiles) are gone.
_DZ_CONFIGS = [
    C.cfg(8, 4, BLOCK_N=128, BLOCK_V=128, BLOCK_D=64),
    C.cfg(8, 3, BLOCK_N=128, BLOCK_V=128, BLOCK_D=64),
    # ~110 registers on sm_90a (two CTAs per SM) against ~175 for the 128 x 128 tiles
    C.cfg(8, 3, BLOCK_N=64, BLOCK_V=128, BLOCK_D=64),
    C.cfg(8, 4, BLOCK_N=64, BLOCK_V=128, BLOCK_D=64),
]
# Pipeline stages of the filtered GEMM loop: with its list read, 5 give the 3 operand buffers
# (2 on sm_80) that the unfiltered loop gets from the configurations' 3-4 (triton_resources).
_LIST_STAGES = 5
_MM_CONFIGS = [
    C.cfg(8, 3, BLOCK_M=128, BLOCK_N=256, BLOCK_K=64),
    C.cfg(8, 4, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64),
    C.cfg(8, 3, BLOCK_M=256, BLOCK_N=128, BLOCK_K=64),
]


@C.autotune(_DZ_CONFIGS, C.cfg(1, 1, BLOCK_N=16, BLOCK_V=32, BLOCK_D=32),
            key=["Ds", "Dt", "MODE", "PRECISION", "FILTER"])  # not N: no retuning per batch
@triton.jit
def _dlogits_kernel(sh_ptr, sw_ptr, th_ptr, tw_ptr, y_ptr, rows_ptr, log_tau_ptr, g_ptr, dz_ptr, flag_ptr, order_ptr,
                    N, v_begin, v_end, Vc, Ds, Dt, stride_sh, stride_sw, stride_th, stride_tw, stride_dz,
                    flag_cols, inv_temp, one_m_beta, log_beta, log_1m_beta, filter_eps,
                    MODE: tl.constexpr, CAST_F32: tl.constexpr, PRECISION: tl.constexpr, FILTER: tl.constexpr,
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
    z_s = scaled(raw, v_mask, inv_temp)
    lse_s = tl.load(rows_ptr + offs_n, mask=n_mask, other=0.0)
    g = tl.load(g_ptr + offs_n, mask=n_mask, other=0.0)
    teacher_depth = Dt
    if FILTER and MODE == 0:
        # Reverse KL: where every p_s of the tile is <= its row's tau (see teacher_skip_threshold),
        # every entry is provably below the filter's threshold: the teacher's GEMM loop runs zero
        # steps and the tile's gradient is zero. (A loop bound, not a branch around the GEMM: the
        # branch cost 34-42 more registers per thread on sm_90a.)
        log_tau = tl.load(log_tau_ptr + offs_n, mask=n_mask, other=float("inf"))  # rows past N: never live
        live = tl.max(tl.max(z_s - (lse_s + log_tau)[:, None], 1), 0) > 0.0
        teacher_depth = Dt * live.to(tl.int32)
    logp_s = z_s - lse_s[:, None]
    p_s = tl.exp(logp_s)
    if MODE == 3:
        y = tl.load(y_ptr + offs_n, mask=n_mask, other=-1)
        dz = tl.where(offs_v[None, :] == y[:, None], 1.0, 0.0) - p_s
    else:
        raw_t, _unused_t = logits_tile(th_ptr, th_ptr, stride_th, tw_ptr, stride_tw, offs_n, n_mask, offs_v,
                                       v_mask, teacher_depth, False, CAST_F32, PRECISION, BLOCK_N, BLOCK_V, BLOCK_D)
        z_t = scaled(raw_t, v_mask, inv_temp)
        lse_t = tl.load(rows_ptr + N + offs_n, mask=n_mask, other=0.0)
        gap = tl.load(rows_ptr + 2 * N + offs_n, mask=n_mask, other=0.0)
        aux = tl.load(rows_ptr + 3 * N + offs_n, mask=n_mask, other=0.0)
        if MODE == 0:
            dz = p_s * ((z_s - z_t) + (gap - aux)[:, None])
            if FILTER:
                dz = tl.where(teacher_depth > 0, dz, 0.0)
        elif MODE == 1:
            dz = p_s - tl.exp(z_t - lse_t[:, None])
        else:
            logp_t = z_t - lse_t[:, None]
            logm = logaddexp(logp_t + log_beta, logp_s + log_1m_beta)
            dz = one_m_beta * p_s * (logp_s - logm - aux[:, None])
    if FILTER:  # flag each FLAG_BLOCK x FLAG_BLOCK block with some |d q_n / d z| >= eps * max_v p_s
        max_s = tl.load(rows_ptr + 4 * N + offs_n, mask=n_mask, other=0.0)
        threshold = filter_eps * tl.exp(max_s - lse_s)
        excess = tl.where(n_mask[:, None] & v_mask[None, :], tl.abs(dz) - threshold[:, None], -1.0)
        blocks = tl.reshape(excess, (BLOCK_N // FLAG_BLOCK, FLAG_BLOCK, BLOCK_V // FLAG_BLOCK, FLAG_BLOCK))
        block_max = tl.max(tl.max(blocks, 3), 1)
        row_blocks = tl.program_id(0) * (BLOCK_N // FLAG_BLOCK) + tl.arange(0, BLOCK_N // FLAG_BLOCK)
        col_blocks = tl.program_id(1) * (BLOCK_V // FLAG_BLOCK) + tl.arange(0, BLOCK_V // FLAG_BLOCK)
        in_map = (row_blocks < tl.cdiv(N, FLAG_BLOCK))[:, None] & (col_blocks < flag_cols)[None, :]
        tl.store(flag_ptr + row_blocks[:, None] * flag_cols + col_blocks[None, :],
                 (block_max >= 0.0).to(tl.int8), mask=in_map)
    dz = dz * g[:, None]  # masked columns hold p = 0 exactly (see scaled); the store skips them anyway
    ptrs = dz_ptr + slots[:, None] * stride_dz + (offs_v - v_begin)[None, :]
    tl.store(ptrs, dz.to(dz_ptr.dtype.element_ty), mask=n_mask[:, None] & v_mask[None, :])


@triton.jit
def _live_steps(flag_ptr, live_ptr, M, K, stride_fm, stride_fk,
                FLAG_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Writes to live_ptr, in increasing order, the K steps of this program's rows that the flag
    map marks live (some flag in its [BLOCK_M, BLOCK_K] block set); returns how many there are."""
    SCAN: tl.constexpr = 64  # K steps examined at once
    FM: tl.constexpr = BLOCK_M // FLAG_BLOCK
    FK: tl.constexpr = BLOCK_K // FLAG_BLOCK
    fm = tl.program_id(0) * FM + tl.arange(0, FM)
    fm_mask = fm < tl.cdiv(M, FLAG_BLOCK)
    count = 0
    for first in range(0, tl.cdiv(K, BLOCK_K), SCAN):
        fk = first * FK + tl.arange(0, SCAN * FK)
        flags = tl.load(flag_ptr + fm[:, None] * stride_fm + fk[None, :] * stride_fk,
                        mask=fm_mask[:, None] & (fk < tl.cdiv(K, FLAG_BLOCK))[None, :], other=0)
        live = (tl.max(tl.reshape(tl.max(flags, 0), (SCAN, FK)), 1) > 0).to(tl.int32)
        slot = count + tl.cumsum(live, 0) - live
        tl.store(live_ptr + slot, first + tl.arange(0, SCAN), mask=live > 0)
        count += tl.sum(live, 0)
    return count


@triton.jit
def _matmul_step(acc, k, a_ptr, b_ptr, order_ptr, offs_m, offs_n, offs_k, m_mask, n_mask, K,
                 stride_am, stride_ak, stride_bk, stride_bn,
                 CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ORDER_B: tl.constexpr):
    """acc + a[:, k:k+BLOCK_K] @ b[k:k+BLOCK_K] (b's rows through order_ptr with ORDER_B)."""
    kk = k + offs_k
    k_mask = kk < K
    a = tl.load(a_ptr + offs_m[:, None] * stride_am + kk[None, :] * stride_ak,
                mask=m_mask[:, None] & k_mask[None, :], other=0.0)
    rows_b = kk
    if ORDER_B:
        rows_b = tl.load(order_ptr + kk, mask=k_mask, other=0)
    b = tl.load(b_ptr + rows_b[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                mask=k_mask[:, None] & n_mask[None, :], other=0.0)
    return dot(a, b, acc, CAST_F32, PRECISION)


@C.autotune(_MM_CONFIGS, C.cfg(1, 1, BLOCK_M=16, BLOCK_N=32, BLOCK_K=32),
            # key: output width and layout only (M, K follow the batch size: no retuning per batch)
            key=["N", "stride_am", "ACCUMULATE", "PRECISION", "FILTER"], restore_value=["c_ptr"])
@triton.jit
def _matmul_kernel(a_ptr, b_ptr, c_ptr, flag_ptr, live_ptr, order_ptr, M, N, K, stride_am, stride_ak, stride_bk,
                   stride_bn, stride_cm, stride_fm, stride_fk,
                   ACCUMULATE: tl.constexpr, CAST_F32: tl.constexpr, PRECISION: tl.constexpr, FILTER: tl.constexpr,
                   ORDER_B: tl.constexpr, ORDER_C: tl.constexpr, LIST_STAGES: tl.constexpr,
                   FLAG_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """c (+)= a @ b with fp32 accumulation; c is row-major with unit column stride. With FILTER, only
    the K steps where the int8 map flags[m / FLAG_BLOCK, k / FLAG_BLOCK] (strides stride_fm,
    stride_fk) marks some block of a's rows x that step's columns as non-negligible run, listed
    first in live_ptr (one row of cdiv(K, BLOCK_K) int32 per program). ORDER_B: b's k-th row is
    row order[k]; ORDER_C: c's m-th row is row order[m] (a gather, a scatter)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    rows_c = offs_m
    if ORDER_C:
        rows_c = tl.load(order_ptr + offs_m, mask=m_mask, other=0)
    c_ptrs = c_ptr + rows_c[:, None] * stride_cm + offs_n[None, :]
    c_mask = m_mask[:, None] & n_mask[None, :]
    # Accumulating starts from c: no second [BLOCK_M, BLOCK_N] fp32 tile at the end (it spilled).
    if ACCUMULATE:
        acc = tl.load(c_ptrs, mask=c_mask, other=0.0).to(tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FILTER:
        # The live steps are listed first, so the GEMM loop has no branch: a branch around tl.dot
        # kept Triton from pipelining the loop (no async copies, synchronous MMAs). The list read
        # is one more level of indirection, which takes a pipeline stage: hence LIST_STAGES.
        list_len = tl.cdiv(K, BLOCK_K)  # room for every step: this program's row of the scratch
        live_ptr += (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * list_len
        live = _live_steps(flag_ptr, live_ptr, M, K, stride_fm, stride_fk, FLAG_BLOCK, BLOCK_M, BLOCK_K)
        tl.debug_barrier()  # the list is read back by other threads of this program
        for i in tl.range(0, live, num_stages=LIST_STAGES):
            acc = _matmul_step(acc, tl.load(live_ptr + i) * BLOCK_K, a_ptr, b_ptr, order_ptr, offs_m, offs_n, offs_k,
                               m_mask, n_mask, K, stride_am, stride_ak, stride_bk, stride_bn,
                               CAST_F32, PRECISION, ORDER_B)
    else:
        for k in range(0, K, BLOCK_K):
            acc = _matmul_step(acc, k, a_ptr, b_ptr, order_ptr, offs_m, offs_n, offs_k, m_mask, n_mask, K,
                               stride_am, stride_ak, stride_bk, stride_bn, CAST_F32, PRECISION, ORDER_B)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


def _step_lists(m: int, n: int, k: int, device) -> torch.Tensor:
    """Room for every program's list of live K steps, whichever configuration autotuning picks."""
    size = max(triton.cdiv(m, c.kwargs["BLOCK_M"]) * triton.cdiv(n, c.kwargs["BLOCK_N"])
               * triton.cdiv(k, c.kwargs["BLOCK_K"]) for c in _matmul_kernel.configs)
    lists = torch.empty(size, dtype=torch.int32, device=device)
    if C.POISON:
        lists.zero_()  # a read past a program's list would redo step 0: the tests would see it
    return lists


def matmul(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, *, accumulate: bool, precision: str,
           flags: Optional[torch.Tensor] = None, order: Optional[torch.Tensor] = None, ordered: str = "") -> None:
    """c (+)= a @ b for 2-D views (any strides for a and b; c with unit column stride). ``flags``:
    an int8 [M / FLAG_BLOCK, K / FLAG_BLOCK] view (any strides); K steps it marks 0 are skipped.
    ``order`` (int32 row indices) with ``ordered="b"``: b's rows are b[order]; ``"c"``: c[order]'s."""
    m, k = a.shape
    n = b.shape[1]
    assert c.stride(1) == 1 and c.shape == (m, n)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))  # noqa: E731
    fm, fk = flags.stride() if flags is not None else (0, 0)
    lists = _step_lists(m, n, k, c.device) if flags is not None else c
    _matmul_kernel[grid](a, b, c, flags if flags is not None else c, lists, order if order is not None else c, m, n,
                         k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), fm, fk,
                         ACCUMULATE=accumulate, CAST_F32=C.INTERPRET, PRECISION=precision, FILTER=flags is not None,
                         ORDER_B=ordered == "b", ORDER_C=ordered == "c", FLAG_BLOCK=C.FLAG_BLOCK,
                         LIST_STAGES=_LIST_STAGES)


def saved_rows(stats: RowStats, aux: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The [6, N] fp32 rows :func:`student_grads` reads, from a statistics pass (absent ones zero):
    lse_s, lse_t, gap = lse_t - lse_s (accurate form), ``aux`` (KL for reverse, KL(p_s||m) for
    JSD), the student's largest logit (scales the filter's threshold) and the teacher's smallest
    (bounds -log p_t for the filter's teacher skip)."""
    # a missing min_t reads as -inf: an infinite bound, so the teacher skip drops nothing
    min_t = stats.min_t if stats.min_t is not None else torch.full_like(stats.lse_s, float("-inf"))
    columns = (stats.lse_s, stats.lse_t, stats.gap, aux, stats.max_s, min_t)
    return torch.stack([c if c is not None else torch.zeros_like(min_t) for c in columns])


def teacher_skip_threshold(rows: torch.Tensor, eps: float) -> torch.Tensor:
    """Per row, a tau such that p_s <= tau implies |d KL(p_s||p_t) / d z_s| <= eps * max_v p_s.

    That derivative is p_s (log p_s - log p_t - KL). With k = |KL| + (lse_t - min_v z_t), a bound
    on |log p_t| + |KL|, it is at most f(p_s) = p_s (-log p_s + k), increasing up to 1/e. With
    b = eps max p_s and d = max(k - log b + 1, 1), tau = min(b / (d + log d), 1/e) gives
    f(tau) <= b (it reduces to log(d + log d) <= 1 + log d; the 1/e cap to f(1/e) <= b). The
    backward skips the teacher tile wherever all of a tile's p_s are this small: those entries
    would be filtered out anyway.
    """
    lse_s, lse_t, _, kl, max_s, min_t = rows.double()
    b = eps * torch.exp(max_s - lse_s)
    d = (kl.abs() + (lse_t - min_t) - torch.log(b) + 1.0).clamp(min=1.0)
    return (b / (d + torch.log(d))).clamp(max=math.exp(-1.0)).float()


def _chunk_columns(num_rows: int, vocab_size: int, itemsize: int, workspace_bytes: int) -> int:
    cols = workspace_bytes // max(1, num_rows * itemsize)
    cols = max(256, cols // 256 * 256)
    return min(cols, vocab_size)


def student_grads(*, mode: str, sh, sw, rows: torch.Tensor, row_grad: torch.Tensor, vocab_size: int, options,
                  temperature: float = 1.0, th=None, tw=None, targets=None, beta: float = 0.5,
                  precision: str = "ieee"):
    """(d hidden [N, Ds] fp32, d weight [Vs, Ds] in sw's dtype, zero rows >= V).

    ``sh``/``sw``/``th``/``tw`` are kernel operands (see kl_forward.prepare); ``rows`` comes from
    :func:`saved_rows`; ``options`` (KernelOptions) sets the workspace, the matmuls and the filter.
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
    log_tau = teacher_skip_threshold(rows, eps).log() if filtering and mode == "reverse" else g
    # With the filter, rows are visited grouped by confidence (log max p_s): a block is skipped only
    # if all its 64-128 rows allow it, and one uncertain row among certain ones keeps it
    # (bench/filter_reach.py). The workspace holds rows in this order; the matmuls gather h's rows
    # and scatter d hidden's through it. Nothing is copied.
    order = torch.argsort(rows[4] - rows[0]).to(torch.int32) if filtering else None
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
        _dlogits_kernel[grid](sh, sw, th, tw, y, rows, log_tau, g, dz, flag_map if filtering else dz,
                              order if filtering else g, n, v_begin, v_end, cols, ds, th.shape[1], sh.stride(0),
                              sw.stride(0), th.stride(0), tw.stride(0), dz.stride(0), flag_cols, 1.0 / temperature,
                              1.0 - beta, math.log(beta), math.log1p(-beta), eps or 0.0, MODE=MODES[mode],
                              CAST_F32=C.INTERPRET, PRECISION=precision, FILTER=filtering, FLAG_BLOCK=C.FLAG_BLOCK)
        if cublas:
            mm_into(grad_w[v_begin:v_end], dz.t(), sh)  # same dtype in and out: torch.mm, fp32 inside
            (addmm_into if v_begin > 0 else mm_into)(grad_h, dz, sw[v_begin:v_end])
        else:
            matmul(dz.t(), sh, grad_w[v_begin:v_end], accumulate=False, precision=precision,
                   flags=flags.t() if filtering else None, order=order, ordered="b" if filtering else "")
            matmul(dz, sw[v_begin:v_end], grad_h, accumulate=v_begin > 0, precision=precision, flags=flags,
                   order=order, ordered="c" if filtering else "")
    return grad_h, grad_w
