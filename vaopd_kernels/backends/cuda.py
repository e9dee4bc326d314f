"""The "cuda" backend: chunked cuBLAS GEMMs + hand-written CUDA row-statistics kernels (``csrc/``).

``scan``, per chunk of token rows: each view's raw logits ``r = W[:V] h`` from cuBLAS (fp32 output
for bf16/fp16 operands) into one reusable fp32 (fp64 for float64 inputs) buffer per view, sized by
``KernelOptions.chunk_budget_bytes`` (2 GiB for all views by default); one kernel pass for the
statistics that, given row weights, writes ``row_grad / T * dD/dr`` in place over the student
logits (packed bf16/fp16 for half-precision heads); then the GEMMs for d(hidden) and d(head) and the
column sum for d(bias).
A head's logit transform (bias, scale, soft-cap) is applied by the kernels when they read the chunk's logits.
``gradients`` runs it again for other row weights.

Loading: an installed ``vaopd_kernels._cuda_ext`` (built by setup.py), else a JIT build of
``csrc/`` under ``~/.cache/vaopd`` (``VAOPD_CUDA_BUILD_DIR``; architectures ``VAOPD_CUDA_ARCH``,
e.g. ``"80;90a"``), done the first time the backend runs on a CUDA device.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional

import torch

from vaopd_kernels import environment
from vaopd_kernels.backends._gemm import addmm_into, mm_into
from vaopd_kernels.backends.base import Divergence, LogitTransform, RowStats, compute_dtype
from vaopd_kernels.results import Coefficients

DEFAULT_CHUNK_BUDGET_BYTES = 2 << 30
_GEMM_ROW_TILE = 128
# d(head) sums over row chunks. KernelOptions.head_grad "fp32" (default): in one fp32 [V, Ds]
# buffer, exact (1.2 GiB at V = 151,936, Ds = 2048). "native": in the head's own bf16/fp16, each
# chunk's GEMM accumulating in fp32 inside cuBLAS and rounding once into the sum: no buffer beyond
# the chunks, one half-precision rounding per chunk (error measured in tests/kernels/test_cuda_backend.py).
_HALF = (torch.bfloat16, torch.float16)
_GRAD_FORMAT = {None: 0, torch.bfloat16: 1, torch.float16: 2}
FUSES_VIEWS = False

_CSRC = Path(__file__).resolve().parents[2] / "csrc"
_SOURCES = ("vaopd_kernels.cu", "objective.cu", "bindings.cpp")
_EXT_NAME = "vaopd_cuda_ext"

_lock = threading.Lock()
_ops = None                      # object with view_stats / divergence / logprob_grad
_load_error: Optional[str] = None
BUILD_INFO: Dict[str, object] = {}   # how the extension was loaded (for benchmarks/reports)


def _rows_per_chunk(num_rows: int, vocab_size: int, num_views: int, dtype: torch.dtype,
                    budget_bytes: Optional[int] = None) -> int:
    per_row = vocab_size * torch.finfo(dtype).bits // 8 * max(1, num_views)
    rows = max(1, (budget_bytes or DEFAULT_CHUNK_BUDGET_BYTES) // per_row)
    if rows >= 2 * _GEMM_ROW_TILE:
        rows -= rows % _GEMM_ROW_TILE  # whole GEMM tiles where that costs little of the budget
    return max(1, min(num_rows, rows))


# ----------------------------------------------------------------------------- loading
def arch_flags() -> list:
    """nvcc -gencode flags for ``environment.cuda_archs`` on this machine's GPU."""
    return environment.gencode_flags(environment.cuda_archs(torch.cuda.get_device_capability()))


def _build_dir() -> Path:
    override = environment.cuda_build_dir()
    if override:
        return Path(override)
    tag = f"torch{torch.__version__}-cu{torch.version.cuda}".replace("+", "_")
    return Path(os.path.expanduser("~")) / ".cache" / "vaopd" / "cuda_ext" / tag


def jit_build(verbose: bool = False):
    """Compile csrc/ with torch.utils.cpp_extension.load (registers torch.ops.vaopd.*)."""
    from torch.utils.cpp_extension import load

    build_dir = _build_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    flags = arch_flags()
    start = time.perf_counter()
    load(name=_EXT_NAME, sources=[str(_CSRC / s) for s in _SOURCES],
         extra_cflags=["-O3"], extra_cuda_cflags=["-O3", "-lineinfo", *flags],
         extra_include_paths=[str(_CSRC)], build_directory=str(build_dir),
         is_python_module=False, verbose=verbose)
    BUILD_INFO.update(source="jit", build_dir=str(build_dir), arch_flags=flags,
                      seconds=round(time.perf_counter() - start, 2))


def _load_ops():
    """The ops namespace, building/loading the extension on first use (thread-safe)."""
    global _ops, _load_error
    if _ops is not None:
        return _ops
    with _lock:
        if _ops is not None:
            return _ops
        if _load_error is not None:
            raise RuntimeError(_load_error)
        try:
            try:
                import vaopd_kernels._cuda_ext  # noqa: F401  (registers the ops on import)
                BUILD_INFO.update(source="installed", module="vaopd_kernels._cuda_ext")
            except ImportError:
                jit_build(verbose=environment.cuda_verbose())
            _register_fakes()
            _ops = torch.ops.vaopd
        except Exception as exc:
            _load_error = f"the vaopd CUDA extension failed to build/load: {type(exc).__name__}: {exc}"
            raise RuntimeError(_load_error) from exc
    return _ops


def _register_fakes() -> None:
    """Shape-only implementations so the ops trace under torch.compile / FakeTensor."""
    def _fake_view_stats(views, targets, inv_temperature, want_entropy, bias=None, scale=1.0, softcap=0.0):
        v = views[0]
        n, rows = len(views), v.shape[0]
        return (v.new_empty(n, rows), v.new_empty((n, rows) if targets is not None else (0, 0)),
                v.new_empty((n, rows) if want_entropy else (0, 0)))

    def _fake_divergence(student, teacher, targets, row_grad, divergence, beta, inv_temperature, grad_format,
                         student_bias=None, student_scale=1.0, student_softcap=0.0, teacher_bias=None,
                         teacher_scale=1.0, teacher_softcap=0.0):
        rows = student.shape[0]
        lp = (rows,) if targets is not None else (0,)
        return (student.new_empty(rows), student.new_empty(rows), student.new_empty(lp),
                student.new_empty(rows), student.new_empty(lp))

    def _fake_logprob_grad(student, lse, targets, row_grad, inv_temperature, grad_format, bias=None, scale=1.0,
                           softcap=0.0):
        return None

    def _fake_va_opd_coefficients(va, cu_seqlens, prompt_ids, high_fraction, high_weight, va_temperature, eps,
                                  num_prompts):
        return va.new_empty(va.shape), va.new_empty(prompt_ids.shape), va.new_empty(va.shape, dtype=torch.bool)

    for name, fn in (("vaopd::view_stats", _fake_view_stats), ("vaopd::divergence", _fake_divergence),
                     ("vaopd::logprob_grad", _fake_logprob_grad),
                     ("vaopd::va_opd_coefficients", _fake_va_opd_coefficients)):
        try:
            torch.library.register_fake(name, fn)
        except RuntimeError as exc:  # already registered (module reloaded)
            if "already" not in str(exc):
                raise


def _set_ops_for_testing(ops) -> None:
    """Substitute the kernel ops (tests run the orchestration on CPU with a torch emulation)."""
    global _ops, _load_error
    _ops, _load_error = ops, None


def unavailable_reason() -> Optional[str]:
    if _ops is not None:
        return None
    if torch.version.cuda is None:
        return "torch is a CPU-only build (torch.version.cuda is None)"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if _load_error is not None:
        return _load_error
    if importlib.util.find_spec("vaopd_kernels._cuda_ext") is not None:
        return None
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception:  # pragma: no cover - broken torch install
        CUDA_HOME = None
    if CUDA_HOME is None:
        return "extension not built (vaopd_kernels._cuda_ext missing) and no CUDA toolkit for a JIT build"
    if not all((_CSRC / s).is_file() for s in _SOURCES):
        return f"extension not built and the csrc/ sources are missing under {_CSRC}"
    if shutil.which("ninja") is None:
        try:
            import ninja  # noqa: F401
        except ImportError:
            return "extension not built and ninja (needed for the JIT build) is missing"
    return None


def supports_device(device: torch.device) -> bool:
    return torch.device(device).type == "cuda"


class _Head:
    """One LM head restricted to the tokenizer support; GEMMs in the operands' dtype when both are
    bf16 (or both fp16) with fp32 results, else in the compute dtype. ``transform``: its logit
    transform as the kernels take it, (bias [V] in the compute dtype or None, scale, soft-cap or 0)."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, transform: LogitTransform, vocab_size: int,
                 cdtype: torch.dtype):
        same_half = hidden.dtype == weight.dtype and hidden.dtype in _HALF and cdtype == torch.float32
        self.op_dtype = hidden.dtype if same_half else cdtype
        self.hidden = hidden.detach()
        self.weight = weight.detach()[:vocab_size].to(self.op_dtype)  # [V, D]
        # Cast once per scan (a [V] vector), so the kernels read the bias in their own type, unit-strided.
        bias = transform.bias
        bias = bias.detach()[:vocab_size].to(cdtype).contiguous() if bias is not None else None
        self.transform = (bias, transform.scale, transform.softcap or 0.0)

    def rows(self, rows: slice) -> torch.Tensor:
        return self.hidden[rows].to(self.op_dtype)


# ----------------------------------------------------------------------------- the scan
def _scan(views, *, options, divergence=None, beta: float = 0.5, row_grad: Optional[torch.Tensor] = None) -> RowStats:
    """One pass over row chunks: statistics, and the gradients of sum(row_grad * q) when given."""
    ops = _load_ops()
    cdtype = compute_dtype(*views.floats)
    vocab_size, student, targets = views.vocab_size, views.student, views.targets
    s_head = _Head(*student, views.student_transform, vocab_size, cdtype) if student else None
    t_head = _Head(*views.teacher, views.teacher_transform, vocab_size, cdtype) if views.teacher else None
    d_head = _Head(views.degraded, views.teacher[1], views.teacher_transform, vocab_size, cdtype) \
        if views.degraded is not None else None
    num_rows, device = (s_head or t_head).hidden.shape[0], (s_head or t_head).hidden.device
    inv_t = 1.0 / float(views.temperature)

    out = RowStats()
    new = lambda: torch.empty(num_rows, dtype=cdtype, device=device)  # noqa: E731
    if divergence is not None:
        out.kl = new()
    visual = views.visual_divergence and d_head is not None
    if visual:
        out.visual_divergence = new()
    if targets is not None:
        out.student_logprob, out.teacher_logprob, out.degraded_logprob = (
            new() if head else None for head in (s_head, t_head, d_head))
    want_entropy = s_head is not None and (targets is not None or views.student_entropy)
    if want_entropy:
        out.student_entropy = new()
    grad_half = None
    if row_grad is not None:
        grad_half = s_head.op_dtype if s_head.op_dtype in _HALF else None
        native = options.head_grad == "native" and grad_half is not None
        has_bias = s_head.transform[0] is not None
        out.grads = (torch.empty(num_rows, student[0].shape[1], dtype=cdtype, device=device),
                     torch.zeros(vocab_size, student[1].shape[1], dtype=grad_half if native else cdtype, device=device),
                     torch.zeros(vocab_size, dtype=cdtype, device=device) if has_bias else None)
        row_grad = row_grad.detach().to(device=device, dtype=cdtype).contiguous()
    grad_format = _GRAD_FORMAT[grad_half]

    heads = [h for h in (s_head, t_head, d_head) if h is not None]
    step = _rows_per_chunk(num_rows, vocab_size, len(heads), cdtype, options.chunk_budget_bytes)
    bufs = {h: torch.empty(step, vocab_size, dtype=cdtype, device=device) for h in heads}

    for start in range(0, num_rows, step):
        stop = min(start + step, num_rows)
        rows = slice(start, stop)
        y = targets[rows] if targets is not None else None
        rg = row_grad[rows] if row_grad is not None else None
        z = {h: buf[: stop - start] for h, buf in bufs.items()}
        for h, logits in z.items():
            mm_into(logits, h.rows(rows), h.weight.T)
        z_s, z_t, z_d = z.get(s_head), z.get(t_head), z.get(d_head)
        if divergence is not None:
            kl, _, lp_s, ent, lp_t = ops.divergence(z_s, z_t, y, rg, int(divergence), float(beta), inv_t,
                                                    grad_format, *s_head.transform, *t_head.transform)
            out.kl[rows] = kl
            if y is not None:
                out.student_logprob[rows], out.teacher_logprob[rows] = lp_s, lp_t
            if want_entropy:
                out.student_entropy[rows] = ent
        elif s_head is not None:
            lse, lp, ent = ops.view_stats([z_s], y, inv_t, want_entropy, *s_head.transform)
            if y is not None:
                out.student_logprob[rows] = lp[0]
            if want_entropy:
                out.student_entropy[rows] = ent[0]
            if rg is not None:
                ops.logprob_grad(z_s, lse[0], y, rg, inv_t, grad_format, *s_head.transform)
        elif y is not None:  # teacher-only pass: its views in one launch
            _, lp, _ = ops.view_stats([z for z in (z_t, z_d) if z is not None], y, 1.0, False, *t_head.transform)
            out.teacher_logprob[rows] = lp[0]
            if d_head is not None:
                out.degraded_logprob[rows] = lp[1]
        if d_head is not None and y is not None and (divergence is not None or s_head is not None):
            _, lp, _ = ops.view_stats([z_d], y, 1.0, False, *d_head.transform)
            out.degraded_logprob[rows] = lp[0]
        if visual:  # KL(p_t || p_d): the forward-KL kernel on logits already here, the degraded view as "student"
            out.visual_divergence[rows] = ops.divergence(z_d, z_t, None, None, int(Divergence.FORWARD), 0.5, 1.0,
                                                         0, *d_head.transform, *t_head.transform)[0]

        if rg is not None:
            # z_s now holds row_grad / T * dD/dr (in place); chain rule through r = W h, and the bias
            # enters as r + b: d(bias) is the column sum.
            grad_z = z_s if grad_half is None else z_s.view(grad_half)[:, :vocab_size]
            mm_into(out.grads[0][rows], grad_z, s_head.weight)
            addmm_into(out.grads[1], grad_z.T, s_head.rows(rows))
            if out.grads[2] is not None:
                out.grads[2].add_(grad_z.sum(0, dtype=cdtype))
    return out


def scan(views, *, divergence, beta, row_weight, options):
    with torch.no_grad():
        out = _scan(views, options=options, divergence=divergence, beta=beta, row_grad=row_weight)
    # the gradient pass reads no degraded view, and the targets for the log-prob only
    out.saved = (replace(views, degraded=None, targets=views.targets if divergence is None else None,
                         student_entropy=False), divergence, beta)
    return out


@torch.no_grad()
def gradients(saved, row_weight, *, options):
    views, divergence, beta = saved
    return _scan(views, options=options, divergence=divergence, beta=beta, row_grad=row_weight).grads


def va_opd_coefficients(visual_advantage, cu_seqlens, prompt_ids, *, high_fraction, high_weight, va_temperature, eps,
                        num_prompts):
    """The objective's coefficients from csrc/objective.cu: objective.va_opd_coefficients' results, on the GPU."""
    va = visual_advantage.detach().to(torch.float64).contiguous()
    token_weight, rollout_weight, high = _load_ops().va_opd_coefficients(
        va, cu_seqlens.long().contiguous(), prompt_ids.long().contiguous(), high_fraction, high_weight,
        va_temperature, eps, num_prompts or 0)
    return Coefficients(token_weight, rollout_weight, high, va)
