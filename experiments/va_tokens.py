"""Where the visual advantage sits: the teacher's VA on sampled rollouts, by token kind.

VA_n = max(log p_teacher(y_n | image) - log p_teacher(y_n | pixelated image), 0), the quantity
VA-OPD ranks tokens by. Token kinds come from the character-level response text:
``width digit`` (a digit before ``\\boxed{``, where the template states the reading), ``boxed
digit`` (a digit inside ``\\boxed{}``), ``eos``, and ``template`` (everything else).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, List, Sequence

import torch

import vaopd_kernels
from vaopd_trainer.data import Sample
from vaopd_trainer.evaluate import is_correct
from vaopd_trainer.loss import backbone_hidden
from vaopd_trainer.models import lm_head_weight
from vaopd_trainer.rollout import encode_prompts, generate
from vaopd_trainer.sampling import Sampling, stop_token_ids

KINDS = ("width digit", "boxed digit", "template", "eos")


def token_kinds(tokens: Sequence[str], eos: str) -> List[str]:
    kinds, text = [], ""
    for tok in tokens:
        if tok == eos:
            kinds.append("eos")
        elif tok.isdigit():
            kinds.append("boxed digit" if "\\boxed{" in text else "width digit")
        else:
            kinds.append("template")
        text += tok
    return kinds


def top_sum(va: torch.Tensor, fraction: float) -> float:
    """VA held by a rollout's ceil(fraction * T) largest-VA tokens (the objective's high group size)."""
    k = math.ceil(fraction * va.numel())
    return float(va.topk(k).values.sum())


@torch.no_grad()
def profile(teacher, student, samples: Sequence[Sample], tokenizer, processor, *, num_generations: int,
            max_new_tokens: int, sampling: Sampling = Sampling(temperature=0.7, top_p=0.95), pixelate_ratio: float = 0.1,
            high_fraction: float = 0.2, seed: int = 0, batch_prompts: int = 8, prompt_suffix: str = "") -> Dict[str, object]:
    """Student rollouts (sampled as in training) scored by the teacher on both views.

    Returns the pooled share of VA in each rollout's top ``high_fraction`` tokens, mean VA and token
    count per kind, the share of all VA per kind, and the same top share split by answer correctness.
    """
    torch.manual_seed(seed)
    vocab = len(tokenizer)
    sums, counts = defaultdict(float), defaultdict(int)
    top, total = 0.0, 0.0
    by_correct = {True: [0.0, 0.0], False: [0.0, 0.0]}
    eos = tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id)
    for start in range(0, len(samples), batch_prompts):
        chunk = samples[start:start + batch_prompts]
        batch = encode_prompts(chunk, tokenizer, processor, repeat=num_generations, pixelate_ratio=pixelate_ratio,
                               prompt_suffix=prompt_suffix)
        batch = generate(student, batch, tokenizer, max_new_tokens=max_new_tokens, sampling=sampling,
                         eos_token_ids=stop_token_ids(student, tokenizer))
        va = vaopd_kernels.visual_advantage(backbone_hidden(teacher, batch), backbone_hidden(teacher, batch, degraded=True),
                                            lm_head_weight(teacher), batch.targets(), vocab_size=vocab).float()
        cu, targets = batch.cu_seqlens().tolist(), batch.targets().tolist()
        for r in range(len(cu) - 1):
            tokens = tokenizer.convert_ids_to_tokens(targets[cu[r]:cu[r + 1]])
            row = va[cu[r]:cu[r + 1]]
            for kind, value in zip(token_kinds(tokens, eos), row.tolist()):
                sums[kind] += value
                counts[kind] += 1
            high, whole = top_sum(row, high_fraction), float(row.sum())
            top, total = top + high, total + whole
            correct = is_correct(tokenizer.convert_tokens_to_string(tokens), chunk[r // num_generations].answer)
            by_correct[correct][0] += high
            by_correct[correct][1] += whole
    all_va = sum(sums.values())
    return {
        "top_share": top / total if total > 0 else float("nan"),
        "top_share_correct": by_correct[True][0] / by_correct[True][1] if by_correct[True][1] > 0 else float("nan"),
        "top_share_wrong": by_correct[False][0] / by_correct[False][1] if by_correct[False][1] > 0 else float("nan"),
        "mean_va": {k: sums[k] / counts[k] for k in KINDS if counts[k]},
        "va_share": {k: sums[k] / all_va for k in KINDS if counts[k] and all_va > 0},
        "tokens": {k: counts[k] for k in KINDS if counts[k]},
    }
