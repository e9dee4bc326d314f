"""The checks of user input: ``api.py`` calls them once per public call, before any backend runs.

``check_objective_options`` is also the range check of the trainer's config and of the TRL
integration's ``VAOPDConfig``: one rule for the objective's settings everywhere.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from vaopd_kernels import objective
from vaopd_kernels.backends.base import Divergence
from vaopd_kernels.lm_head import LMHead
from vaopd_kernels.options import check_count

# a tensor kind: (accepted dtypes, how an error message names them)
FLOAT = ((torch.float32, torch.bfloat16, torch.float16, torch.float64), "dtype float32, bfloat16, float16 or float64")
INT = ((torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8), "an integer dtype")
DIVERGENCES = tuple(d.name.lower() for d in Divergence)  # the public names: "reverse", "forward", "jsd"
VISUAL_SIGNALS = ("sampled", "divergence")  # docs/math.md, "The visual signal"


def is_number(value) -> bool:
    """A finite int or float; bools are not numbers here."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_positive(name: str, value) -> float:
    if not is_number(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def check_objective_options(high_fraction, high_weight, va_temperature, eps=None) -> None:
    """The VA-OPD objective's settings (``eps=None``: the caller keeps the objective's default)."""
    if not is_number(high_fraction) or not 0.0 < high_fraction <= 1.0:
        raise ValueError(f"high_fraction: expected 0 < high_fraction <= 1, got {high_fraction!r}")
    if not is_number(high_weight) or not 0.0 <= high_weight <= 1.0:
        raise ValueError(f"high_weight: expected 0 <= high_weight <= 1, got {high_weight!r}")
    check_positive("va_temperature", va_temperature)
    if eps is not None:
        check_positive("eps", eps)


def check_ablation(high_selection, rollout_weighting, high_seed) -> None:
    if high_selection not in objective.HIGH_SELECTIONS:
        raise ValueError(f"high_selection: expected one of {objective.HIGH_SELECTIONS}, got {high_selection!r}")
    if rollout_weighting not in objective.ROLLOUT_WEIGHTINGS:
        raise ValueError(f"rollout_weighting: expected one of {objective.ROLLOUT_WEIGHTINGS}, got {rollout_weighting!r}")
    if high_selection == "random" and (isinstance(high_seed, bool) or not isinstance(high_seed, int) or high_seed < 0):
        raise ValueError(f"high_seed: high_selection='random' needs a seed, an int >= 0, got {high_seed!r}")


def check_visual_signal(visual_signal, clamp=True) -> None:
    if not isinstance(visual_signal, str) or visual_signal not in VISUAL_SIGNALS:
        raise ValueError(f"visual_signal: expected one of {VISUAL_SIGNALS}, got {visual_signal!r}")
    if visual_signal == "divergence" and not clamp:  # a KL is >= 0: there is no signed form to return
        raise ValueError("clamp: clamp=False is the signed gap of visual_signal='sampled'; "
                         "visual_signal='divergence' is a KL, >= 0 without a clamp")


def check_divergence(divergence: str, beta) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence: expected one of {DIVERGENCES}, got {divergence!r}")
    if divergence == "jsd" and not (is_number(beta) and 0.0 < beta < 1.0):
        raise ValueError(f"beta: expected 0 < beta < 1 for divergence='jsd', got {beta!r}")


def check_tensor(name: str, value, ndim: int, kind=FLOAT) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(value.shape)}")
    if value.dtype not in kind[0]:
        raise TypeError(f"{name}: expected {kind[1]}, got {value.dtype}")


def check_same_device(expected: Optional[torch.device] = None, **tensors) -> None:
    """All ``tensors`` on one device (``expected``, or the first one's)."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first = expected if expected is not None else next(iter(devices.values()))
    for name, device in devices.items():
        if device != first:
            raise ValueError(f"{name}: expected a tensor on {first} like the other inputs, got {device}")


def check_pair(hidden_name, hidden, weight_name, weight) -> None:
    check_tensor(hidden_name, hidden, 2)
    check_tensor(weight_name, weight, 2)
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"{weight_name}: expected hidden size {hidden.shape[1]} (from {hidden_name}), "
                         f"got shape {tuple(weight.shape)}")


def check_head(name: str, value) -> LMHead:
    """``value``, an LM-head weight tensor or an ``LMHead``, as a checked ``LMHead`` (a tensor: a plain
    head). Only its parts are checked here; its weight's pairing with hidden states is ``check_pair``'s."""
    if isinstance(value, torch.Tensor):
        return LMHead(value)
    if not isinstance(value, LMHead):
        raise TypeError(f"{name}: expected a torch.Tensor or vaopd_kernels.LMHead, got {type(value).__name__}")
    check_tensor(f"{name}.weight", value.weight, 2)
    if value.bias is not None:
        check_tensor(f"{name}.bias", value.bias, 1)
        if value.bias.shape[0] != value.weight.shape[0]:
            raise ValueError(f"{name}.bias: expected {value.weight.shape[0]} entries (one per head row), "
                             f"got shape {tuple(value.bias.shape)}")
        check_same_device(**{f"{name}.weight": value.weight, f"{name}.bias": value.bias})
    if not is_number(value.logit_scale):
        raise ValueError(f"{name}.logit_scale: expected a finite number, got {value.logit_scale!r}")
    if value.final_logit_softcapping is not None:
        check_positive(f"{name}.final_logit_softcapping", value.final_logit_softcapping)
    return value


def check_rows(expected: int, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.shape[0] != expected:
            raise ValueError(f"{name}: expected {expected} rows, got {t.shape[0]}")


def resolve_vocab(vocab_size: Optional[int], **weights) -> int:
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


def check_targets(targets, num_rows: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    check_tensor("targets", targets, 1, INT)
    check_same_device(device, targets=targets)
    check_rows(num_rows, targets=targets)
    if targets.numel() and bool(torch.stack([targets.min() < 0, targets.max() >= vocab_size]).any()):  # one sync
        raise ValueError(f"targets: expected token ids in [0, {vocab_size}), got range "
                         f"[{int(targets.min())}, {int(targets.max())}]")
    return targets.long().contiguous()  # the fused kernels index it as a packed array; no copy if it is one


def check_cu_seqlens(cu_seqlens, num_rows: int, device: torch.device) -> torch.Tensor:
    check_tensor("cu_seqlens", cu_seqlens, 1, INT)
    check_same_device(device, cu_seqlens=cu_seqlens)
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


def check_rollouts(cu_seqlens, prompt_ids, num_rows: int, device: torch.device):
    cu = check_cu_seqlens(cu_seqlens, num_rows, device)
    check_tensor("prompt_ids", prompt_ids, 1, INT)
    check_same_device(device, prompt_ids=prompt_ids)
    if prompt_ids.numel() != cu.numel() - 1:
        raise ValueError(f"prompt_ids: expected one id per rollout ({cu.numel() - 1}), got {prompt_ids.numel()}")
    return cu, prompt_ids.long()


def check_degraded(name, degraded, like_name, like) -> None:
    check_tensor(name, degraded, 2)
    if degraded.shape != like.shape:
        raise ValueError(f"{name}: expected shape {tuple(like.shape)} like {like_name}, got {tuple(degraded.shape)}")


def check_student_teacher(sh, s_head: LMHead, th, t_head: LMHead, vocab_size, degraded=None, **extra_rows) -> int:
    """The student and teacher pairs (heads from ``check_head``; and the teacher's degraded view, if
    any) on one device, with one row count; returns the vocabulary size."""
    sw, tw = s_head.weight, t_head.weight
    check_pair("student_hidden", sh, "student_weight", sw)
    check_pair("teacher_hidden", th, "teacher_weight", tw)
    check_rows(sh.shape[0], teacher_hidden=th, teacher_hidden_degraded=degraded, **extra_rows)
    check_same_device(student_hidden=sh, student_weight=sw, teacher_hidden=th, teacher_weight=tw,
                      teacher_hidden_degraded=degraded, **{"student_weight.bias": s_head.bias,
                                                          "teacher_weight.bias": t_head.bias}, **extra_rows)
    vocab = resolve_vocab(vocab_size, student_weight=sw, teacher_weight=tw)
    if degraded is not None:
        check_degraded("teacher_hidden_degraded", degraded, "teacher_hidden", th)
    return vocab


def finite(outputs, **inputs):
    """Return ``outputs`` if every tensor in them is finite; else raise, naming the inputs that hold
    NaN or inf (looked for only then). One host sync per call, on [N]-sized outputs."""
    present = [o for o in outputs if o is not None]
    if bool(torch.stack([torch.isfinite(o).all() for o in present]).all()):
        return outputs
    culprits = [name for name, t in inputs.items() if t is not None and not bool(torch.isfinite(t).all())]
    if culprits:
        raise ValueError(f"{', '.join(culprits)}: expected finite values, got NaN or inf")
    raise ValueError(f"the result is not finite although {', '.join(inputs)} are: logits overflowed")
