"""A tiny Qwen3-VL student/teacher pair, a processor and an image dataset, all built in memory.

TRL's vision path wants a ``ProcessorMixin``. ``Qwen3VLProcessor`` insists on a video processor, which
needs torchvision (absent beside the CPU torch wheel here), so ``ImageOnlyQwen3VLProcessor`` is the same
processor with the image processor and tokenizer only: it expands ``<|image_pad|>`` to the image's
visual-token count exactly as Qwen3VLProcessor does, and renders a Qwen-style chat template.
"""
from __future__ import annotations

import copy
from typing import List

import torch
from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vaopd_trainer.data import synthetic_sample
from vaopd_trainer.models import TINY_PATCH, build_tiny_tokenizer, tiny_config

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Same head rows for both models: TRL refuses a student and teacher with different vocab_size.
VOCAB_PADDING = 8


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template)


def processor() -> ImageOnlyQwen3VLProcessor:
    tokenizer = build_tiny_tokenizer()
    tokenizer.padding_side = "left"
    images = Qwen2VLImageProcessorPil(patch_size=TINY_PATCH, merge_size=2, temporal_patch_size=2,
                                      min_pixels=16 * 16, max_pixels=64 * 64)
    return ImageOnlyQwen3VLProcessor(image_processor=images, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def models(seed: int = 0):
    """(student, teacher): random tiny Qwen3-VL models, float32, the teacher wider and deeper."""
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    student = Qwen3VLForConditionalGeneration(tiny_config(tokenizer, 64, 1, VOCAB_PADDING))
    torch.manual_seed(seed + 1)
    teacher = Qwen3VLForConditionalGeneration(tiny_config(tokenizer, 96, 2, VOCAB_PADDING))
    return student, teacher


def never_sample(proc) -> List[int]:
    """Vision placeholders and head rows past the tokenizer: ids a completion must not contain."""
    tok = proc.tokenizer
    vision = [tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                                                     "<|video_pad|>")]
    return vision + list(range(len(tok), len(tok) + VOCAB_PADDING))


def examples(count: int, seed: int = 0) -> List[dict]:
    """Conversational prompts with one 64 x 64 image each (the trainer's synthetic red-dot task)."""
    out = []
    for i in range(count):
        sample = synthetic_sample(seed, i)
        out.append({"prompt": [{"role": "user", "content": sample.question}], "image": sample.image})
    return out


def dataset(count: int, seed: int = 0):
    from datasets import Dataset

    return Dataset.from_list(examples(count, seed))


def config_kwargs(tmp_path, **overrides) -> dict:
    """A VAOPDConfig / DistillationConfig for seconds-long CPU runs."""
    values = dict(output_dir=str(tmp_path / "run"), use_cpu=True, bf16=False, gradient_checkpointing=False,
                  report_to="none", save_strategy="no", logging_steps=1, max_completion_length=6,
                  per_device_train_batch_size=2, learning_rate=1e-3, seed=0, dataloader_num_workers=0,
                  top_k=0, temperature=1.0)
    values.update(overrides)
    return values


def clone(model):
    return copy.deepcopy(model)
