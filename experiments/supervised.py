"""Supervised next-token training on template answers (teacher forcing), shared by the teacher and
the format-only student, plus the model-folder plumbing both need.

The prompt layout is the trainer's own (``vaopd_trainer.rollout.encode_prompts``), so a model trained
here sees exactly the token rows it will see during distillation.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from transformers import Qwen3VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vaopd_trainer.data import Sample
from vaopd_trainer.models import TINY_PATCH, build_tiny_tokenizer, load_model, load_processing, tiny_config
from vaopd_trainer.rollout import encode_prompts

from .task import IMAGE_SIZE, PROMPT_SUFFIX


def new_model(hidden: int, layers: int, vocab_padding: int, seed: int):
    """(model, tokenizer, image_processor): a randomly initialised tiny Qwen3-VL, deterministic in seed."""
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(tiny_config(tokenizer, hidden, layers, vocab_padding))
    processor = Qwen2VLImageProcessorPil(patch_size=TINY_PATCH, merge_size=2, temporal_patch_size=2,
                                         min_pixels=16 * 16, max_pixels=IMAGE_SIZE * IMAGE_SIZE)
    return model, tokenizer, processor


def load(path: str):
    """(model, tokenizer, image_processor) of a model folder on the CPU in float32, its images as they are."""
    tokenizer, processor = load_processing(path, 16 * 16, IMAGE_SIZE ** 2)
    return load_model(path, torch.float32, torch.device("cpu")), tokenizer, processor


def save(model, tokenizer, processor, path: str, report: Optional[dict] = None) -> str:
    """A ``from_pretrained`` folder (safetensors weights + tokenizer + image processor), with the
    training ``report`` as training.json (also printed) when given."""
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    processor.save_pretrained(path)
    if report is not None:
        with open(os.path.join(path, "training.json"), "w") as f:
            json.dump(report, f, indent=1)
        print(json.dumps(report))
    return path


def teacher_forcing_batch(samples: Sequence[Sample], responses: Sequence[str], tokenizer, processor):
    """Prompt rows (left-padded) + response + EOS (right-padded); labels only on the response."""
    batch = encode_prompts(samples, tokenizer, processor, repeat=1, pixelate_ratio=None, prompt_suffix=PROMPT_SUFFIX)
    answers = [tokenizer.encode(r, add_special_tokens=False) + [tokenizer.eos_token_id] for r in responses]
    width = max(len(a) for a in answers)
    ids = torch.full((len(answers), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(answers), width), -100, dtype=torch.long)
    for i, a in enumerate(answers):
        ids[i, :len(a)] = torch.tensor(a)
        labels[i, :len(a)] = ids[i, :len(a)]
    inputs = batch.model_inputs()
    inputs["input_ids"] = torch.cat([batch.input_ids, ids], 1)
    inputs["attention_mask"] = torch.cat([batch.attention_mask, (labels != -100).long()], 1)
    inputs["mm_token_type_ids"] = (inputs["input_ids"] == batch.image_token_id).int()
    labels = torch.cat([torch.full_like(batch.input_ids, -100), labels], 1)
    return inputs, labels


def _lr_factor(step: int, steps: int) -> float:
    """20 warmup steps, then cosine decay to 0. Computed in float32 with pi ~ 3.14159 exactly as when
    the shipped assets were trained: changing the arithmetic would change the regenerated weights."""
    return min(1.0, (step + 1) / 20) * 0.5 * (1 + torch.cos(torch.tensor(step / steps * 3.14159)).item())


def train(model, tokenizer, processor, batches: Callable[[int], tuple], *, steps: int, lr: float,
          log: Callable[[str], None] = print, log_every: int = 50,
          stop: Optional[Callable[[int], bool]] = None) -> List[float]:
    """AdamW + cosine decay over ``steps``; ``batches(step)`` returns (samples, responses).

    ``stop(done_steps)``, when given, is asked after every update and ends training early when it
    returns True (the model is left in eval mode either way). Returns the loss per step. Only real
    vocabulary rows can be predicted (the padded head rows are masked out of the softmax, as in the
    distillation loss).
    """
    vocab = len(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps))
    model.train()
    losses, began = [], time.perf_counter()
    for step in range(steps):
        samples, responses = batches(step)
        inputs, labels = teacher_forcing_batch(samples, responses, tokenizer, processor)
        logits = model(**inputs, use_cache=False).logits[:, :-1, :vocab]
        loss = F.cross_entropy(logits.reshape(-1, vocab).float(), labels[:, 1:].reshape(-1), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            recent = losses[-log_every:]
            log(f"step {step + 1}/{steps} loss {sum(recent) / len(recent):.4f} ({time.perf_counter() - began:.0f}s)")
        if stop is not None:
            model.eval()
            if stop(step + 1):
                break
            model.train()
    model.eval()
    return losses


def checked_stop(evaluate, *, check_every: int, reached, checks: list):
    """A ``stop`` for ``supervised.train``: every ``check_every`` steps, ``evaluate()`` -> dict is
    recorded in ``checks`` as (step, accuracy, dict) and training stops once ``reached(dict)``."""
    def stop(done: int) -> bool:
        if done % check_every:
            return False
        result = evaluate()
        checks.append((done, result["accuracy"], result))
        print(f"check at step {done}: {result}")
        return reached(result)
    return stop


@torch.no_grad()
def next_token_log_probs(model, tokenizer, processor, samples: Sequence[Sample], responses: Sequence[str],
                         positions: Sequence[int]) -> torch.Tensor:
    """[R, vocab] log-probabilities of the token at character ``positions[r]`` of ``responses[r]``, the
    response teacher-forced up to it (the tiny tokenizer has one token per character)."""
    inputs, labels = teacher_forcing_batch(samples, responses, tokenizer, processor)
    log_probs = torch.log_softmax(model(**inputs, use_cache=False).logits[:, :-1, :len(tokenizer)].float(), -1)
    columns = (labels != -100).float().argmax(1).long() + torch.as_tensor(positions)  # the labels' columns
    rows = torch.arange(len(responses))
    expected = torch.tensor([tokenizer.convert_tokens_to_ids(r[p]) for r, p in zip(responses, positions)])
    assert torch.equal(labels[rows, columns], expected), "positions: one token per character expected"
    return log_probs[rows, columns - 1]
