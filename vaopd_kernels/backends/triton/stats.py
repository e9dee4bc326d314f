"""Forward row statistics: one pass over the vocabulary per token tile, O(N) outputs.

``_stats_kernel`` handles every forward need through constexpr flags (student view, teacher
view, degraded teacher view, targets, which cross terms, each head's logit transform: bias, scale,
soft-cap, see ``_tiles.head_logits``). Per (token tile, vocabulary split) it keeps, per row and
per view, a running max ``m`` and ``l = sum e^(z - m)``, plus

- student: ``b = sum e^(z_s - m_s) z_s`` (entropy) and the target logit;
- CROSS=DIV_REVERSE: ``a = sum e^(z_s - m_s)(z_s - z_t)`` and ``c = sum (e^(z_t - m_s) - e^(z_s - m_s))``
  so KL = a/l_s + (lse_t - lse_s) with the gap taken as log1p(c/l_s) when it is small (the
  difference z_s - z_t stays inside the sums: accurate when student ~ teacher); with MIN_T also
  the teacher's smallest logit, which bounds -log p_t for the backward's gradient filter;
- CROSS=DIV_FORWARD: the same with the roles swapped (teacher max);
- VISUAL (a degraded view): the DIV_FORWARD sums between the teacher's two views,
  ``a_d = sum e^(z_t - m_t)(z_t - z_d)`` and ``c_d = sum (e^(z_d - m_t) - e^(z_t - m_t))``, for
  KL(p_t || p_d) (the "divergence" visual signal); with any CROSS but DIV_JSD;
- CROSS=DIV_JSD: a second pass with lse_s, lse_t known: sum p_t(log p_t - log m), sum p_s(log p_s - log m).

Partial statistics of the splits are merged on the host side of the launch with a logaddexp-style
rescale (a few [S, N] torch ops; no locks, no [N, V] memory).
"""
from __future__ import annotations

import enum
import math
from dataclasses import replace
from typing import Optional

import torch
import triton
import triton.language as tl

from vaopd_kernels.backends.base import IDENTITY, LogitTransform, RowStats
from vaopd_kernels.backends.triton import _config as C
from vaopd_kernels.backends.triton._codes import DIV_FORWARD, DIV_JSD, DIV_NONE, DIV_REVERSE
from vaopd_kernels.backends.triton._tiles import head_logits, logaddexp, logits_tile, online_lse, pick

# rows of the [NUM_STATS, S, N] partial-statistics buffer
M_S, L_S, B_S, Y_S, M_T, L_T, Y_T, M_D, L_D, Y_D, A_X, C_X, LO_T, A_D, C_D = range(15)
NUM_STATS = 15
# Below this |lse_t - lse_s| the gap is log1p(c / l), a sum of small differences, not the plain
# difference of two ~log(V)-sized normalisers (which loses ~1e-6 in fp32 when student ~ teacher).
SMALL_GAP = 0.5

# H200 autotuning's winners first (64 x 256; 128 x 128 for the JSD pass), and only configurations
# that win some key there: autotuning compiles every candidate per key. The last three spread
# 8192-element tiles over 8 warps, so none spills on sm_90a with two or three views
# (``python -m bench.triton_resources``).
_CONFIGS = [
    C.cfg(8, 3, BLOCK_N=64, BLOCK_V=256, BLOCK_D=64),
    C.cfg(8, 3, BLOCK_N=128, BLOCK_V=128, BLOCK_D=64),
    C.cfg(8, 3, BLOCK_N=64, BLOCK_V=128, BLOCK_D=64),
    C.cfg(8, 4, BLOCK_N=64, BLOCK_V=128, BLOCK_D=64),
    C.cfg(8, 3, BLOCK_N=128, BLOCK_V=64, BLOCK_D=64),
]
# On sm_80 every configuration above spills 160 B or more per thread in the student + teacher
# statistics; 64 x 64 tiles over 8 warps spill nothing in any statistics launch there (offline
# compile, bench/triton_resources.py), so Ampere GPUs also try those. Hopper never sees them.
_AMPERE_CONFIGS = [
    C.cfg(8, 3, BLOCK_N=64, BLOCK_V=64, BLOCK_D=64),
    C.cfg(8, 3, BLOCK_N=64, BLOCK_V=64, BLOCK_D=32),
]
_INTERPRETER_CONFIG = C.cfg(1, 1, BLOCK_N=16, BLOCK_V=32, BLOCK_D=32)


@C.autotune(_CONFIGS, _INTERPRETER_CONFIG, ampere_configs=_AMPERE_CONFIGS,
            key=["Ds", "Dt", "V", "HAS_S", "HAS_T", "HAS_D", "HAS_Y", "CROSS", "MIN_T", "VISUAL", "PRECISION",
                 "S_BIAS", "S_CAP", "T_BIAS", "T_CAP"])
@triton.jit
def _stats_kernel(sh_ptr, sw_ptr, sb_ptr, th_ptr, td_ptr, tw_ptr, tb_ptr, y_ptr, lse_ptr, out_ptr,
                  N, V, Ds, Dt, stride_sh, stride_sw, stride_th, stride_tw,
                  s_mul, s_cap, t_mul, t_cap, log_beta, log_1m_beta,
                  HAS_S: tl.constexpr, HAS_T: tl.constexpr, HAS_D: tl.constexpr, HAS_Y: tl.constexpr,
                  CROSS: tl.constexpr, MIN_T: tl.constexpr, VISUAL: tl.constexpr, CAST_F32: tl.constexpr,
                  PRECISION: tl.constexpr, S_BIAS: tl.constexpr, S_CAP: tl.constexpr, T_BIAS: tl.constexpr,
                  T_CAP: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    num_tiles = tl.cdiv(V, BLOCK_V)
    per_split = tl.cdiv(num_tiles, num_splits)
    t_begin = split * per_split
    t_end = tl.minimum(t_begin + per_split, num_tiles)

    neg_inf = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    zero = tl.zeros((BLOCK_N,), tl.float32)
    m_s, l_s, b_s, y_s = neg_inf, zero, zero, zero
    m_t, l_t, y_t = neg_inf, zero, zero
    lo_t = tl.full((BLOCK_N,), float("inf"), tl.float32)
    m_d, l_d, y_d = neg_inf, zero, zero
    a_x, c_x = zero, zero
    m_v, l_v, a_d, c_d = neg_inf, zero, zero, zero
    y = tl.full((BLOCK_N,), -1, tl.int64)
    if HAS_Y:
        y = tl.load(y_ptr + offs_n, mask=n_mask, other=-1)
    lse_s = zero
    lse_t = zero
    if CROSS == DIV_JSD:
        lse_s = tl.load(lse_ptr + offs_n, mask=n_mask, other=0.0)
        lse_t = tl.load(lse_ptr + N + offs_n, mask=n_mask, other=0.0)

    for t in range(t_begin, t_end):
        offs_v = t * BLOCK_V + tl.arange(0, BLOCK_V)
        v_mask = offs_v < V
        z_s = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
        z_t = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
        # Teacher views first, and the degraded one reduced at once: at most two logit tiles are
        # live at any time (three would spill; see bench/triton_resources.py).
        if HAS_T:
            raw_t, raw_d = logits_tile(th_ptr, td_ptr, stride_th, tw_ptr, stride_tw, offs_n, n_mask, offs_v, v_mask,
                                       Dt, HAS_D, CAST_F32, PRECISION, BLOCK_N, BLOCK_V, BLOCK_D)
            z_t = head_logits(raw_t, tb_ptr, offs_v, v_mask, t_mul, t_cap, T_BIAS, T_CAP)
            if HAS_D:
                z_d = head_logits(raw_d, tb_ptr, offs_v, v_mask, t_mul, t_cap, T_BIAS, T_CAP)
                m_d, l_d, _alpha_d, _e_d = online_lse(m_d, l_d, z_d)
                if HAS_Y:
                    y_d += pick(z_d, offs_v, y)
                if VISUAL:
                    # here, while z_d is live (a third live tile would spill): the teacher's online
                    # softmax once more, (m_v, l_v) = (m_t, l_t) bit for bit, so only a_d, c_d are stored
                    m_new_v, l_v, alpha_v, e_v = online_lse(m_v, l_v, z_t)
                    a_d = a_d * alpha_v + tl.sum(e_v * (z_t - z_d), 1)
                    c_d = c_d * alpha_v + tl.sum(tl.exp(z_d - m_new_v[:, None]) - e_v, 1)
                    m_v = m_new_v
        if HAS_S:
            raw, _unused = logits_tile(sh_ptr, sh_ptr, stride_sh, sw_ptr, stride_sw, offs_n, n_mask, offs_v, v_mask,
                                       Ds, False, CAST_F32, PRECISION, BLOCK_N, BLOCK_V, BLOCK_D)
            z_s = head_logits(raw, sb_ptr, offs_v, v_mask, s_mul, s_cap, S_BIAS, S_CAP)
        if CROSS == DIV_JSD:
            # second JSD pass: exact log-probabilities from the first pass's normalisers
            logp_s = z_s - lse_s[:, None]
            logp_t = z_t - lse_t[:, None]
            logm = logaddexp(logp_t + log_beta, logp_s + log_1m_beta)
            a_x += tl.sum(tl.where(v_mask[None, :], tl.exp(logp_t) * (logp_t - logm), 0.0), 1)
            c_x += tl.sum(tl.where(v_mask[None, :], tl.exp(logp_s) * (logp_s - logm), 0.0), 1)
        else:
            diff = z_s - z_t
            if HAS_S:
                m_new, l_s, alpha_s, e_s = online_lse(m_s, l_s, z_s)
                b_s = b_s * alpha_s + tl.sum(e_s * z_s, 1)
                if HAS_Y:
                    y_s += pick(z_s, offs_v, y)
                if CROSS == DIV_REVERSE:
                    a_x = a_x * alpha_s + tl.sum(e_s * diff, 1)
                    c_x = c_x * alpha_s + tl.sum(tl.exp(z_t - m_new[:, None]) - e_s, 1)
                    if MIN_T:
                        lo_t = tl.minimum(lo_t, tl.min(tl.where(v_mask[None, :], z_t, float("inf")), 1))
                m_s = m_new
            if HAS_T:
                m_new_t, l_t, alpha_t, e_t = online_lse(m_t, l_t, z_t)
                if HAS_Y:
                    y_t += pick(z_t, offs_v, y)
                if CROSS == DIV_FORWARD:
                    a_x = a_x * alpha_t - tl.sum(e_t * diff, 1)
                    c_x = c_x * alpha_t + tl.sum(tl.exp(z_s - m_new_t[:, None]) - e_t, 1)
                m_t = m_new_t

    base = out_ptr + split * N + offs_n
    stride = num_splits * N
    if CROSS != DIV_JSD:  # the second JSD pass writes its two sums only
        if HAS_S:
            tl.store(base + 0 * stride, m_s, mask=n_mask)
            tl.store(base + 1 * stride, l_s, mask=n_mask)
            tl.store(base + 2 * stride, b_s, mask=n_mask)
            tl.store(base + 3 * stride, y_s, mask=n_mask)
        if HAS_T:
            tl.store(base + 4 * stride, m_t, mask=n_mask)
            tl.store(base + 5 * stride, l_t, mask=n_mask)
            tl.store(base + 6 * stride, y_t, mask=n_mask)
        if HAS_D:
            tl.store(base + 7 * stride, m_d, mask=n_mask)
            tl.store(base + 8 * stride, l_d, mask=n_mask)
            tl.store(base + 9 * stride, y_d, mask=n_mask)
    if CROSS != DIV_NONE:
        tl.store(base + 10 * stride, a_x, mask=n_mask)
        tl.store(base + 11 * stride, c_x, mask=n_mask)
    if MIN_T:
        tl.store(base + 12 * stride, lo_t, mask=n_mask)
    if VISUAL:
        tl.store(base + 13 * stride, a_d, mask=n_mask)
        tl.store(base + 14 * stride, c_d, mask=n_mask)


# ----------------------------------------------------------------------------- host side
def operands(*tensors):
    """Detached, packed kernel operands (a packed one is not copied) sharing one dtype: float64 and
    mixed dtypes run in float32 (see the package docstring)."""
    xs = [t.detach() if t is not None else None for t in tensors]
    dtypes = {x.dtype for x in xs if x is not None}
    cast = torch.float32 if len(dtypes) > 1 or torch.float64 in dtypes else None
    return [None if x is None else (x.to(cast) if cast else x).contiguous() for x in xs]


def transform_operand(transform: LogitTransform) -> LogitTransform:
    """``transform`` with its bias a detached, contiguous kernel operand (float64 as float32)."""
    bias = transform.bias
    if bias is None:
        return transform
    bias = bias.detach().to(torch.float32 if bias.dtype == torch.float64 else bias.dtype).contiguous()
    return replace(transform, bias=bias)


def head_args(side: str, transform: LogitTransform, temperature: float, dummy: torch.Tensor) -> dict:
    """The kernel arguments of one head's transform (``_tiles.head_logits``) for ``side`` "s" or "t":
    its bias (``dummy`` without one), mul = s / T (s / c with a soft-cap c) and cap = c / T."""
    c = transform.softcap
    return {f"{side}b_ptr": transform.bias if transform.bias is not None else dummy,
            f"{side}_mul": transform.scale / (temperature if c is None else c),
            f"{side}_cap": 0.0 if c is None else c / temperature,
            f"{side.upper()}_BIAS": transform.bias is not None, f"{side.upper()}_CAP": c is not None}


def dot_precision(*tensors) -> str:
    """IEEE fp32 dots for fp32 operands (exact, never TF32); half-precision operands ignore it."""
    fp32 = any(t is not None and t.dtype == torch.float32 for t in tensors)
    return "ieee" if fp32 else "tf32"


def num_splits(num_rows: int, vocab_size: int, device: torch.device) -> int:
    if C.FORCE_SPLITS is not None:
        return max(1, int(C.FORCE_SPLITS))
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    row_tiles = triton.cdiv(num_rows, 128)
    wanted = triton.cdiv(2 * sms, row_tiles)
    return max(1, min(wanted, triton.cdiv(vocab_size, 4096)))


class SavedRow(enum.IntEnum):
    """The rows of the [6, N] fp32 statistics the backward reads (the dlogits kernel's constants)."""

    LSE_S = 0   # student log-normaliser
    LSE_T = 1   # teacher log-normaliser
    GAP = 2     # lse_t - lse_s in the accurate form
    AUX = 3     # KL for reverse, KL(p_s || m) for JSD
    MAX_S = 4   # the student's largest logit (scales the filter's threshold)
    MIN_T = 5   # the teacher's smallest logit (bounds -log p_t for the filter's teacher skip)


def _merge_lse(parts: torch.Tensor, m_row: int, l_row: int):
    """(lse, weights e^(m_i - M), merged l) from the splits' (m, l)."""
    m = parts[m_row]
    mx = m.amax(0)
    w = torch.exp(m - mx)  # an empty split has m = -inf: weight 0
    l = (parts[l_row] * w).sum(0)
    return mx + torch.log(l), w, l


def _accurate_gap(direct: torch.Tensor, c: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    near = torch.log1p(c / l)
    return torch.where((direct.abs() < SMALL_GAP) & torch.isfinite(near), near, direct)


def _launch(*, vocab_size: int, student, teacher, degraded=None, targets=None, temperature: float, cross: int,
            beta: float = 0.5, lse: Optional[torch.Tensor] = None, min_t: bool = False, visual: bool = False,
            student_transform: LogitTransform = IDENTITY, teacher_transform: LogitTransform = IDENTITY) -> torch.Tensor:
    """The statistics kernel over all rows: the vocabulary splits' partial statistics [NUM_STATS, S, N]."""
    first = (student or teacher)[0]
    n, device = first.shape[0], first.device
    sh, sw = student if student else (first, first)
    th, tw = teacher if teacher else (first, first)
    td = degraded if degraded is not None else th
    splits = num_splits(n, vocab_size, device)
    fill = float("nan") if C.POISON else 0.0
    parts = torch.full((NUM_STATS, splits, n), fill, dtype=torch.float32, device=device)
    y = targets if targets is not None else parts
    lse_in = lse.contiguous() if lse is not None else parts
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), splits)  # noqa: E731
    beta = min(max(beta, 1e-12), 1.0 - 1e-12)
    _stats_kernel[grid](
        sh_ptr=sh, sw_ptr=sw, th_ptr=th, td_ptr=td, tw_ptr=tw, y_ptr=y, lse_ptr=lse_in, out_ptr=parts, N=n,
        V=vocab_size, Ds=sh.shape[1], Dt=th.shape[1], stride_sh=sh.stride(0), stride_sw=sw.stride(0),
        stride_th=th.stride(0), stride_tw=tw.stride(0), log_beta=math.log(beta), log_1m_beta=math.log1p(-beta),
        HAS_S=student is not None, HAS_T=teacher is not None, HAS_D=degraded is not None,
        HAS_Y=targets is not None, CROSS=cross, MIN_T=min_t, VISUAL=visual, CAST_F32=C.INTERPRET,
        PRECISION=dot_precision(sh if student else None, th if teacher else None),
        **head_args("s", student_transform, temperature, parts),
        **head_args("t", teacher_transform, temperature, parts))
    return parts


def _kl_from_sums(parts, a_row: int, c_row: int, w, l, direct):
    """(KL, accurate normaliser gap) from a view pair's cross sums ``a``, ``c``, merged over the
    splits with the weights ``w`` and sum ``l`` of the view the expectation is under."""
    gap = _accurate_gap(direct, (parts[c_row] * w).sum(0), l)
    return (parts[a_row] * w).sum(0) / l + gap, gap


def row_stats(*, vocab_size: int, student=None, teacher=None, degraded=None, targets=None,
              temperature: float = 1.0, cross: int = DIV_NONE.value, teacher_min: bool = False,
              visual: bool = False, student_transform: LogitTransform = IDENTITY,
              teacher_transform: LogitTransform = IDENTITY):
    """Launch the statistics kernel over all rows and merge the vocabulary splits.

    ``student``/``teacher`` are (hidden, weight) pairs already passed through :func:`operands`,
    their transforms through :func:`transform_operand`; ``degraded`` is the teacher's second hidden
    view (read through the teacher's head and transform). ``teacher_min`` (DIV_REVERSE): also find the
    teacher's smallest logit (the gradient filter's bound). ``visual`` (with ``degraded``): also
    KL(p_t || p_d) as ``visual_divergence``. Returns (``base.RowStats``: the KL for
    DIV_REVERSE/FORWARD, the student's entropy, log-probs with ``targets``; the
    [len(SavedRow), N] fp32 rows the backward reads, with the KL as AUX and absent rows zero).
    """
    min_t = teacher_min and cross == DIV_REVERSE.value
    parts = _launch(vocab_size=vocab_size, student=student, teacher=teacher, degraded=degraded, targets=targets,
                    temperature=temperature, cross=cross, min_t=min_t, visual=visual,
                    student_transform=student_transform, teacher_transform=teacher_transform)
    out, saved = RowStats(), parts.new_zeros(len(SavedRow), parts.shape[2])
    # a missing min_t reads as -inf: an infinite bound, so the teacher skip drops nothing
    saved[SavedRow.MIN_T] = parts[LO_T].amin(0) if min_t else -math.inf
    if student is not None:
        lse_s, w_s, l_s = _merge_lse(parts, M_S, L_S)
        saved[SavedRow.LSE_S], saved[SavedRow.MAX_S] = lse_s, parts[M_S].amax(0)
        out.student_entropy = lse_s - (parts[B_S] * w_s).sum(0) / l_s
        if targets is not None:
            out.student_logprob = parts[Y_S].sum(0) - lse_s
    if teacher is not None:
        lse_t, w_t, l_t = _merge_lse(parts, M_T, L_T)
        saved[SavedRow.LSE_T] = lse_t
        if targets is not None:
            out.teacher_logprob = parts[Y_T].sum(0) - lse_t
    if degraded is not None:
        lse_d = _merge_lse(parts, M_D, L_D)[0]
        if targets is not None:
            out.degraded_logprob = parts[Y_D].sum(0) - lse_d
        if visual:
            out.visual_divergence = _kl_from_sums(parts, A_D, C_D, w_t, l_t, lse_d - lse_t)[0]
    if cross == DIV_REVERSE.value:
        out.kl, saved[SavedRow.GAP] = _kl_from_sums(parts, A_X, C_X, w_s, l_s, lse_t - lse_s)
    elif cross == DIV_FORWARD.value:
        out.kl = _kl_from_sums(parts, A_X, C_X, w_t, l_t, lse_s - lse_t)[0]
    if out.kl is not None:
        saved[SavedRow.AUX] = out.kl
    return out, saved


def jsd_sums(*, vocab_size: int, student, teacher, lse: torch.Tensor, temperature: float, beta: float,
             student_transform: LogitTransform = IDENTITY, teacher_transform: LogitTransform = IDENTITY):
    """The second JSD pass, given ``lse`` [2, N] (lse_s, lse_t): (sum p_t (log p_t - log m),
    sum p_s (log p_s - log m))."""
    parts = _launch(vocab_size=vocab_size, student=student, teacher=teacher, temperature=temperature,
                    cross=DIV_JSD.value, beta=beta, lse=lse, student_transform=student_transform,
                    teacher_transform=teacher_transform)
    return parts[A_X].sum(0), parts[C_X].sum(0)
