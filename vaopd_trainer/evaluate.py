"""Held-out evaluation: accuracy of the first \\boxed{} answer (avg@k over sampled answers) and the
student's visual reliance."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

import vaopd_kernels

from .data import Sample
from .loss import backbone_hidden
from .models import lm_head
from .rollout import check_context, encode_prompts, generate, responses_text
from .sampling import Sampling


def extract_boxed(text: str) -> Optional[str]:
    """Content of the first ``\\boxed{...}`` (the first committed final answer), braces balanced; None
    when absent or unclosed."""
    start = text.find("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _normalise(text: str) -> str:
    return text.replace(" ", "").replace("\\!", "").rstrip(".").lower()


def is_correct(response: str, answer: str) -> bool:
    """math-verify when installed (symbolic equivalence), else exact match after normalisation."""
    predicted = extract_boxed(response)
    if predicted is None:
        return False
    try:
        from math_verify import parse, verify
    except ImportError:
        return _normalise(predicted) == _normalise(answer)
    gold = parse("$" + answer + "$")
    guess = parse("$" + predicted + "$")
    if gold and guess:
        return bool(verify(gold, guess))
    return _normalise(predicted) == _normalise(answer)


@torch.no_grad()
def evaluate(model, samples: Sequence[Sample], tokenizer, image_processor, *, batch_size: int,
             max_new_tokens: int, pixelate_ratio: float, device, sampling: Sampling, num_generations: int,
             eos_token_ids: Sequence[int], prompt_suffix: str = "", backend: str = "auto",
             context: Optional[int] = None, reliance: bool = True) -> Dict[str, float]:
    """``num_generations`` answers per problem decoded with ``sampling`` -> accuracy = the mean over all
    answers (avg@k); visual reliance = mean over response tokens of the student's own
    max(log p(y | image) - log p(y | pixelated image), 0) on those answers. ``batch_size`` counts rows.
    ``context``: the models' context (max_position_embeddings); a prompt that cannot fit is refused, named.
    ``reliance=False`` skips the two extra student passes of the visual reliance (its sums stay 0).

    Returns sums and counts so ranks can add them before dividing, and ``scores``: each problem's share
    of right answers, in ``samples``' order (for intervals over images, ``intervals.py``).
    """
    scores: List[float] = []
    correct, reliance_sum, tokens = 0.0, 0.0, 0.0
    prompts_per_batch = max(1, batch_size // num_generations)
    for start in range(0, len(samples), prompts_per_batch):
        chunk = samples[start:start + prompts_per_batch]
        batch = encode_prompts(chunk, tokenizer, image_processor, repeat=num_generations, pixelate_ratio=pixelate_ratio,
                               device=device, prompt_suffix=prompt_suffix)
        if context is not None:
            check_context(batch, chunk, num_generations, max_new_tokens, context)
        batch = generate(model, batch, tokenizer, max_new_tokens=max_new_tokens, sampling=sampling,
                         eos_token_ids=eos_token_ids)
        responses: List[str] = responses_text(batch, tokenizer)
        right = [is_correct(r, chunk[i // num_generations].answer) for i, r in enumerate(responses)]
        correct += sum(right)
        scores += [sum(right[i:i + num_generations]) / num_generations for i in range(0, len(right), num_generations)]
        if not reliance:
            continue
        was_training = model.training
        model.eval()
        full = backbone_hidden(model, batch)
        degraded = backbone_hidden(model, batch, degraded=True)
        model.train(was_training)
        gap = vaopd_kernels.visual_advantage(full, degraded, lm_head(model), batch.targets(),
                                             vocab_size=len(tokenizer), backend=backend)
        reliance_sum += float(gap.double().sum())
        tokens += gap.numel()
    return {"correct": correct, "count": float(len(samples) * num_generations),
            "reliance_sum": reliance_sum, "tokens": tokens, "scores": scores}
