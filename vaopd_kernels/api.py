"""Public functions: user input checked once (``validation.py``), then dispatched to a backend."""
from __future__ import annotations

from typing import Optional

import torch

from vaopd_kernels import objective, ops
from vaopd_kernels.backends import check_backend_name, resolve_backend
from vaopd_kernels.backends._autograd import no_autocast
from vaopd_kernels.lm_head import LMHead
from vaopd_kernels.options import check_count, resolve_options
from vaopd_kernels.results import Coefficients, ObjectiveResult, VAKLResult, VAOPDLossResult, WeightedKLResult
from vaopd_kernels.validation import (INT, check_ablation, check_cu_seqlens, check_degraded, check_divergence,
                                      check_objective_options, check_pair, check_positive, check_rollouts,
                                      check_head, check_rows, check_same_device, check_student_teacher, check_targets,
                                      check_tensor, check_visual_signal, finite, resolve_vocab)


def _coefficients_rule(high_fraction, high_weight, va_temperature, eps, num_prompts, high_selection,
                       rollout_weighting, high_seed):
    """The objective's settings, checked, as ``coefficients(impl, va, cu_seqlens, prompt_ids) ->
    Coefficients``: a backend's own VA-OPD coefficients (the optional ``va_opd_coefficients`` hook),
    else the torch objective; an ablation always uses the torch objective."""
    check_objective_options(high_fraction, high_weight, va_temperature, eps)
    check_ablation(high_selection, rollout_weighting, high_seed)
    settings = dict(high_fraction=float(high_fraction), high_weight=float(high_weight),
                    va_temperature=float(va_temperature), eps=float(eps),
                    num_prompts=check_count("num_prompts", num_prompts))
    ablation = high_selection != "va" or rollout_weighting != "va"
    if ablation:  # the paper's recipe passes no ablation keywords (a backend's hook takes none)
        settings.update(high_selection=high_selection, rollout_weighting=rollout_weighting, high_seed=high_seed)

    def coefficients(impl, va, cu_seqlens, prompt_ids) -> Coefficients:
        fn = objective.va_opd_coefficients
        if not ablation:
            fn = getattr(impl, "va_opd_coefficients", fn)
        return fn(va, cu_seqlens, prompt_ids, **settings)
    return coefficients


def _run(op, backend, options, device, *args, **kwargs):
    """``op`` on the backend for ``device``, with the checked kernel options and autocast off."""
    options = resolve_options(options)
    impl = resolve_backend(backend, device)
    with no_autocast(device):
        return op(impl, *args, options=options, **kwargs)


# ----------------------------------------------------------------------------- kernels
def linear_kl(student_hidden, student_weight, teacher_hidden, teacher_weight, *, divergence="reverse",
              beta=0.5, temperature=1.0, vocab_size=None, return_entropy=False, backend="auto", options=None):
    """Per-token divergence between student and teacher next-token distributions, [N] float32;
    with ``return_entropy=True``, ``(kl, entropy)``: also the student's entropy per token (at the
    temperature, in nats) from the same pass, detached.

    Computed from hidden states and LM heads (weight tensors or :class:`LMHead`) without
    materialising [N, V] logits (backend permitting). Differentiable w.r.t. ``student_hidden`` and
    the student's head (weight and bias) only.
    """
    student_weight, teacher_weight = _heads(student_weight, teacher_weight)
    vocab = check_student_teacher(student_hidden, student_weight, teacher_hidden, teacher_weight, vocab_size)
    check_divergence(divergence, beta)
    temperature = check_positive("temperature", temperature)
    if not isinstance(return_entropy, bool):
        raise TypeError(f"return_entropy: expected True or False, got {return_entropy!r}")
    out = _run(ops.linear_kl, backend, options, student_hidden.device, student_hidden, student_weight,
               teacher_hidden.detach(), teacher_weight.detach(), divergence=divergence, beta=float(beta),
               temperature=temperature, vocab_size=vocab, return_entropy=return_entropy)
    out = list(out) if return_entropy else [out]
    finite(out, student_hidden=student_hidden, **_head_inputs("student", student_weight),
           teacher_hidden=teacher_hidden, **_head_inputs("teacher", teacher_weight))
    return tuple(out) if return_entropy else out[0]


def linear_logprob(hidden, weight, targets, *, temperature=1.0, vocab_size=None, backend="auto",
                   options=None) -> torch.Tensor:
    """log softmax(logits / T)[targets], [N] float32, differentiable; logits = weight[:V] @ hidden
    for a weight tensor, an :class:`LMHead`'s logits for a head."""
    head = check_head("weight", weight)
    check_pair("hidden", hidden, "weight", head.weight)
    vocab = resolve_vocab(vocab_size, weight=head.weight)
    check_same_device(hidden=hidden, weight=head.weight, **{"weight.bias": head.bias})
    targets = check_targets(targets, hidden.shape[0], vocab, hidden.device)
    temperature = check_positive("temperature", temperature)
    lp = _run(ops.linear_logprob, backend, options, hidden.device, hidden, head, targets, temperature=temperature,
              vocab_size=vocab)
    return finite([lp], hidden=hidden, **_head_inputs("", head, "weight"))[0]


def visual_advantage(hidden_full, hidden_degraded, weight, targets=None, *, vocab_size=None, clamp=True,
                     visual_signal="sampled", backend="auto", options=None) -> torch.Tensor:
    """The teacher's visual signal per token between the original and degraded image, [N], detached.

    ``visual_signal="sampled"`` (the paper's): the log-prob gap of ``targets``,
    ``max(lp_full - lp_degraded, 0)``, or the signed gap with ``clamp=False``.
    ``visual_signal="divergence"``: ``KL(p(. | image) || p(. | degraded))`` over the vocabulary at
    T = 1, >= 0 without a clamp (``clamp=False`` is refused); it reads no ``targets`` (None allowed).
    """
    check_visual_signal(visual_signal, clamp)
    head = check_head("weight", weight)
    check_pair("hidden_full", hidden_full, "weight", head.weight)
    check_degraded("hidden_degraded", hidden_degraded, "hidden_full", hidden_full)
    vocab = resolve_vocab(vocab_size, weight=head.weight)
    check_same_device(hidden_full=hidden_full, hidden_degraded=hidden_degraded, weight=head.weight,
                      **{"weight.bias": head.bias})
    views = (hidden_full.detach(), head.detach())
    if visual_signal == "divergence":
        signal = _run(ops.visual_divergence, backend, options, hidden_full.device, *views, hidden_degraded.detach(),
                      vocab_size=vocab)
    else:
        targets = check_targets(targets, hidden_full.shape[0], vocab, hidden_full.device)
        lp_full, lp_degraded = _run(ops.teacher_logprobs, backend, options, hidden_full.device, *views, targets,
                                    hidden_degraded.detach(), vocab_size=vocab)
        signal = lp_full - lp_degraded
    signal = finite([signal], hidden_full=hidden_full, hidden_degraded=hidden_degraded,
                    **_head_inputs("", head, "weight"))[0]
    return signal.clamp_min(0.0) if clamp and visual_signal == "sampled" else signal


def _detached(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return t.detach() if t is not None else None


def _head_inputs(side: str, head: LMHead, name: Optional[str] = None) -> dict:
    """A head's tensors by the names errors give them (``student_weight``, ``student_weight.bias``)."""
    name = name or f"{side}_weight"
    return {name: head.weight, f"{name}.bias": head.bias}


def _heads(student_weight, teacher_weight):
    return check_head("student_weight", student_weight), check_head("teacher_weight", teacher_weight)



def va_kl(student_hidden, student_weight, teacher_hidden, teacher_weight, targets, *,
          teacher_hidden_degraded=None, vocab_size=None, visual_signal="sampled", backend="auto",
          options=None) -> VAKLResult:
    """Reverse KL (differentiable) plus VA (``visual_signal``'s, as in :func:`visual_advantage`) and
    the per-token statistics, sharing the teacher pass. ``targets`` is needed with either signal:
    the student's and teacher's log-probs of them are part of the result."""
    check_visual_signal(visual_signal)
    student_weight, teacher_weight = _heads(student_weight, teacher_weight)
    vocab = check_student_teacher(student_hidden, student_weight, teacher_hidden, teacher_weight, vocab_size,
                                   teacher_hidden_degraded)
    targets = check_targets(targets, student_hidden.shape[0], vocab, student_hidden.device)
    result = _run(ops.va_kl, backend, options, student_hidden.device, student_hidden, student_weight,
                  teacher_hidden.detach(), teacher_weight.detach(), targets, _detached(teacher_hidden_degraded),
                  vocab_size=vocab, visual_signal=visual_signal)
    finite([result.kl, result.visual_advantage, result.student_logprob, result.teacher_logprob],
            student_hidden=student_hidden, **_head_inputs("student", student_weight), teacher_hidden=teacher_hidden,
            **_head_inputs("teacher", teacher_weight), teacher_hidden_degraded=teacher_hidden_degraded)
    return result


# ----------------------------------------------------------------------------- objectives
def _coefficients_from_va(visual_advantage, cu_seqlens, prompt_ids, rule, backend, options) -> Coefficients:
    check_tensor("visual_advantage", visual_advantage, 1)
    cu, pid = check_rollouts(cu_seqlens, prompt_ids, visual_advantage.shape[0], visual_advantage.device)
    resolve_options(options)  # checked; the objective has no kernel options
    finite([visual_advantage], visual_advantage=visual_advantage)
    return rule(resolve_backend(backend, visual_advantage.device), visual_advantage, cu, pid)


def va_opd_coefficients(visual_advantage, cu_seqlens, prompt_ids, *, high_fraction=0.2, high_weight=0.5,
                        va_temperature=1.0, eps=1e-6, num_prompts=None, backend="auto", options=None,
                        high_selection="va", rollout_weighting="va", high_seed=None) -> Coefficients:
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
    rule = _coefficients_rule(high_fraction, high_weight, va_temperature, eps, num_prompts, high_selection,
                              rollout_weighting, high_seed)
    return _coefficients_from_va(visual_advantage, cu_seqlens, prompt_ids, rule, backend, options)


def opd_coefficients(cu_seqlens, *, num_rollouts=None) -> Coefficients:
    """Standard OPD's per-token coefficients: 1 / (R * T_r) (``num_rollouts`` overrides R)."""
    check_tensor("cu_seqlens", cu_seqlens, 1, INT)
    num_rows = int(cu_seqlens[-1]) if cu_seqlens.numel() else 0
    cu = check_cu_seqlens(cu_seqlens, num_rows, cu_seqlens.device)
    return objective.opd_coefficients(cu, num_rows, check_count("num_rollouts", num_rollouts))


def objective_from_coefficients(token_kl, coefficients: Coefficients) -> ObjectiveResult:
    """The objective's result (loss ``sum(token_weight * token_kl)`` and metrics) from coefficients
    already computed by :func:`va_opd_coefficients` or :func:`opd_coefficients`, e.g. the KL of
    every micro-batch collected after their backward passes; :func:`va_opd_objective` and
    :func:`opd_objective` are this after the coefficients."""
    check_tensor("token_kl", token_kl, 1)
    check_rows(coefficients.token_weight.shape[0], token_kl=token_kl)
    check_same_device(coefficients.token_weight.device, token_kl=token_kl)
    finite([token_kl], token_kl=token_kl)
    return objective.reduce_kl(token_kl, coefficients)


def va_opd_objective(token_kl, visual_advantage, cu_seqlens, prompt_ids, *, high_fraction=0.2, high_weight=0.5,
                     va_temperature=1.0, eps=1e-6, num_prompts=None, backend="auto", options=None,
                     high_selection="va", rollout_weighting="va", high_seed=None) -> ObjectiveResult:
    """VA-OPD loss from per-token KL and VA: ``sum(va_opd_coefficients(...).token_weight * token_kl)``,
    with the objective's metrics (ablation keywords as in :func:`va_opd_coefficients`)."""
    check_tensor("token_kl", token_kl, 1)
    check_tensor("visual_advantage", visual_advantage, 1)
    check_rows(token_kl.shape[0], visual_advantage=visual_advantage)
    check_same_device(token_kl=token_kl, visual_advantage=visual_advantage)
    coefficients = va_opd_coefficients(visual_advantage, cu_seqlens, prompt_ids, high_fraction=high_fraction,
                                       high_weight=high_weight, va_temperature=va_temperature, eps=eps,
                                       num_prompts=num_prompts, backend=backend, options=options,
                                       high_selection=high_selection, rollout_weighting=rollout_weighting,
                                       high_seed=high_seed)
    return objective_from_coefficients(token_kl, coefficients)


def opd_objective(token_kl, cu_seqlens, *, num_rollouts=None) -> ObjectiveResult:
    """Standard OPD loss: mean over rollouts of each rollout's mean token KL."""
    check_tensor("token_kl", token_kl, 1)
    check_cu_seqlens(cu_seqlens, token_kl.shape[0], token_kl.device)  # names cu_seqlens if it disagrees with N
    return objective_from_coefficients(token_kl, opd_coefficients(cu_seqlens, num_rollouts=num_rollouts))


def va_opd_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, targets, cu_seqlens, prompt_ids, *,
                teacher_hidden_degraded=None, vocab_size=None, high_fraction=0.2, high_weight=0.5, va_temperature=1.0,
                eps=1e-6, num_prompts=None, num_rollouts=None, backend="auto", options=None, high_selection="va",
                rollout_weighting="va", high_seed=None, visual_signal="sampled") -> VAOPDLossResult:
    """The full VA-OPD loss from hidden states (standard OPD when ``teacher_hidden_degraded`` is None).
    ``high_selection``, ``rollout_weighting``, ``high_seed``: the ablations of :func:`va_opd_objective`.
    ``visual_signal``: the VA the high groups and rollout weights come from (see
    :func:`visual_advantage`); ``targets`` is needed with either (the student's log-prob metrics).

    The per-token coefficients depend on the teacher only, so the backend hands VA to the
    objective right after its statistics pass and forms the weighted gradients at once:
    backward only rescales them.
    """
    check_visual_signal(visual_signal)
    student_weight, teacher_weight = _heads(student_weight, teacher_weight)
    vocab = check_student_teacher(student_hidden, student_weight, teacher_hidden, teacher_weight, vocab_size,
                                   teacher_hidden_degraded)
    targets = check_targets(targets, student_hidden.shape[0], vocab, student_hidden.device)
    cu, pid = check_rollouts(cu_seqlens, prompt_ids, student_hidden.shape[0], student_hidden.device)
    rule = _coefficients_rule(high_fraction, high_weight, va_temperature, eps, num_prompts, high_selection,
                              rollout_weighting, high_seed)
    num_rollouts = check_count("num_rollouts", num_rollouts)
    options = resolve_options(options)
    impl = resolve_backend(backend, student_hidden.device)

    def coefficients_for(va):
        """Asked for by ops.va_opd_loss once VA is known (None for OPD), before any gradient work."""
        if va is None:
            return objective.opd_coefficients(cu, student_hidden.shape[0], num_rollouts)
        return rule(impl, va, cu, pid)  # a non-finite VA is reported after the scan (no host sync here)

    with no_autocast(student_hidden.device):
        loss, stats, coefficients = ops.va_opd_loss(
            impl, student_hidden, student_weight, teacher_hidden.detach(), teacher_weight.detach(), targets,
            _detached(teacher_hidden_degraded), coefficients_for, vocab_size=vocab, options=options,
            visual_signal=visual_signal)
    finite([loss, stats.kl, stats.visual_advantage, stats.student_logprob], student_hidden=student_hidden,
            **_head_inputs("student", student_weight), teacher_hidden=teacher_hidden,
            **_head_inputs("teacher", teacher_weight), teacher_hidden_degraded=teacher_hidden_degraded)
    result = objective.reduce_kl(stats.kl, coefficients, loss=loss, extra_metrics={
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
    check_tensor("token_weight", token_weight, 1)
    student_weight, teacher_weight = _heads(student_weight, teacher_weight)
    vocab = check_student_teacher(student_hidden, student_weight, teacher_hidden, teacher_weight, vocab_size,
                                   token_weight=token_weight)
    if targets is not None:
        targets = check_targets(targets, student_hidden.shape[0], vocab, student_hidden.device)
    loss, stats = _run(ops.weighted_kl, backend, options, student_hidden.device, student_hidden, student_weight,
                       teacher_hidden.detach(), teacher_weight.detach(), token_weight.detach(), targets,
                       vocab_size=vocab)
    finite([loss, stats.kl, stats.student_logprob], student_hidden=student_hidden,
           **_head_inputs("student", student_weight), teacher_hidden=teacher_hidden,
           **_head_inputs("teacher", teacher_weight), token_weight=token_weight)
    return WeightedKLResult(loss=loss, kl=stats.kl, student_logprob=stats.student_logprob,
                            student_entropy=stats.student_entropy)


class VAOPDLoss(torch.nn.Module):
    """:func:`va_opd_loss` with its options fixed at construction (standard OPD when no degraded
    hidden states are passed to ``forward``)."""

    def __init__(self, *, vocab_size=None, high_fraction=0.2, high_weight=0.5, va_temperature=1.0,
                 eps=1e-6, visual_signal="sampled", backend="auto", options=None):
        super().__init__()
        check_objective_options(high_fraction, high_weight, va_temperature, eps)
        check_visual_signal(visual_signal)
        check_count("vocab_size", vocab_size)
        check_backend_name(backend)
        self.settings = dict(vocab_size=vocab_size, high_fraction=high_fraction, high_weight=high_weight,
                             va_temperature=va_temperature, eps=eps, visual_signal=visual_signal, backend=backend,
                             options=resolve_options(options))

    def forward(self, student_hidden, student_weight, teacher_hidden, teacher_weight, targets, cu_seqlens,
                prompt_ids, teacher_hidden_degraded=None, num_prompts=None, num_rollouts=None) -> VAOPDLossResult:
        return va_opd_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, targets, cu_seqlens,
                           prompt_ids, teacher_hidden_degraded=teacher_hidden_degraded, num_prompts=num_prompts,
                           num_rollouts=num_rollouts, **self.settings)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
