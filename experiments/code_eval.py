"""Measurements on the dilution task (``code_task``): greedy answers read back against the code,
the student's visual reliance, and log p(correct width digit) under teacher forcing."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch

import vaopd_kernels
from vaopd_trainer.data import Sample
from vaopd_trainer.evaluate import is_correct
from vaopd_trainer.loss import backbone_hidden
from vaopd_trainer.models import lm_head
from vaopd_trainer.rollout import encode_prompts, generate
from vaopd_trainer.sampling import Sampling, stop_token_ids

from . import code_task
from .task import PROMPT_SUFFIX
from .supervised import teacher_forcing_batch

MAX_NEW_TOKENS = 96  # the longest response is 87 characters + EOS


def pixelated(samples: Sequence[Sample], ratio: float = 0.1) -> List[Sample]:
    from vaopd_kernels.pixelate import pixelate

    return [Sample(pixelate(s.image, ratio), s.question, s.answer) for s in samples]


def _responses(batch, tokenizer) -> List[str]:
    return tokenizer.batch_decode([row[mask] for row, mask in zip(batch.input_ids[:, batch.prompt_len:],
                                                                  batch.response_mask)], skip_special_tokens=True)


@torch.no_grad()
def greedy_eval(model, samples: Sequence[Sample], tokenizer, processor, *, batch_size: int = 250,
                reliance: bool = True) -> Dict[str, float]:
    """Greedy responses scored against answer and code: \\boxed{} accuracy, slot accuracy (share of
    the 8 slots right; a broken format earns none), format rate, truncation rate (no EOS within
    ``MAX_NEW_TOKENS``), and the student's visual reliance (mean over response tokens of
    max(log p(y | image) - log p(y | pixelated), 0)) when ``reliance``."""
    model.eval()
    eos = tokenizer.eos_token_id
    sums = dict(correct=0.0, slots=0.0, format=0.0, truncated=0.0, reliance=0.0, tokens=0.0)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batch = encode_prompts(chunk, tokenizer, processor, repeat=1, pixelate_ratio=0.1 if reliance else None,
                               prompt_suffix=PROMPT_SUFFIX)
        batch = generate(model, batch, tokenizer, max_new_tokens=MAX_NEW_TOKENS, sampling=Sampling(do_sample=False),
                         eos_token_ids=stop_token_ids(model, tokenizer))
        sums["truncated"] += float((~(batch.input_ids[:, batch.prompt_len:] == eos).any(1)).sum())
        for text, s in zip(_responses(batch, tokenizer), chunk):
            score = code_task.score(text, code_task.code_of(s.question))
            sums["correct"] += is_correct(text, s.answer)
            sums["slots"] += score.slots_correct / code_task.NUM_BITS
            sums["format"] += score.format_ok
        if reliance:
            gap = vaopd_kernels.visual_advantage(backbone_hidden(model, batch), backbone_hidden(model, batch, degraded=True),
                                                 lm_head(model), batch.targets(), vocab_size=len(tokenizer))
            sums["reliance"] += float(gap.double().sum())
            sums["tokens"] += gap.numel()
    n = len(samples)
    out = {"accuracy": sums["correct"] / n, "slot_accuracy": sums["slots"] / n, "format_rate": sums["format"] / n,
           "truncation_rate": sums["truncated"] / n}
    if reliance:
        out["visual_reliance"] = sums["reliance"] / max(sums["tokens"], 1.0)
    return out


def flipped_slot_share(measured: Dict[str, float]) -> float:
    """Of a ``greedy_eval`` result's well-formed responses, the share of slots holding the other synonym."""
    return (measured["format_rate"] - measured["slot_accuracy"]) / max(measured["format_rate"], 1e-9)


@torch.no_grad()
def digit_logprob(model, samples: Sequence[Sample], tokenizer, processor, batch_size: int = 250) -> float:
    """Mean log p(correct width digit) with the true response teacher-forced up to it."""
    model.eval()
    vocab, total = len(tokenizer), 0.0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        texts = [code_task.response(code_task.code_of(s.question), s.answer) for s in chunk]
        inputs, labels = teacher_forcing_batch(chunk, texts, tokenizer, processor)
        logp = torch.log_softmax(model(**inputs, use_cache=False).logits[:, :-1, :vocab].float(), -1)
        first = (labels != -100).float().argmax(1)  # the response's first column
        for row, (text, s) in enumerate(zip(texts, chunk)):
            column = int(first[row]) + text.rindex(" px.") - 1  # the width digit's label column
            assert labels[row, column] == tokenizer.convert_tokens_to_ids(s.answer)
            total += float(logp[row, column - 1, labels[row, column]])
    return total / len(samples)
