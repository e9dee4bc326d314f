"""Held-out evaluation: \\boxed{} accuracy and the student's visual reliance."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

import vaopd_kernels

from .data import Sample
from .loss import backbone_hidden
from .models import lm_head_weight
from .rollout import check_context, encode_prompts, generate


def extract_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}``, braces balanced; None when absent or unclosed."""
    start = text.rfind("\\boxed{")
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
             max_new_tokens: int, pixelate_ratio: float, device, backend: str = "auto",
             context: Optional[int] = None) -> Dict[str, float]:
    """Greedy answers -> accuracy; visual reliance = mean over response tokens of the student's own
    max(log p(y | image) - log p(y | pixelated image), 0) on those answers.

    Returns sums and counts so ranks can add them before dividing.
    """
    correct, reliance, tokens = 0.0, 0.0, 0.0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batch = encode_prompts(chunk, tokenizer, image_processor, repeat=1, pixelate_ratio=pixelate_ratio, device=device)
        if context is not None:  # the models' context (max_position_embeddings): refuse, naming the sample
            check_context(batch, chunk, 1, max_new_tokens, context)
        batch = generate(model, batch, tokenizer, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0,
                         do_sample=False)
        responses: List[str] = tokenizer.batch_decode(
            [row[mask] for row, mask in zip(batch.input_ids[:, batch.prompt_len:], batch.response_mask)],
            skip_special_tokens=True)
        correct += sum(is_correct(r, s.answer) for r, s in zip(responses, chunk))
        was_training = model.training
        model.eval()
        full = backbone_hidden(model, batch)
        degraded = backbone_hidden(model, batch, degraded=True)
        model.train(was_training)
        gap = vaopd_kernels.visual_advantage(full, degraded, lm_head_weight(model), batch.targets(),
                                             vocab_size=len(tokenizer), backend=backend)
        reliance += float(gap.double().sum())
        tokens += gap.numel()
    return {"correct": correct, "count": float(len(samples)), "reliance_sum": reliance, "tokens": tokens}
