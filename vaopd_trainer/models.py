"""Models, tokenizer and image processor: the tiny offline pair, and loading any Qwen3-VL folder.

No torchvision: images go through the PIL ``Qwen2VLImageProcessorPil``; the prompt comes from the
tokenizer's chat template and its image placeholder is expanded in ``rollout.py`` (what
``Qwen3VLProcessor`` would do, without its torchvision-only video processor). Model and tokenizer
names are anything ``from_pretrained`` accepts: a hub id (cache and ``HF_HUB_OFFLINE`` respected) or
a local folder.
"""
from __future__ import annotations

import os
import string
from typing import Tuple

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vaopd_kernels import LMHead

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
TINY_PATCH = 8  # 64 x 64 images -> 8 x 8 patches -> 16 visual tokens after the 2 x 2 merge
# Qwen3-VL's chat layout (no default system prompt; an image item becomes one <|image_pad|> between
# the vision markers, expanded later to the visual-token count) for the tiny tokenizers. One line, so
# no whitespace control is needed.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer with Qwen's special tokens; every printable ASCII char is a token."""
    chars = list(string.printable[:95]) + ["\n"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()  # characters join without spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   additional_special_tokens=SPECIAL_TOKENS[1:])
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def tiny_config(tokenizer, hidden: int, layers: int, vocab_padding: int) -> Qwen3VLConfig:
    """A Qwen3-VL config small enough for a CPU; the head is padded past the tokenizer like the real ones."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    heads = hidden // 16
    return Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer) + vocab_padding, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                         head_dim=16, max_position_embeddings=1024, pad_token_id=ids["<|endoftext|>"],
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3],
                                              mrope_interleaved=True)),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=TINY_PATCH,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden,
                           num_position_embeddings=64, deepstack_visual_indexes=[0]),
        # the defaults (151655, ...) lie outside a tiny vocabulary
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )


def build_tiny_models(out_dir: str, seed: int) -> Tuple[str, str]:
    """Save a tiny teacher and a smaller student (random weights) with tokenizer + image processor.

    Returns (teacher_dir, student_dir). Deterministic in ``seed``; reuses folders already built.
    """
    paths = []
    for name, hidden, layers, padding in (("teacher", 96, 3, 16), ("student", 64, 2, 8)):
        path = os.path.join(out_dir, name)
        paths.append(path)
        if os.path.isfile(os.path.join(path, "model.safetensors")):
            continue
        tokenizer = build_tiny_tokenizer()
        torch.manual_seed(seed + len(paths))
        model = Qwen3VLForConditionalGeneration(tiny_config(tokenizer, hidden, layers, padding))
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        Qwen2VLImageProcessorPil(patch_size=TINY_PATCH, merge_size=2, temporal_patch_size=2,
                                 min_pixels=16 * 16, max_pixels=64 * 64).save_pretrained(path)
    return paths[0], paths[1]


def load_processing(path: str, min_pixels: int, max_pixels: int):
    """(tokenizer, image_processor) from a hub id or folder; every image is resized (aspect kept) to
    between ``min_pixels`` and ``max_pixels`` pixels, whatever the folder's own processor says."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, min_pixels=min_pixels, max_pixels=max_pixels)
    return tokenizer, image_processor


def load_model(path: str, dtype: torch.dtype, device: torch.device,
               stay_on_cpu: bool = False) -> Qwen3VLForConditionalGeneration:
    """The model for computing on ``device``: flash-attn when installed and on CUDA (the `gpu` extra),
    PyTorch SDPA otherwise. ``stay_on_cpu``: loaded there, for FSDP2 to move it (``engines.shard_teacher``)."""
    attn = "sdpa"
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401
            attn = "flash_attention_2"
        except ImportError:
            pass
    model = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    return model if stay_on_cpu else model.to(device)


def lm_head(model) -> LMHead:
    """The output projection (weight [V_pad, D], bias, logit scale, soft-cap) as the kernels read it:
    the loss multiplies hidden states by it (no logits tensor)."""
    return LMHead.from_model(model)
