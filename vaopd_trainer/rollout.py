"""Prompts -> sampled rollouts -> packed response rows.

Layout of a rollout batch (R = prompts x K rows): ``[left pad][prompt][response][right pad]``.
Every prompt is left-padded to one length L, so response token t sits at column L + t and is
predicted by the hidden state at column L + t - 1. Both image views have the same size, hence the
same ``input_ids``; only ``pixel_values`` differ.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import torch

from vaopd_kernels.pixelate import pixelate

from .data import Sample
from .errors import DataError
from .sampling import Sampling, decoding_config, only_this_config

IMAGE_PAD = "<|image_pad|>"
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", IMAGE_PAD, "<|video_pad|>")


def prompt_text(tokenizer, question: str, prompt_suffix: str = "") -> str:
    """The model's own chat template on one user turn: the image, then the raw question (+ the
    optional ``prompt_suffix``), and the assistant header that generation continues from."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question + prompt_suffix}]}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer, question: str, num_image_tokens: int, prompt_suffix: str = "") -> List[int]:
    """Chat-template prompt with its one image placeholder expanded to the image's visual-token count
    (as ``Qwen3VLProcessor`` does), then tokenized."""
    text = prompt_text(tokenizer, question, prompt_suffix)
    if text.count(IMAGE_PAD) != 1:
        raise ValueError(f"student_model: its chat template put {text.count(IMAGE_PAD)} {IMAGE_PAD} tokens in a "
                         f"one-image prompt, expected 1 (a Qwen3-VL chat template is needed)")
    return tokenizer.encode(text.replace(IMAGE_PAD, IMAGE_PAD * num_image_tokens), add_special_tokens=False)


@dataclass
class Batch:
    """Token rows with their images. ``response_mask`` is None until responses are appended."""
    input_ids: torch.Tensor  # [R, S]
    attention_mask: torch.Tensor  # [R, S]
    pixel_values: torch.Tensor  # [sum of patches, patch_dim]
    pixel_values_degraded: Optional[torch.Tensor]
    image_grid_thw: torch.Tensor  # [R, 3]
    prompt_ids: torch.Tensor  # [R] which prompt each row answers
    prompt_len: int
    image_token_id: int
    response_mask: Optional[torch.Tensor] = None  # [R, S - prompt_len]
    answers: Tuple[str, ...] = ()  # [R] each row's reference answer (scored for logging only, never in the loss)

    def model_inputs(self, degraded: bool = False) -> dict:
        pixels = self.pixel_values_degraded if degraded else self.pixel_values
        return dict(input_ids=self.input_ids, attention_mask=self.attention_mask, pixel_values=pixels,
                    image_grid_thw=self.image_grid_thw, mm_token_type_ids=self.mm_token_type_ids)

    @property
    def mm_token_type_ids(self) -> torch.Tensor:
        # 1 marks image tokens: Qwen3-VL builds its 3D (M-RoPE) positions from it
        return (self.input_ids == self.image_token_id).int()

    def rows(self, start: int, stop: int) -> "Batch":
        """Rollouts start..stop-1 with their own image patches."""
        patches = self.image_grid_thw.prod(-1).cumsum(0).tolist()
        lo, hi = (patches[start - 1] if start else 0), patches[stop - 1]
        return replace(self, input_ids=self.input_ids[start:stop], attention_mask=self.attention_mask[start:stop],
                       pixel_values=self.pixel_values[lo:hi], image_grid_thw=self.image_grid_thw[start:stop],
                       pixel_values_degraded=None if self.pixel_values_degraded is None else self.pixel_values_degraded[lo:hi],
                       prompt_ids=self.prompt_ids[start:stop],
                       response_mask=None if self.response_mask is None else self.response_mask[start:stop],
                       answers=self.answers[start:stop])

    # --- packed response rows (valid once response_mask is set) ---
    def targets(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len:][self.response_mask]

    def cu_seqlens(self) -> torch.Tensor:
        lengths = self.response_mask.sum(1)
        return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int64)

    def response_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """[R, S, D] final hidden states -> [N, D] rows, each the state that predicts a response token."""
        width = self.response_mask.shape[1]
        return hidden[:, self.prompt_len - 1:self.prompt_len - 1 + width][self.response_mask]


def encode_prompts(samples: Sequence[Sample], tokenizer, image_processor, *, repeat: int, pixelate_ratio: Optional[float],
                   prompt_offset: int = 0, device=None, prompt_suffix: str = "") -> Batch:
    """Each sample ``repeat`` times (its K rollouts are adjacent rows), prompts left-padded."""
    images = [s.image for s in samples for _ in range(repeat)]
    processed = image_processor(images=images, return_tensors="pt")
    degraded = None
    if pixelate_ratio is not None:
        degraded = image_processor(images=[pixelate(im, pixelate_ratio) for im in images], return_tensors="pt")["pixel_values"]
    grid = processed["image_grid_thw"]
    merge = image_processor.merge_size ** 2
    rows = [prompt_ids(tokenizer, s.question, int(grid[i * repeat].prod()) // merge, prompt_suffix)
            for i, s in enumerate(samples) for _ in range(repeat)]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = torch.tensor(r)
        mask[i, length - len(r):] = 1
    pids = torch.arange(len(samples)).repeat_interleave(repeat) + prompt_offset
    return Batch(ids.to(device), mask.to(device), processed["pixel_values"].to(device),
                 None if degraded is None else degraded.to(device), grid.to(device), pids.to(device), length,
                 tokenizer.convert_tokens_to_ids(IMAGE_PAD), answers=tuple(s.answer for s in samples for _ in range(repeat)))


def check_context(batch: Batch, samples: Sequence[Sample], repeat: int, max_new_tokens: int, context: int) -> None:
    """Raise naming the sample (or ``max_completion_length``) when a rollout cannot fit the models' context.

    Rotary positions past the context do not fail by themselves: the model would run on silently.
    """
    lengths = batch.attention_mask.sum(1).tolist()
    for i, sample in enumerate(samples):
        if lengths[i * repeat] > context:
            raise DataError(f"{sample.origin or f'sample {i}'}: the prompt is {lengths[i * repeat]} tokens (image "
                             f"included), longer than the models' context of {context} tokens "
                             f"(max_position_embeddings); lower max_pixels or shorten the question")
    if batch.prompt_len + max_new_tokens > context:
        raise DataError(f"max_completion_length: {max_new_tokens} tokens after a {batch.prompt_len}-token prompt exceed "
                         f"the models' context of {context} tokens (max_position_embeddings)")


def response_mask(responses: torch.Tensor, eos_token_ids: Sequence[int]) -> torch.Tensor:
    """True up to and including the first EOS (any of ``eos_token_ids``); a row without one (it hit
    the length limit) keeps every token."""
    is_eos = torch.isin(responses, torch.as_tensor(list(eos_token_ids), device=responses.device)).long()
    return (is_eos.cumsum(1) - is_eos) == 0


@torch.no_grad()
def generate(model, batch: Batch, tokenizer, *, max_new_tokens: int, sampling: Sampling,
             eos_token_ids: Sequence[int]) -> Batch:
    """Sample one response per row (the caller repeated each prompt K times) and append it.

    Decoding uses ``sampling`` and nothing from the model folder (``sampling.py``); generation stops
    at any of ``eos_token_ids``.
    """
    was_training = model.training
    model.eval()
    vocab = len(tokenizer)
    head_rows = model.get_output_embeddings().weight.shape[0]
    # never sample: padded head rows past the tokenizer (they never enter the loss's softmax) and
    # vision placeholders (the model would look for image features that do not exist)
    vision = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    config = decoding_config(sampling, max_new_tokens=max_new_tokens, eos_token_ids=eos_token_ids,
                             pad_token_id=tokenizer.pad_token_id, suppress_tokens=vision + list(range(vocab, head_rows)))
    with only_this_config(model, config):
        out = model.generate(**batch.model_inputs(), generation_config=config)
    model.train(was_training)
    responses = out[:, batch.prompt_len:]
    mask = response_mask(responses, eos_token_ids)
    return replace(batch, input_ids=out, attention_mask=torch.cat([batch.attention_mask, mask.long()], 1),
                   response_mask=mask)


def responses_text(batch: Batch, tokenizer) -> List[str]:
    """Each row's response (masked tokens), decoded without special tokens."""
    return tokenizer.batch_decode([row[mask] for row, mask in zip(batch.input_ids[:, batch.prompt_len:],
                                                                  batch.response_mask)], skip_special_tokens=True)
