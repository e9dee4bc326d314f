"""Every implementation of the benchmark tasks, ours and the peers', behind one interface.

A task function takes ``vaopd_kernels.testing.Inputs`` and returns ``Outputs``; for the forward + backward
tasks it also calls ``backward()``, leaving the gradients on ``inputs.student_hidden.grad`` and
``inputs.student_weight.grad``. Tasks (problem.TASKS):

- ``va_opd``: VA-OPD loss with the pixelated pass, forward + backward.
- ``kl``: mean per-token reverse KL, forward + backward (ours through the scalar OPD loss;
  ``vaopd-<backend>-token-kl`` rows time the per-token ``linear_kl(...).mean()`` instead).
- ``va``: visual advantage (target log-probs of both teacher views), forward only.
- ``jsd``: mean per-token generalized JSD (beta = ``problem.JSD_BETA``, TRL's convention), forward + backward.

Peers that are missing or cannot run on the device are listed with a reason, never dropped.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import vaopd_kernels
from bench.problem import JSD_BETA
from vaopd_kernels.testing import Inputs


@dataclass
class Outputs:
    loss: Optional[torch.Tensor] = None  # scalar
    kl: Optional[torch.Tensor] = None    # [N] per-token reverse KL
    va: Optional[torch.Tensor] = None    # [N] visual advantage


@dataclass
class Impl:
    name: str
    description: str
    tasks: Dict[str, Callable[[Inputs], Outputs]]
    # task -> why this implementation does not offer it
    not_offered: Dict[str, str] = field(default_factory=dict)
    # () -> None when it can run on the device type, else a reason
    unavailable: Callable[[str], Optional[str]] = lambda device_type: None
    gpu_only: bool = False
    # a variant row of another implementation: tables show it only for the tasks it offers
    variant: bool = False


def _va_opd_from_token_values(x: Inputs, kl: torch.Tensor, va: torch.Tensor) -> torch.Tensor:
    """The (backend independent) VA-OPD reduction shared by every peer that yields KL and VA."""
    return vaopd_kernels.va_opd_objective(kl, va, x.cu_seqlens, x.prompt_ids).loss


# ----------------------------------------------------------------------------- naive full logits
def _trl_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """TRL GKDTrainer.generalized_jsd_loss with beta = 1 (reverse KL), reduction="none", summed
    over the vocabulary: full [N, V] log-softmaxes of both models."""
    student_log_probs = F.log_softmax(student_logits, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits, dim=-1)
    return F.kl_div(teacher_log_probs, student_log_probs, reduction="none", log_target=True).sum(-1)


def _naive_logits(hidden, weight):
    return (hidden @ weight.T).float()  # HF models upcast the LM-head output to float32


def _naive_va(x: Inputs, teacher_log_probs: Optional[torch.Tensor] = None) -> torch.Tensor:
    with torch.no_grad():
        if teacher_log_probs is None:
            teacher_log_probs = F.log_softmax(_naive_logits(x.teacher_hidden, x.teacher_weight), dim=-1)
        lp = teacher_log_probs.gather(-1, x.targets[:, None]).squeeze(-1)
        degraded = F.log_softmax(_naive_logits(x.teacher_hidden_degraded, x.teacher_weight), dim=-1)
        lp_d = degraded.gather(-1, x.targets[:, None]).squeeze(-1)
        return (lp - lp_d).clamp_min(0.0)


def naive_va_opd(x: Inputs) -> Outputs:
    with torch.no_grad():
        teacher_logits = _naive_logits(x.teacher_hidden, x.teacher_weight)
        va = _naive_va(x, F.log_softmax(teacher_logits, dim=-1))
    kl = _trl_reverse_kl(_naive_logits(x.student_hidden, x.student_weight), teacher_logits)
    loss = _va_opd_from_token_values(x, kl, va)
    loss.backward()
    return Outputs(loss.detach(), kl.detach(), va)


def _naive_mean(x: Inputs, divergence) -> Outputs:
    """Full logits of both models, ``divergence(student_logits, teacher_logits)`` per token, its mean
    and the mean's backward."""
    with torch.no_grad():
        teacher_logits = _naive_logits(x.teacher_hidden, x.teacher_weight)
    per_token = divergence(_naive_logits(x.student_hidden, x.student_weight), teacher_logits)
    loss = per_token.mean()
    loss.backward()
    return Outputs(loss.detach(), per_token.detach())


def naive_kl(x: Inputs) -> Outputs:
    return _naive_mean(x, _trl_reverse_kl)


def naive_va(x: Inputs) -> Outputs:
    return Outputs(va=_naive_va(x))


# ----------------------------------------------------------------------------- the authors' approach
AUTHORS_CHUNK_ROWS = 128


def _authors_chunk_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    logp_s = F.log_softmax(student_logits.float(), dim=-1)
    logp_t = F.log_softmax(teacher_logits.float(), dim=-1)
    return (logp_s.exp() * (logp_s - logp_t)).sum(-1)


def _authors_logprob_chunks(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    out = []
    for start in range(0, logits.shape[0], AUTHORS_CHUNK_ROWS):
        rows = slice(start, start + AUTHORS_CHUNK_ROWS)
        chunk = logits[rows].float()
        out.append(chunk.gather(-1, targets[rows, None]).squeeze(-1) - torch.logsumexp(chunk, dim=-1))
    return torch.cat(out)


def _authors_kl(x: Inputs, teacher_logits: torch.Tensor) -> torch.Tensor:
    # Response logits materialized in the model dtype (bf16 in training), KL in fp32 chunks of
    # 128 rows; checkpointing drops each chunk's fp32 temporaries and recomputes them in backward.
    # split (not slicing) so backward concatenates the chunk gradients once.
    student_logits = x.student_hidden @ x.student_weight.T
    return torch.cat([
        checkpoint(_authors_chunk_kl, s, t, use_reentrant=False)
        for s, t in zip(student_logits.split(AUTHORS_CHUNK_ROWS), teacher_logits.split(AUTHORS_CHUNK_ROWS))
    ])


def _authors_va(x: Inputs, teacher_logits: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        lp = _authors_logprob_chunks(teacher_logits, x.targets)
        lp_d = _authors_logprob_chunks(x.teacher_hidden_degraded @ x.teacher_weight.T, x.targets)
        return (lp - lp_d).clamp_min(0.0)


def authors_va_opd(x: Inputs) -> Outputs:
    with torch.no_grad():
        teacher_logits = x.teacher_hidden @ x.teacher_weight.T
    va = _authors_va(x, teacher_logits)
    kl = _authors_kl(x, teacher_logits)
    loss = _va_opd_from_token_values(x, kl, va)
    loss.backward()
    return Outputs(loss.detach(), kl.detach(), va)


def authors_kl(x: Inputs) -> Outputs:
    with torch.no_grad():
        teacher_logits = x.teacher_hidden @ x.teacher_weight.T
    kl = _authors_kl(x, teacher_logits)
    loss = kl.mean()
    loss.backward()
    return Outputs(loss.detach(), kl.detach())


def authors_va(x: Inputs) -> Outputs:
    with torch.no_grad():
        return Outputs(va=_authors_va(x, x.teacher_hidden @ x.teacher_weight.T))


# ----------------------------------------------------------------------------- Liger-Kernel
def liger_chunked_kl(x: Inputs) -> Outputs:
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    # beta = 1 is reverse KL; the hard (CE) loss is switched off. Returns sum_n KL_n / N.
    loss_fn = LigerFusedLinearJSDLoss(beta=1.0, weight_hard_loss=0.0, weight_soft_loss=1.0)
    loss = loss_fn(x.student_hidden, x.student_weight, x.teacher_hidden, x.teacher_weight, x.targets)
    loss.backward()
    return Outputs(loss=loss.detach())


def liger_triton_kl(x: Inputs) -> Outputs:
    from liger_kernel.transformers import LigerFusedLinearJSD

    loss_fn = LigerFusedLinearJSD(jsd_beta=1.0)  # reverse KL, mean over tokens
    loss = loss_fn(x.student_hidden, x.student_weight, x.teacher_hidden, x.teacher_weight, None)
    loss.backward()
    return Outputs(loss=loss.detach())


# ----------------------------------------------------------------------------- Cut Cross-Entropy
def cce_va(x: Inputs) -> Outputs:
    from cut_cross_entropy import linear_cross_entropy

    with torch.no_grad():
        ce = linear_cross_entropy(x.teacher_hidden, x.teacher_weight, x.targets, reduction="none")
        ce_d = linear_cross_entropy(x.teacher_hidden_degraded, x.teacher_weight, x.targets, reduction="none")
        return Outputs(va=(ce_d.float() - ce.float()).clamp_min(0.0))  # lp - lp_d = ce_d - ce


# ----------------------------------------------------------------------------- TRL (and the jsd task)
def _trl_chunked(x: Inputs, beta: float) -> Outputs:
    """TRL 1.16's ChunkedDivergenceFunction (what trl.DistillationTrainer runs): beta = 1 reverse KL,
    0 < beta < 1 generalized JSD; mean over tokens."""
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    divergence, _entropy = ChunkedDivergenceFunction.apply(
        x.student_hidden, x.student_weight, None, x.teacher_hidden, x.teacher_weight, None, beta)
    loss = divergence.mean()
    loss.backward()
    return Outputs(loss.detach(), divergence.detach())


def trl_kl(x: Inputs) -> Outputs:
    return _trl_chunked(x, 1.0)


def trl_jsd(x: Inputs) -> Outputs:
    return _trl_chunked(x, JSD_BETA)


def _naive_generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """TRL GKDTrainer.generalized_jsd_loss, reduction="none", summed over the vocabulary:
    beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s."""
    log_ps = F.log_softmax(student_logits, dim=-1)
    log_pt = F.log_softmax(teacher_logits, dim=-1)
    log_m = torch.logaddexp(log_ps + math.log(1 - JSD_BETA), log_pt + math.log(JSD_BETA))
    kl_teacher = F.kl_div(log_m, log_pt, reduction="none", log_target=True).sum(-1)
    kl_student = F.kl_div(log_m, log_ps, reduction="none", log_target=True).sum(-1)
    return JSD_BETA * kl_teacher + (1 - JSD_BETA) * kl_student


def naive_jsd(x: Inputs) -> Outputs:
    return _naive_mean(x, _naive_generalized_jsd)


def _ours_jsd(backend: str) -> Callable[[Inputs], Outputs]:
    def jsd(x: Inputs) -> Outputs:
        token_jsd = vaopd_kernels.linear_kl(x.student_hidden, x.student_weight, x.teacher_hidden, x.teacher_weight,
                                            divergence="jsd", beta=JSD_BETA, backend=backend)
        loss = token_jsd.mean()
        loss.backward()
        return Outputs(loss.detach(), token_jsd.detach())
    return jsd


def _trl_reason(device_type: str) -> Optional[str]:
    if importlib.util.find_spec("trl") is None:
        return "not installed (pip install trl, or the vaopd[trl] extra)"
    return None


def _trl_impl() -> Impl:
    return Impl("trl", "TRL 1.16 trl.kernels.chunked_divergence (DistillationTrainer's loss; 4096 x 32768 fp32 "
                       "tiles, Triton epilogues on CUDA, torch elsewhere); beta = 1 for kl, 0.5 for jsd",
                {"kl": trl_kl, "jsd": trl_jsd},
                {"va_opd": "divergence only: no per-token weights, no visual advantage",
                 "va": "computes no target log-probs"}, _trl_reason)


def _add_jsd_tasks(impls: List[Impl]) -> None:
    """The jsd task for the full-logit baseline and our backends (the peers without it say why)."""
    for impl in impls:
        if impl.name == "naive":
            impl.tasks["jsd"] = naive_jsd
        elif impl.name.startswith("vaopd-") and not impl.variant:
            impl.tasks["jsd"] = _ours_jsd(impl.name[len("vaopd-"):])
        elif impl.name == "authors":
            impl.not_offered["jsd"] = "the paper's recipe is reverse KL only"
        elif "jsd" not in impl.tasks:
            impl.not_offered.setdefault("jsd", "not wired for the jsd task")


# ----------------------------------------------------------------------------- our backends
def _options(options) -> Dict:
    """``options=`` (a ``vaopd_kernels.KernelOptions``) only when a caller chose one: the default
    call stays the plain call users make."""
    return {} if options is None else {"options": options}


def va_opd_with_pixelated_view(x: Inputs, backend: str, options=None) -> Outputs:
    """The va_opd task: ``va_opd_loss`` with the pixelated teacher view, forward + backward."""
    res = vaopd_kernels.va_opd_loss(x.student_hidden, x.student_weight, x.teacher_hidden, x.teacher_weight,
                                    x.targets, x.cu_seqlens, x.prompt_ids,
                                    teacher_hidden_degraded=x.teacher_hidden_degraded, backend=backend,
                                    **_options(options))
    res.loss.backward()
    return Outputs(res.loss.detach(), res.kl.detach(), res.visual_advantage)


def opd_mean_kl(x: Inputs, backend: str, options=None) -> Outputs:
    """The KL-only task through the scalar entry point users call for OPD: ``va_opd_loss`` without
    the pixelated view (standard OPD, reverse KL) over the batch as ONE rollout, so the loss is
    mean_n KL_n, the value Liger-Kernel returns. Knowing the token weights up front, the chunked
    backends form the gradient inside the forward (GEMM work 2NV(3Ds + Dt), as Liger)."""
    whole_batch = torch.tensor([0, x.student_hidden.shape[0]], device=x.targets.device)
    res = vaopd_kernels.va_opd_loss(x.student_hidden, x.student_weight, x.teacher_hidden, x.teacher_weight,
                                    x.targets, whole_batch, whole_batch[:1], backend=backend, **_options(options))
    res.loss.backward()
    return Outputs(res.loss.detach(), res.kl.detach())


def token_mean_kl(x: Inputs, backend: str, options=None) -> Outputs:
    """The KL-only task through the per-token ``linear_kl(...).mean()``: the per-token output leaves
    the row weights unknown until backward, so every backend recomputes logits there
    (2NV(4Ds + 2Dt)). Kept as a second row to show what the scalar path saves."""
    token_kl = vaopd_kernels.linear_kl(x.student_hidden, x.student_weight, x.teacher_hidden, x.teacher_weight,
                                       backend=backend, **_options(options))
    loss = token_kl.mean()
    loss.backward()
    return Outputs(loss.detach(), token_kl.detach())


def _ours(backend: str) -> Dict[str, Callable[[Inputs], Outputs]]:
    def va_opd(x: Inputs) -> Outputs:
        return va_opd_with_pixelated_view(x, backend)

    def kl(x: Inputs) -> Outputs:
        return opd_mean_kl(x, backend)

    def va(x: Inputs) -> Outputs:
        return Outputs(va=vaopd_kernels.visual_advantage(x.teacher_hidden, x.teacher_hidden_degraded,
                                                         x.teacher_weight, x.targets, backend=backend))

    return {"va_opd": va_opd, "kl": kl, "va": va}


def _package_reason(module: str, pip_name: str) -> Callable[[str], Optional[str]]:
    def reason(device_type: str) -> Optional[str]:
        if importlib.util.find_spec(module) is None:
            return f"not installed (pip install {pip_name})"
        if device_type != "cuda":
            return "GPU only (Triton kernels); no CUDA device in this run"
        return None
    return reason


def _backend_reason(backend: str) -> Callable[[str], Optional[str]]:
    def reason(device_type: str) -> Optional[str]:
        from vaopd_kernels.backends import backend_unavailable_reason

        why = backend_unavailable_reason(backend)
        if why is not None:
            return why
        if backend in GPU_BACKENDS and device_type != "cuda":
            return "GPU kernel backend; not timed on a CPU (its interpreter mode is for tests only)"
        return None
    return reason


# Backends whose kernels are GPU-only (TRITON_INTERPRET makes triton "run" on a CPU, too slowly to time).
GPU_BACKENDS = ("triton", "cuda")
# Backend names we know of even when this checkout/machine lacks them, so they get a row.
KNOWN_BACKENDS = ("torch", "triton", "cuda")

# Our per-token KL row: same backends, the kl task through linear_kl(...).mean() (see token_mean_kl).
TOKEN_KL_SUFFIX = "-token-kl"
_TOKEN_KL_ONLY = "the per-token KL row of the kl task; the backend's own row has this task"
_NO_KL = "cross-entropy only: no teacher distribution, so no KL"
_LIGER_NO = {"va_opd": "returns a mean KL only: no per-token weights, no visual advantage",
             "va": "computes no target log-probs"}


def build_impls() -> Dict[str, Impl]:
    """All implementations, peers first; our backends discovered via available_backends()."""
    impls: List[Impl] = [
        Impl("naive", "PyTorch, full fp32 [N, V] logits of every view (TRL generalized_jsd_loss, beta=1)",
             {"va_opd": naive_va_opd, "kl": naive_kl, "va": naive_va}),
        Impl("authors", f"paper authors' recipe: logits materialized in the model dtype, KL in fp32 chunks of "
                        f"{AUTHORS_CHUNK_ROWS} rows with activation checkpointing",
             {"va_opd": authors_va_opd, "kl": authors_kl, "va": authors_va}),
        Impl("liger", "Liger-Kernel LigerFusedLinearJSDLoss(beta=1) (chunked, torch.compile)",
             {"kl": liger_chunked_kl}, dict(_LIGER_NO), _package_reason("liger_kernel", "liger-kernel"), True),
        Impl("liger-triton", "Liger-Kernel LigerFusedLinearJSD(jsd_beta=1) (Triton JSD kernel)",
             {"kl": liger_triton_kl}, dict(_LIGER_NO), _package_reason("liger_kernel", "liger-kernel"), True),
        Impl("cce", "Cut Cross-Entropy linear_cross_entropy(reduction='none') on both teacher views",
             {"va": cce_va}, {"va_opd": _NO_KL, "kl": _NO_KL},
             _package_reason("cut_cross_entropy", "cut-cross-entropy"), True),
    ]
    names = list(KNOWN_BACKENDS)
    names += [b for b in vaopd_kernels.available_backends() if b not in names]
    for backend in names:
        impls.append(Impl(f"vaopd-{backend}", f"vaopd_kernels backend={backend!r} (kl: the scalar OPD loss)",
                          _ours(backend), unavailable=_backend_reason(backend), gpu_only=backend in GPU_BACKENDS))
        impls.append(Impl(f"vaopd-{backend}{TOKEN_KL_SUFFIX}",
                          f"vaopd_kernels backend={backend!r}, kl as linear_kl(...).mean() (per-token output)",
                          {"kl": lambda x, backend=backend: token_mean_kl(x, backend)},
                          {t: _TOKEN_KL_ONLY for t in ("va_opd", "va", "jsd")},
                          unavailable=_backend_reason(backend), gpu_only=backend in GPU_BACKENDS, variant=True))
    impls.insert(len(impls) - 2 * len(names), _trl_impl())  # a peer: listed before our backends
    _add_jsd_tasks(impls)
    return {impl.name: impl for impl in impls}


# The implementation whose results the others are cross-checked against (loss, weight gradient).
CROSS_CHECK_ORDER = ("naive", "authors", "vaopd-reference", "vaopd-torch")
