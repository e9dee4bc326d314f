"""@triton.jit helpers shared by the forward, backward and log-prob kernels."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def dot(a, b, acc, INTERPRETER: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b with fp32 accumulation.

    Under the CPU interpreter ``tl.dot`` is numpy's BLAS matmul, which is wrong on bf16 operands
    and whose result for a row depends on the row's position in the tile (edge rows take other
    microkernels); a broadcast product summed over k in order is exact for fp32/bf16 products and
    gives every row the same result wherever it sits, as a GPU's MMA does. Row-permuting kernels
    (the gradient filter visits rows in another order) rely on that to match bit for bit.
    """
    if INTERPRETER:
        return acc + tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], 1)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def logits_tile(x_ptr, x2_ptr, stride_x, w_ptr, stride_w, offs_n, n_mask, offs_v, v_mask, D,
                TWO: tl.constexpr, CAST_F32: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """Raw logits x[offs_n] @ w[offs_v]^T as a [BLOCK_N, BLOCK_V] fp32 tile.

    With TWO, also x2[offs_n] @ w[offs_v]^T, reusing every loaded weight tile for both (the
    teacher's original and degraded views). Rows/columns outside the masks come out as 0.
    """
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    offs_d = tl.arange(0, BLOCK_D)
    for k in range(0, D, BLOCK_D):
        d = k + offs_d
        d_mask = d < D
        w = tl.load(w_ptr + offs_v[None, :] * stride_w + d[:, None],
                    mask=v_mask[None, :] & d_mask[:, None], other=0.0)  # [BLOCK_D, BLOCK_V]
        x = tl.load(x_ptr + offs_n[:, None] * stride_x + d[None, :],
                    mask=n_mask[:, None] & d_mask[None, :], other=0.0)
        acc = dot(x, w, acc, CAST_F32, PRECISION)
        if TWO:
            x2 = tl.load(x2_ptr + offs_n[:, None] * stride_x + d[None, :],
                         mask=n_mask[:, None] & d_mask[None, :], other=0.0)
            acc2 = dot(x2, w, acc2, CAST_F32, PRECISION)
    return acc, acc2


@triton.jit
def scaled(z, v_mask, inv_temp):
    """Logits divided by the temperature; columns >= V become -1e30: e^(z - m) is exactly 0 there,
    like -inf, but differences of two views stay 0 instead of NaN, so no extra mask is needed."""
    return tl.where(v_mask[None, :], z * inv_temp, -1e30)


@triton.jit
def tanh(x):
    """tanh from one exp of -2|x| (never overflows; not every Triton has tl's tanh): absolute error
    within ~1e-7 of torch.tanh in fp32, i.e. about an ulp of the capped logits' range."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0.0, -t, t)


@triton.jit
def head_logits(raw, bias_ptr, offs_v, v_mask, mul, cap, HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr):
    """A head's logits z / T from its raw tile r (``stats.head_args`` gives mul, cap): mul (r + b),
    or with a soft-cap c, cap tanh(mul (r + b)) with mul = s / c, cap = c / T. A plain head is
    exactly ``scaled(raw, v_mask, 1 / T)``. Columns >= V become -1e30 after the cap (which would
    bound them)."""
    if HAS_BIAS:
        raw += tl.load(bias_ptr + offs_v, mask=v_mask, other=0.0).to(tl.float32)[None, :]
    if SOFTCAP:
        return tl.where(v_mask[None, :], cap * tanh(raw * mul), -1e30)
    return scaled(raw, v_mask, mul)


@triton.jit
def online_lse(m, l, z):
    """One online-softmax step: (new max, new sum-exp, rescale factor, e^(z - new max))."""
    m_new = tl.maximum(m, tl.max(z, 1))
    alpha = tl.exp(m - m_new)
    e = tl.exp(z - m_new[:, None])
    return m_new, l * alpha + tl.sum(e, 1), alpha, e


@triton.jit
def pick(z, offs_v, y):
    """z[n, y_n] where column y_n lies in this tile, else 0 (summed over tiles = the target logit)."""
    return tl.sum(tl.where(offs_v[None, :] == y[:, None], z, 0.0), 1)


@triton.jit
def logaddexp(x, y):
    mx = tl.maximum(x, y)
    return mx + tl.log(tl.exp(x - mx) + tl.exp(y - mx))
