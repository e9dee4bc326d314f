"""VA-OPD through TRL, offline on a CPU: ``VAOPDTrainer`` distils the shipped tiny teacher
(experiments/assets/teacher) into the shipped tiny student on the demo's stripe-width images.

    python examples/trl_offline.py                   # 4 steps, about a minute on 2 cores
    python examples/trl_offline.py --steps 2 --output_dir /tmp/trl_run

The recipe is docs/integrations.md's, with two changes any local pair may need:

- The processor: ``AutoProcessor`` builds Qwen3-VL's video processor, which needs torchvision. VA-OPD
  uses images only, so the processor here is Qwen3-VL's with its image processor and tokenizer.
- The heads: both are padded past the shared 103-token tokenizer, to 111 rows (student) and 119
  (teacher). TRL refuses a pair whose ``vocab_size`` differs, so the teacher's head is cut to the
  student's rows: only padding goes. ``vocab_size=len(tokenizer)`` keeps the padding rows out of every
  softmax, and generation is told never to sample them.
"""
from __future__ import annotations

import argparse
import io
import os

import pyarrow.parquet as pq
from datasets import Dataset
from PIL import Image
from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vaopd_kernels.integrations.trl import VAOPDConfig, VAOPDTrainer

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments", "assets")
PROMPT_SUFFIX = " Put the final answer in \\boxed{}."  # the format the tiny models were trained with


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3VLProcessor without the video processor (the one part that needs torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template)


def load_processor(path: str) -> ImageOnlyQwen3VLProcessor:
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    return ImageOnlyQwen3VLProcessor(Qwen2VLImageProcessorPil.from_pretrained(path), tokenizer,
                                     chat_template=tokenizer.chat_template)


def load_dataset(path: str, count: int) -> Dataset:
    """The first ``count`` demo problems as TRL conversational prompts with one image each."""
    rows = pq.read_table(path).slice(0, count).to_pylist()
    return Dataset.from_list([{"prompt": [{"role": "user", "content": row["question"] + PROMPT_SUFFIX}],
                               "image": Image.open(io.BytesIO(row["image"])).convert("RGB")} for row in rows])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--output_dir", default="runs/trl_offline")
    args = parser.parse_args(argv)

    processor = load_processor(os.path.join(ASSETS, "student"))
    tokenizer = processor.tokenizer
    student = Qwen3VLForConditionalGeneration.from_pretrained(os.path.join(ASSETS, "student"))
    teacher = Qwen3VLForConditionalGeneration.from_pretrained(os.path.join(ASSETS, "teacher"))
    rows = student.config.text_config.vocab_size
    assert len(tokenizer) <= rows  # every cut row is padding
    teacher.resize_token_embeddings(rows, mean_resizing=False)
    # ids generation must never produce: the head padding and the vision placeholders
    vision = tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    never = vision + list(range(len(tokenizer), rows))

    config = VAOPDConfig(
        output_dir=args.output_dir, method="va_opd", num_generations=4, per_device_train_batch_size=8,
        max_steps=args.steps, learning_rate=1e-3, beta=1.0, temperature=1.0, top_k=0, max_completion_length=40,
        vocab_size=len(tokenizer), generation_kwargs=dict(suppress_tokens=never),
        use_cpu=True, bf16=False, gradient_checkpointing=False, dataloader_num_workers=0,
        logging_steps=1, save_strategy="no", report_to="none", seed=0)
    dataset = load_dataset(os.path.join(ASSETS, "demo", "train.parquet"), count=8 * args.steps)
    trainer = VAOPDTrainer(student, teacher, args=config, train_dataset=dataset, processing_class=processor)
    trainer.train()
    for entry in trainer.state.log_history:
        if "loss" in entry:  # va_high_share is None in a batch without any visual advantage
            print(f"step {entry['step']}: loss={entry['loss']:.4g} kl_mean={entry['vaopd/kl_mean']:.4g} "
                  f"va_mean={entry['vaopd/va_mean']:.4g} va_high_share={entry['vaopd/va_high_share']}")
    return trainer


if __name__ == "__main__":
    main()
