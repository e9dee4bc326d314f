"""The backward's matmul kernel: c (+)= a @ b with fp32 accumulation (d head = dz^T h, d hidden += dz W).

With FILTER (experimental, ``experimental_filter.py``) it runs only the K steps that an int8 block
map marks live (``experimental_filter.live_steps``), and can gather b's rows / scatter c's rows
through a row order.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from vaopd_kernels.backends.triton import _config as C
from vaopd_kernels.backends.triton.experimental_filter import live_steps
from vaopd_kernels.backends.triton._tiles import dot

# Pipeline stages of the filtered GEMM loop: with its list read, 5 give the 3 operand buffers
# (2 on sm_80) that the unfiltered loop gets from the configurations' 3-4 (triton_resources).
_LIST_STAGES = 5
_MM_CONFIGS = [
    C.cfg(8, 3, BLOCK_M=128, BLOCK_N=256, BLOCK_K=64),
    C.cfg(8, 4, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64),
    C.cfg(8, 3, BLOCK_M=256, BLOCK_N=128, BLOCK_K=64),
]


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
        live = live_steps(flag_ptr, live_ptr, M, K, stride_fm, stride_fk, FLAG_BLOCK, BLOCK_M, BLOCK_K)
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


