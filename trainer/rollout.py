"""Prompts -> sampled rollouts -> packed response rows.

Layout of a rollout batch (R = prompts x K rows): ``[left pad][prompt][response][right pad]``.
Every prompt is left-padded to one length L, so response token t sits at column L + t and is
predicted by the hidden state at column L + t - 1. Both image views have the same size, hence the
same ``input_ids``; only ``pixel_values`` differ.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence

import torch

from .data import Sample, pixelate
from .errors import DataError

INSTRUCTION = " Put the final answer in \\boxed{}."
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def prompt_ids(tokenizer, question: str, num_image_tokens: int) -> List[int]:
    """Qwen3-VL chat layout with the image placeholder expanded to its visual-token count."""
    tid = tokenizer.convert_tokens_to_ids
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    return ([tid("<|im_start|>")] + enc("user\n") + [tid("<|vision_start|>")]
            + [tid("<|image_pad|>")] * num_image_tokens + [tid("<|vision_end|>")] + enc(question + INSTRUCTION)
            + [tid("<|im_end|>")] + enc("\n") + [tid("<|im_start|>")] + enc("assistant\n"))


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
                       response_mask=None if self.response_mask is None else self.response_mask[start:stop])

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
                   prompt_offset: int = 0, device=None) -> Batch:
    """Each sample ``repeat`` times (its K rollouts are adjacent rows), prompts left-padded."""
    images = [s.image for s in samples for _ in range(repeat)]
    processed = image_processor(images=images, return_tensors="pt")
    degraded = None
    if pixelate_ratio is not None:
        degraded = image_processor(images=[pixelate(im, pixelate_ratio) for im in images], return_tensors="pt")["pixel_values"]
    grid = processed["image_grid_thw"]
    merge = image_processor.merge_size ** 2
    rows = [prompt_ids(tokenizer, s.question, int(grid[i * repeat].prod()) // merge)
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
                 tokenizer.convert_tokens_to_ids("<|image_pad|>"))


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


def response_mask(responses: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """True up to and including the first EOS; a row without EOS (hit the length limit) keeps every token."""
    is_eos = responses == eos_token_id
    eos_before = is_eos.long().cumsum(1) - is_eos.long()
    return eos_before == 0


@torch.no_grad()
def generate(model, batch: Batch, tokenizer, *, max_new_tokens: int, temperature: float, top_p: float,
             do_sample: bool = True) -> Batch:
    """Sample one response per row (the caller repeated each prompt K times) and append it."""
    was_training = model.training
    model.eval()
    vocab = len(tokenizer)
    head_rows = model.get_output_embeddings().weight.shape[0]
    # never sample: padded head rows past the tokenizer (they never enter the loss's softmax) and
    # vision placeholders (the model would look for image features that do not exist)
    vision = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else dict(do_sample=False)
    out = model.generate(**batch.model_inputs(), max_new_tokens=max_new_tokens, use_cache=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         suppress_tokens=vision + list(range(vocab, head_rows)), **sampling)
    model.train(was_training)
    responses = out[:, batch.prompt_len:]
    mask = response_mask(responses, tokenizer.eos_token_id)
    return replace(batch, input_ids=out, attention_mask=torch.cat([batch.attention_mask, mask.long()], 1),
                   response_mask=mask)
