"""Public functions: the one place where user input is checked, then dispatched to a backend."""
from __future__ import annotations

import math
from typing import Optional

import torch

from vaopd_kernels import objective, ops
from vaopd_kernels.backends import check_backend_name, resolve_backend
from vaopd_kernels.backends._autograd import no_autocast
from vaopd_kernels.backends.base import Divergence
from vaopd_kernels.options import check_count, resolve_options
from vaopd_kernels.results import Coefficients, ObjectiveResult, VAKLResult, VAOPDLossResult, WeightedKLResult

# a tensor kind: (accepted dtypes, how an error message names them)
_FLOAT = ((torch.float32, torch.bfloat16, torch.float16, torch.float64), "dtype float32, bfloat16, float16 or float64")
_INT = ((torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8), "an integer dtype")
DIVERGENCES = tuple(d.name.lower() for d in Divergence)  # the public names: "reverse", "forward", "jsd"


# ----------------------------------------------------------------------------- validation
def _check_tensor(name: str, value, ndim: int, kind=_FLOAT) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(value.shape)}")
    if value.dtype not in kind[0]:
        raise TypeError(f"{name}: expected {kind[1]}, got {value.dtype}")


def _check_same_device(expected: Optional[torch.device] = None, **tensors) -> None:
    """All ``tensors`` on one device (``expected``, or the first one's)."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first = expected if expected is not None else next(iter(devices.values()))
    for name, device in devices.items():
        if device != first:
            raise ValueError(f"{name}: expected a tensor on {first} like the other inputs, got {device}")


def _check_pair(hidden_name, hidden, weight_name, weight) -> None:
    _check_tensor(hidden_name, hidden, 2)
    _check_tensor(weight_name, weight, 2)
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"{weight_name}: expected hidden size {hidden.shape[1]} (from {hidden_name}), "
                         f"got shape {tuple(weight.shape)}")


def _check_rows(expected: int, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.shape[0] != expected:
            raise ValueError(f"{name}: expected {expected} rows, got {t.shape[0]}")


def _resolve_vocab(vocab_size: Optional[int], **weights) -> int:
    rows = {name: w.shape[0] for name, w in weights.items()}
    if vocab_size is None:
        if len(set(rows.values())) > 1:
            raise ValueError(f"vocab_size: required when LM heads differ in rows ({rows}); "
                             "pass the tokenizer's vocabulary size")
        return next(iter(rows.values()))
    check_count("vocab_size", vocab_size)
    for name, n in rows.items():
        if vocab_size > n:
            raise ValueError(f"vocab_size: {vocab_size} exceeds the {n} rows of {name}")
    return vocab_size


def _check_targets(targets, num_rows: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    _check_tensor("targets", targets, 1, _INT)
    _check_same_device(device, targets=targets)
    _check_rows(num_rows, targets=targets)
    if targets.numel() and bool(torch.stack([targets.min() < 0, targets.max() >= vocab_size]).any()):  # one sync
        raise ValueError(f"targets: expected token ids in [0, {vocab_size}), got range "
                         f"[{int(targets.min())}, {int(targets.max())}]")
    return targets.long().contiguous()  # the fused kernels index it as a packed array; no copy if it is one


def _is_number(value) -> bool:
    """A real int or float; bools are not numbers here."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_positive(name: str, value) -> float:
    if not _is_number(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def _check_divergence(divergence: str, beta) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence: expected one of {DIVERGENCES}, got {divergence!r}")
    if divergence == "jsd" and not (_is_number(beta) and 0.0 < beta < 1.0):
        raise ValueError(f"beta: expected 0 < beta < 1 for divergence='jsd', got {beta!r}")


def _check_cu_seqlens(cu_seqlens, num_rows: int, device: torch.device) -> torch.Tensor:
    _check_tensor("cu_seqlens", cu_seqlens, 1, _INT)
    _check_same_device(device, cu_seqlens=cu_seqlens)
    if cu_seqlens.numel() < 2:
        raise ValueError("cu_seqlens: expected at least 2 entries [0, ..., N]")
    cu = cu_seqlens.long()
    bad_start, bad_end, not_increasing = torch.stack([cu[0] != 0, cu[-1] != num_rows,
                                                      (cu[1:] <= cu[:-1]).any()]).tolist()  # one sync
    if bad_start or bad_end:
        raise ValueError(f"cu_seqlens: expected to start at 0 and end at N={num_rows}, "
                         f"got {int(cu[0])} ... {int(cu[-1])}")
    if not_increasing:
        raise ValueError("cu_seqlens: expected strictly increasing offsets (no empty rollout)")
    return cu


def _check_rollouts(cu_seqlens, prompt_ids, num_rows: int, device: torch.device):
    cu = _check_cu_seqlens(cu_seqlens, num_rows, device)
    _check_tensor("prompt_ids", prompt_ids, 1, _INT)
    _check_same_device(device, prompt_ids=prompt_ids)
    if prompt_ids.numel() != cu.numel() - 1:
        raise ValueError(f"prompt_ids: expected one id per rollout ({cu.numel() - 1}), got {prompt_ids.numel()}")
    return cu, prompt_ids.long()


def _check_objective_options(high_fraction, high_weight, temperature, eps) -> None:
    if not _is_number(high_fraction) or not 0.0 < high_fraction <= 1.0:
        raise ValueError(f"high_fraction: expected 0 < high_fraction <= 1, got {high_fraction!r}")
    if not _is_number(high_weight) or not 0.0 <= high_weight <= 1.0:
        raise ValueError(f"high_weight: expected 0 <= high_weight <= 1, got {high_weight!r}")
    _check_positive("temperature", temperature)
    _check_positive("eps", eps)


def _va_opd_weighting(high_fraction, high_weight, temperature, eps, num_prompts, high_selection, rollout_weighting,
                      high_seed):
    """The objective's settings, checked, as ``weights(impl, va, cu_seqlens, prompt_ids) ->
    Coefficients``: a backend's own VA-OPD coefficients (the optional ``va_opd_weights`` hook), else
    the torch objective; an ablation always uses the torch objective."""
    _check_objective_options(high_fraction, high_weight, temperature, eps)
    if high_selection not in objective.HIGH_SELECTIONS:
        raise ValueError(f"high_selection: expected one of {objective.HIGH_SELECTIONS}, got {high_selection!r}")
    if rollout_weighting not in objective.ROLLOUT_WEIGHTINGS:
        raise ValueError(f"rollout_weighting: expected one of {objective.ROLLOUT_WEIGHTINGS}, got {rollout_weighting!r}")
    if high_selection == "random" and (isinstance(high_seed, bool) or not isinstance(high_seed, int) or high_seed < 0):
        raise ValueError(f"high_seed: high_selection='random' needs a seed, an int >= 0, got {high_seed!r}")
    settings = dict(high_fraction=float(high_fraction), high_weight=float(high_weight), temperature=float(temperature),
                    eps=float(eps), num_prompts=check_count("num_prompts", num_prompts))
    ablation = high_selection != "va" or rollout_weighting != "va"
    if ablation:  # the paper's recipe passes no ablation keywords (a backend's hook takes none)
        settings.update(high_selection=high_selection, rollout_weighting=rollout_weighting, high_seed=high_seed)

    def weights(impl, va, cu_seqlens, prompt_ids) -> Coefficients:
        fn = objective.va_opd_weights if ablation else getattr(impl, "va_opd_weights", objective.va_opd_weights)
        return fn(va, cu_seqlens, prompt_ids, **settings)
    return weights


def _finite(outputs, **inputs):
    """Return ``outputs`` if every tensor in them is finite; else raise, naming the inputs that hold
    NaN or inf (looked for only then). One host sync per call, on [N]-sized outputs."""
    present = [o for o in outputs if o is not None]
    if bool(torch.stack([torch.isfinite(o).all() for o in present]).all()):
        return outputs
    culprits = [name for name, t in inputs.items() if t is not None and not bool(torch.isfinite(t).all())]
    if culprits:
        raise ValueError(f"{', '.join(culprits)}: expected finite values, got NaN or inf")
    raise ValueError(f"the result is not finite although {', '.join(inputs)} are: logits overflowed")


def _check_degraded(name, degraded, like_name, like) -> None:
    _check_tensor(name, degraded, 2)
    if degraded.shape != like.shape:
        raise ValueError(f"{name}: expected shape {tuple(like.shape)} like {like_name}, got {tuple(degraded.shape)}")


def _check_student_teacher(sh, sw, th, tw, vocab_size, degraded=None, **extra_rows) -> int:
    """The student and teacher pairs (and the teacher's degraded view, if any) on one device, with
    one row count; returns the vocabulary size."""
    _check_pair("student_hidden", sh, "student_weight", sw)
    _check_pair("teacher_hidden", th, "teacher_weight", tw)
    _check_rows(sh.shape[0], teacher_hidden=th, teacher_hidden_degraded=degraded, **extra_rows)
    _check_same_device(student_hidden=sh, student_weight=sw, teacher_hidden=th, teacher_weight=tw,
                       teacher_hidden_degraded=degraded, **extra_rows)
    vocab = _resolve_vocab(vocab_size, student_weight=sw, teacher_weight=tw)
    if degraded is not None:
        _check_degraded("teacher_hidden_degraded", degraded, "teacher_hidden", th)
    return vocab


def _run(op, backend, options, device, *args, **kwargs):
    """``op`` on the backend for ``device``, with the checked kernel options and autocast off."""
    options = resolve_options(options)
    impl = resolve_backend(backend, device)
    with no_autocast(device):
        return op(impl, *args, options=options, **kwargs)


# ----------------------------------------------------------------------------- kernels
def linear_kl(student_hidden, student_weight, teacher_hidden, teacher_weight, *, divergence="reverse",
              beta=0.5, temperature=1.0, vocab_size=None, backend="auto", options=None) -> torch.Tensor:
    """Per-token divergence between student and teacher next-token distributions, [N] float32.

    Computed from hidden states and LM heads without materialising [N, V] logits (backend
    permitting). Differentiable w.r.t. ``student_hidden`` and ``student_weight`` only.
    """
    vocab = _check_student_teacher(student_hidden, student_weight, teacher_hidden, teacher_weight, vocab_size)
    _check_divergence(divergence, beta)
    temperature = _check_positive("temperature", temperature)
    kl = _run(ops.linear_kl, backend, options, student_hidden.device, student_hidden, student_weight,
              teacher_hidden.detach(), teacher_weight.detach(), divergence=divergence, beta=float(beta),
              temperature=temperature, vocab_size=vocab)
    return _finite([kl], student_hidden=student_hidden, student_weight=student_weight,
                   teacher_hidden=teacher_hidden, teacher_weight=teacher_weight)[0]


def linear_logprob(hidden, weight, targets, *, temperature=1.0, vocab_size=None, backend="auto",
                   options=None) -> torch.Tensor:
    """log softmax(weight[:V] @ hidden / T)[targets], [N] float32, differentiable."""
    _check_pair("hidden", hidden, "weight", weight)
    vocab = _resolve_vocab(vocab_size, weight=weight)
    _check_same_device(hidden=hidden, weight=weight)
    targets = _check_targets(targets, hidden.shape[0], vocab, hidden.device)
    temperature = _check_positive("temperature", temperature)
    lp = _run(ops.linear_logprob, backend, options, hidden.device, hidden, weight, targets, temperature=temperature,
              vocab_size=vocab)
    return _finite([lp], hidden=hidden, weight=weight)[0]


def visual_advantage(hidden_full, hidden_degraded, weight, targets, *, vocab_size=None, clamp=True,
                     backend="auto", options=None) -> torch.Tensor:
    """Teacher log-prob gap of ``targets`` between the original and degraded image, [N], detached.

    ``max(lp_full - lp_degraded, 0)``, or the signed gap with ``clamp=False``.
    """
    _check_pair("hidden_full", hidden_full, "weight", weight)
    _check_degraded("hidden_degraded", hidden_degraded, "hidden_full", hidden_full)
    vocab = _resolve_vocab(vocab_size, weight=weight)
    _check_same_device(hidden_full=hidden_full, hidden_degraded=hidden_degraded, weight=weight)
    targets = _check_targets(targets, hidden_full.shape[0], vocab, hidden_full.device)
    lp_full, lp_degraded = _run(ops.teacher_logprobs, backend, options, hidden_full.device, hidden_full.detach(),
                                weight.detach(), targets, hidden_degraded.detach(), vocab_size=vocab)
    gap = _finite([lp_full - lp_degraded], hidden_full=hidden_full, hidden_degraded=hidden_degraded,
                  weight=weight)[0]
    return gap.clamp_min(0.0) if clamp else gap


def _detached(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return t.detach() if t is not None else None


def va_kl(student_hidden, student_weight, teacher_hidden, teacher_weight, targets, *,
          teacher_hidden_degraded=None, vocab_size=None, backend="auto", options=None) -> VAKLResult:
    """Reverse KL (differentiable) plus VA and the per-token statistics, sharing the teacher pass."""
    vocab = _check_student_teacher(student_hidden, student_weight, teacher_hidden, teacher_weight, vocab_size,
                                   teacher_hidden_degraded)
    targets = _check_targets(targets, student_hidden.shape[0], vocab, student_hidden.device)
    result = _run(ops.va_kl, backend, options, student_hidden.device, student_hidden, student_weight,
                  teacher_hidden.detach(), teacher_weight.detach(), targets, _detached(teacher_hidden_degraded),
                  vocab_size=vocab)
    _finite([result.kl, result.visual_advantage, result.student_logprob, result.teacher_logprob],
            student_hidden=student_hidden, student_weight=student_weight, teacher_hidden=teacher_hidden,
            teacher_weight=teacher_weight, teacher_hidden_degraded=teacher_hidden_degraded)
    return result


# ----------------------------------------------------------------------------- objectives
def _va_opd_weights(visual_advantage, cu_seqlens, prompt_ids, weighting, backend, options) -> Coefficients:
    _check_tensor("visual_advantage", visual_advantage, 1)
    cu, pid = _check_rollouts(cu_seqlens, prompt_ids, visual_advantage.shape[0], visual_advantage.device)
    resolve_options(options)  # checked; the objective has no kernel options
    _finite([visual_advantage], visual_advantage=visual_advantage)
    return weighting(resolve_backend(backend, visual_advantage.device), visual_advantage, cu, pid)


def va_opd_coefficients(visual_advantage, cu_seqlens, prompt_ids, *, high_fraction=0.2, high_weight=0.5,
                        temperature=1.0, eps=1e-6, num_prompts=None, backend="auto", options=None, high_selection="va",
                        rollout_weighting="va", high_seed=None) -> Coefficients:
    """The VA-OPD objective's detached per-token coefficients from VA alone (they never depend on
    the KL): sibling-softmax rollout weights and a lambda / (1 - lambda) split between each
    rollout's top-VA tokens and the rest, over P prompts (``num_prompts`` overrides P, e.g. the
    global count under data parallelism). ``backend="cuda"`` computes them with the CUDA kernels;
    the others with the vectorised torch objective (same results). Micro-batching: the loss of a
    micro-batch is ``sum(token_weight[rows] * KL)``, and the micro-batches sum to the whole loss;
    :func:`objective_from_coefficients` gives the whole objective's result from the collected KL.

    Ablations: ``high_selection="random"`` makes each high group ceil(f T_r) uniformly random
    tokens drawn from ``high_seed`` (rollout weights still from VA); ``rollout_weighting="uniform"``
    weights sibling rollouts equally (1/K). Both use the torch objective whatever the backend."""
    weighting = _va_opd_weighting(high_fraction, high_weight, temperature, eps, num_prompts, high_selection,
                                  rollout_weighting, high_seed)
    return _va_opd_weights(visual_advantage, cu_seqlens, prompt_ids, weighting, backend, options)


def opd_coefficients(cu_seqlens, *, num_rollouts=None) -> Coefficients:
    """Standard OPD's per-token coefficients: 1 / (R * T_r) (``num_rollouts`` overrides R)."""
    _check_tensor("cu_seqlens", cu_seqlens, 1, _INT)
    num_rows = int(cu_seqlens[-1]) if cu_seqlens.numel() else 0
    cu = _check_cu_seqlens(cu_seqlens, num_rows, cu_seqlens.device)
    return objective.opd_weights(cu, num_rows, check_count("num_rollouts", num_rollouts))


def objective_from_coefficients(token_kl, coefficients: Coefficients) -> ObjectiveResult:
    """The objective's result (loss ``sum(token_weight * token_kl)`` and metrics) from coefficients
    already computed by :func:`va_opd_coefficients` or :func:`opd_coefficients`, e.g. the KL of
    every micro-batch collected after their backward passes; :func:`va_opd_objective` and
    :func:`opd_objective` are this after the coefficients."""
    _check_tensor("token_kl", token_kl, 1)
    _check_rows(coefficients.token_weight.shape[0], token_kl=token_kl)
    _check_same_device(coefficients.token_weight.device, token_kl=token_kl)
    _finite([token_kl], token_kl=token_kl)
    return objective.reduce_kl(token_kl, coefficients)


def va_opd_objective(token_kl, visual_advantage, cu_seqlens, prompt_ids, *, high_fraction=0.2, high_weight=0.5,
                     temperature=1.0, eps=1e-6, num_prompts=None, backend="auto", options=None, high_selection="va",
                     rollout_weighting="va", high_seed=None) -> ObjectiveResult:
    """VA-OPD loss from per-token KL and VA: ``sum(va_opd_coefficients(...).token_weight * token_kl)``,
    with the objective's metrics (ablation keywords as in :func:`va_opd_coefficients`)."""
    _check_tensor("token_kl", token_kl, 1)
    _check_tensor("visual_advantage", visual_advantage, 1)
    _check_rows(token_kl.shape[0], visual_advantage=visual_advantage)
    _check_same_device(token_kl=token_kl, visual_advantage=visual_advantage)
    coefficients = va_opd_coefficients(visual_advantage, cu_seqlens, prompt_ids, high_fraction=high_fraction,
                                       high_weight=high_weight, temperature=temperature, eps=eps,
                                       num_prompts=num_prompts, backend=backend, options=options,
                                       high_selection=high_selection, rollout_weighting=rollout_weighting,
                                       high_seed=high_seed)
    return objective_from_coefficients(token_kl, coefficients)


def opd_objective(token_kl, cu_seqlens, *, num_rollouts=None) -> ObjectiveResult:
    """Standard OPD loss: mean over rollouts of each rollout's mean token KL."""
    _check_tensor("token_kl", token_kl, 1)
    _check_cu_seqlens(cu_seqlens, token_kl.shape[0], token_kl.device)  # names cu_seqlens if it disagrees with N
    return objective_from_coefficients(token_kl, opd_coefficients(cu_seqlens, num_rollouts=num_rollouts))


def va_opd_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, targets, cu_seqlens, prompt_ids, *,
                teacher_hidden_degraded=None, vocab_size=None, high_fraction=0.2, high_weight=0.5, temperature=1.0,
                eps=1e-6, num_prompts=None, num_rollouts=None, backend="auto", options=None, high_selection="va",
                rollout_weighting="va", high_seed=None) -> VAOPDLossResult:
    """The full VA-OPD loss from hidden states (standard OPD when ``teacher_hidden_degraded`` is None).
    ``high_selection``, ``rollout_weighting``, ``high_seed``: the ablations of :func:`va_opd_objective`.

    The per-token coefficients depend on the teacher only, so the backend hands VA to the
    objective right after its statistics pass and forms the weighted gradients at once:
    backward only rescales them.
    """
    vocab = _check_student_teacher(student_hidden, student_weight, teacher_hidden, teacher_weight, vocab_size,
                                   teacher_hidden_degraded)
    targets = _check_targets(targets, student_hidden.shape[0], vocab, student_hidden.device)
    cu, pid = _check_rollouts(cu_seqlens, prompt_ids, student_hidden.shape[0], student_hidden.device)
    weighting = _va_opd_weighting(high_fraction, high_weight, temperature, eps, num_prompts, high_selection,
                                  rollout_weighting, high_seed)
    num_rollouts = check_count("num_rollouts", num_rollouts)
    options = resolve_options(options)
    impl = resolve_backend(backend, student_hidden.device)

    def token_weights(va):
        """Asked for by ops.weighted_kl once VA is known (None for OPD), before any gradient work."""
        if va is None:
            return objective.opd_weights(cu, student_hidden.shape[0], num_rollouts)
        return weighting(impl, va, cu, pid)  # a non-finite VA is reported after the scan (no host sync here)

    with no_autocast(student_hidden.device):
        loss, stats, weights = ops.weighted_kl(impl, student_hidden, student_weight, teacher_hidden.detach(),
                                               teacher_weight.detach(), targets, _detached(teacher_hidden_degraded),
                                               token_weights, vocab_size=vocab, options=options)
    _finite([loss, stats.kl, stats.visual_advantage, stats.student_logprob], student_hidden=student_hidden,
            student_weight=student_weight, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
            teacher_hidden_degraded=teacher_hidden_degraded)
    result = objective.reduce_kl(stats.kl, weights, loss=loss, extra_metrics={
        "entropy_mean": stats.student_entropy.double().mean(),
        "student_logprob_mean": stats.student_logprob.double().mean()})
    return VAOPDLossResult(**vars(result), kl=stats.kl, visual_advantage=stats.visual_advantage,
                           student_logprob=stats.student_logprob, teacher_logprob=stats.teacher_logprob,
                           student_entropy=stats.student_entropy)  # vars(result): loss, coefficients, metrics


def weighted_kl(student_hidden, student_weight, teacher_hidden, teacher_weight, token_weight, *, targets=None,
                vocab_size=None, backend="auto", options=None) -> WeightedKLResult:
    """``sum(token_weight * reverse KL)`` for per-token weights known in advance (e.g. from
    :func:`va_opd_coefficients` on the whole batch, applied to one micro-batch's rows), with the
    gradients formed during this call as in :func:`va_opd_loss`: backward only rescales them.

    ``token_weight`` [N] is a constant (never differentiated). The loss is differentiable w.r.t.
    ``student_hidden`` and ``student_weight``; the per-token KL comes back detached, and with
    ``targets`` the student's log-prob of them and its entropy (the metrics of :func:`va_opd_loss`).
    """
    _check_tensor("token_weight", token_weight, 1)
    vocab = _check_student_teacher(student_hidden, student_weight, teacher_hidden, teacher_weight, vocab_size,
                                   token_weight=token_weight)
    if targets is not None:
        targets = _check_targets(targets, student_hidden.shape[0], vocab, student_hidden.device)
    loss, stats = _run(ops.given_weights_kl, backend, options, student_hidden.device, student_hidden, student_weight,
                       teacher_hidden.detach(), teacher_weight.detach(), token_weight.detach(), targets,
                       vocab_size=vocab)
    _finite([loss, stats.kl, stats.student_logprob], student_hidden=student_hidden, student_weight=student_weight,
            teacher_hidden=teacher_hidden, teacher_weight=teacher_weight, token_weight=token_weight)
    return WeightedKLResult(loss=loss, kl=stats.kl, student_logprob=stats.student_logprob,
                            student_entropy=stats.student_entropy)


class VAOPDLoss(torch.nn.Module):
    """:func:`va_opd_loss` with its options fixed at construction (standard OPD when no degraded
    hidden states are passed to ``forward``)."""

    def __init__(self, *, vocab_size=None, high_fraction=0.2, high_weight=0.5, temperature=1.0, eps=1e-6,
                 backend="auto", options=None):
        super().__init__()
        _check_objective_options(high_fraction, high_weight, temperature, eps)
        check_count("vocab_size", vocab_size)
        check_backend_name(backend)
        self.settings = dict(vocab_size=vocab_size, high_fraction=high_fraction, high_weight=high_weight,
                             temperature=temperature, eps=eps, backend=backend, options=resolve_options(options))

    def forward(self, student_hidden, student_weight, teacher_hidden, teacher_weight, targets, cu_seqlens,
                prompt_ids, teacher_hidden_degraded=None, num_prompts=None, num_rollouts=None) -> VAOPDLossResult:
        return va_opd_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, targets, cu_seqlens,
                           prompt_ids, teacher_hidden_degraded=teacher_hidden_degraded, num_prompts=num_prompts,
                           num_rollouts=num_rollouts, **self.settings)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
