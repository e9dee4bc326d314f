"""The "triton" backend: fused Triton kernels, O(N) extra memory beyond one bounded workspace.

``scan`` launches the statistics kernel (stats.py; twice for JSD, whose mixture needs both
normalisers first) and, given row weights, the backward (backward.py, with matmul.py, over a
bounded vocabulary-chunk workspace); ``gradients`` is the backward. The heads' logit transforms
(bias, scale, soft-cap) are applied to each logit tile in the kernels, as is their derivative. No atomics: every output
element has one writer, so results are deterministic (with ``backward_gemm="cublas"``, as
deterministic as cuBLAS is on one GPU). Runs on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (set before import).
float64 inputs run in float32 (returned as float64 with fp32 accuracy).
"""
from __future__ import annotations

import torch
import triton  # noqa: F401  (ImportError here marks the backend unavailable)

from vaopd_kernels import environment
from vaopd_kernels.backends.base import Divergence
from vaopd_kernels.backends.triton import _codes, _config, backward, stats as kernel_stats
from vaopd_kernels.backends.triton.stats import SavedRow

FUSES_VIEWS = False  # two logit tiles live per kernel (three spill); KernelOptions.fused_views asks for it


def unavailable_reason():
    if _config.INTERPRET:
        return None
    if environment.triton_interpret():
        return "TRITON_INTERPRET=1 was set after the triton backend was imported"
    if not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 before import to run the kernels on the CPU)"
    return None


def supports_device(device) -> bool:
    device = torch.device(device)
    return device.type == "cpu" if _config.INTERPRET else device.type == "cuda"


@torch.no_grad()
def scan(views, *, divergence, beta, row_weight, options):
    transforms = dict(student_transform=kernel_stats.transform_operand(views.student_transform),
                      teacher_transform=kernel_stats.transform_operand(views.teacher_transform))
    if options.gradient_filter_eps is not None and views.student and not all(
            t.is_identity for t in (views.student_transform, views.teacher_transform)):
        # Refused, not approximated: the filter's drop bound is stated and tested for d loss / d logits
        # of plain heads; a transform rescales every entry by s (1 - (z / c)^2).
        raise ValueError("gradient_filter_eps: the triton backend's gradient filter supports plain LM heads "
                         "only (no bias, logit scale or soft-cap)")
    flat = kernel_stats.operands(*(t for pair in (views.student, views.teacher) if pair for t in pair), views.degraded)
    student = tuple(flat[:2]) if views.student else None
    teacher = tuple(flat[-3:-1]) if views.teacher else None
    common = dict(vocab_size=views.vocab_size, student=student, teacher=teacher, temperature=views.temperature,
                  **transforms)
    # JSD's first pass finds the normalisers only; jsd_sums is its second
    cross = _codes.code(None if divergence == Divergence.JSD else divergence)
    out, rows = kernel_stats.row_stats(degraded=flat[-1], targets=views.targets, cross=cross,
                                       teacher_min=options.gradient_filter_eps is not None,
                                       visual=views.visual_divergence and views.degraded is not None, **common)
    if divergence == Divergence.JSD:
        jsd_t, jsd_s = kernel_stats.jsd_sums(lse=rows[[SavedRow.LSE_S, SavedRow.LSE_T]], beta=beta, **common)
        out.kl, rows[SavedRow.AUX] = beta * jsd_t + (1.0 - beta) * jsd_s, jsd_s
    if student is not None:
        th, tw = teacher if teacher else (None, None)
        backward_args = dict(mode=divergence, sh=student[0], sw=student[1], th=th, tw=tw, rows=rows, beta=beta,
                             temperature=views.temperature, targets=views.targets, vocab_size=views.vocab_size,
                             precision=kernel_stats.dot_precision(student[0], th), **transforms)
        bias = views.student_transform.bias
        out.saved = (backward_args, views.student[0].dtype, views.student[1].dtype,
                     bias.dtype if bias is not None else None)
        if row_weight is not None:
            out.grads = gradients(out.saved, row_weight, options=options)
    return out


@torch.no_grad()
def gradients(saved, row_weight, *, options):
    """(d hidden, d head, d bias or None) in the inputs' dtypes: the fp32 accumulation is done, so a
    gradient formed during the forward call holds no fp32 [N, Ds] buffer until backward."""
    backward_args, hidden_dtype, head_dtype, bias_dtype = saved
    grad_h, grad_w, grad_b = backward.student_grads(row_grad=row_weight, options=options, **backward_args)
    return grad_h.to(hidden_dtype), grad_w.to(head_dtype), grad_b.to(bias_dtype) if grad_b is not None else None
