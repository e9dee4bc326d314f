"""Per-GPU memory of a training run, computed from the models' parameter shapes (no weights needed).

``per_gpu_memory`` gives bytes per GPU for each part of a VA-OPD step; docs/trainer.md ("Memory per
GPU") prints it for Qwen3-VL-8B -> 2B on 8 GPUs (``python -m vaopd_trainer.memory``) and
tests/trainer/test_memory_table.py checks it against the tensors the tiny models really hold. With s the
number of shards (1 under DDP, the GPU count under FSDP2), P_i the parameter tensors of the student,
and shard(P_i) = ceil(rows_i / s) x the rest (FSDP2 splits each tensor by rows; the first rank holds
the largest piece):

- parameters  4 x sum shard(P_i)                fp32 master weights (bf16 only inside autocast / FSDP2's
                                                mixed precision)
- gradients   4 x sum shard(P_i)                fp32
- optimizer   8 x sum shard(P_i) + 4 x #tensors AdamW exp_avg and exp_avg_sq (fp32) and a step counter
                                                per tensor
- teacher     b_w x P_teacher                   frozen, bf16 with ``bf16``, replicated under both engines
- gathered    2 x (root unit + 2 largest layers) FSDP2 only: the all-gathered bf16 copy of the root unit
                                                (embeddings, LM head, mergers) held through the student
                                                pass, plus the layer in use and the one prefetched
- activations b_a x m x ((L + 2) x S x D + C x D + (L_v + 4 x M) x V x D_v)
                                                with gradient checkpointing, for one micro-batch of m
                                                rollouts (S tokens, C of them completion, V patches):
                                                the input of every text decoder layer (L layers of
                                                width D), the final norm's input and output, the packed
                                                response rows the loss keeps, the input of every vision
                                                block (L_v of width D_v) and four V x D_v tensors in
                                                each of the M patch mergers (1 + deepstack). b_a = 4
                                                under DDP (autocast keeps the fp32 residual stream), 2
                                                under FSDP2 (parameters computed in bf16)
- kv_cache    2 x L x R x S x H_kv x d x b_kv   keys and values of all R rollouts on the GPU during
                                                generation (H_kv heads of size d), b_kv = 2 with bf16

Not counted: the one layer recomputed at a time in the backward, the loss kernel's workspace,
allocator fragmentation, CUDA context (about 0.5-1 GiB).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Dict, List

import torch

GIB = 1024 ** 3
# the FSDP2 units of configs/accelerate/fsdp2.yaml (fsdp_transformer_layer_cls_to_wrap)
TEXT_LAYER, VISION_BLOCK = "Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"


@dataclass
class Workload:
    """What one GPU processes per step."""
    rollouts: int  # per_device_train_batch_size x num_generations
    micro_batch: int  # rollouts per student forward/backward
    prompt: int  # tokens per prompt: text + visual tokens (padded batch: the longest prompt)
    completion: int  # completion tokens per rollout (max_completion_length)
    image_patches: int  # vision patches per image, before the 2 x 2 merge

    @property
    def sequence(self) -> int:
        return self.prompt + self.completion


def parameter_shapes(config) -> Dict[str, List[torch.Size]]:
    """Shapes of a Qwen3-VL model's parameters (tied weights once), grouped into FSDP2 units:
    ``layer`` (each text decoder layer / vision block is one unit) and ``root`` (all the rest)."""
    from transformers import Qwen3VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    in_layers = {id(p) for m in model.modules() if type(m).__name__ in (TEXT_LAYER, VISION_BLOCK)
                 for p in m.parameters()}
    groups: Dict[str, List[torch.Size]] = {"root": [], "layer": []}
    for p in model.parameters():
        groups["layer" if id(p) in in_layers else "root"].append(p.shape)
    groups["largest_layer"] = max(
        ([p.shape for p in m.parameters()] for m in model.modules() if type(m).__name__ in (TEXT_LAYER, VISION_BLOCK)),
        key=lambda shapes: sum(math.prod(s) for s in shapes))
    return groups


def shard_numel(shape: torch.Size, shards: int) -> int:
    """Elements of the largest FSDP2 shard of a tensor (rows split in ``shards`` chunks)."""
    if len(shape) == 0:
        return 1
    return math.ceil(shape[0] / shards) * math.prod(shape[1:])


def per_gpu_memory(student_config, teacher_config, work: Workload, *, engine: str, gpus: int,
                   bf16: bool = True) -> Dict[str, int]:
    """Bytes per GPU for each part of a step (see the module docstring for the formulas)."""
    if engine not in ("ddp", "fsdp2"):
        raise ValueError(f"engine: expected 'ddp' or 'fsdp2', got {engine!r}")
    shards = gpus if engine == "fsdp2" else 1
    student = parameter_shapes(student_config)
    tensors = student["root"] + student["layer"]
    sharded = sum(shard_numel(s, shards) for s in tensors)
    teacher = parameter_shapes(teacher_config)
    teacher_numel = sum(math.prod(s) for s in teacher["root"] + teacher["layer"])
    text, vision = student_config.text_config, student_config.vision_config
    act_bytes = 2 if (engine == "fsdp2" and bf16) else 4
    kv_bytes = 2 if bf16 else 4
    out = {
        "parameters": 4 * sharded,
        "gradients": 4 * sharded,
        "optimizer": 8 * sharded + 4 * len(tensors),
        "teacher": (2 if bf16 else 4) * teacher_numel,
        "gathered": 0,
        "activations": act_bytes * work.micro_batch * (
            (text.num_hidden_layers + 2) * work.sequence * text.hidden_size + work.completion * text.hidden_size
            + (vision.depth + 4 * (1 + len(vision.deepstack_visual_indexes))) * work.image_patches * vision.hidden_size),
        "kv_cache": 2 * text.num_hidden_layers * work.rollouts * work.sequence * text.num_key_value_heads
        * text.head_dim * kv_bytes,
    }
    if engine == "fsdp2":
        gathered = sum(math.prod(s) for s in student["root"]) + 2 * sum(math.prod(s) for s in student["largest_layer"])
        out["gathered"] = (2 if bf16 else 4) * gathered
    return out


def qwen3_vl_config(size: str):
    """The released Qwen3-VL-2B/8B-Instruct architectures (their config.json values), for the table."""
    from transformers import Qwen3VLConfig

    text = dict(vocab_size=151936, head_dim=128, num_key_value_heads=8)
    vision = dict(num_heads=16, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                  num_position_embeddings=2304)
    if size == "2B":
        text.update(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16)
        vision.update(depth=24, hidden_size=1024, intermediate_size=4096, out_hidden_size=2048,
                      deepstack_visual_indexes=[5, 11, 17])
        tied = True
    elif size == "8B":
        text.update(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32)
        vision.update(depth=27, hidden_size=1152, intermediate_size=4304, out_hidden_size=4096,
                      deepstack_visual_indexes=[8, 16, 24])
        tied = False
    else:
        raise ValueError(f"size: expected '2B' or '8B', got {size!r}")
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tied)


def table(work: Workload, gpus: int = 8) -> str:
    """A Markdown table (GiB per GPU) for student 2B / teacher 8B under DDP and FSDP2."""
    student, teacher = qwen3_vl_config("2B"), qwen3_vl_config("8B")
    columns = {engine: per_gpu_memory(student, teacher, work, engine=engine, gpus=gpus) for engine in ("ddp", "fsdp2")}
    lines = [f"| per GPU ({gpus} GPUs), GiB | DDP | FSDP2 |", "|---|---:|---:|"]
    for row in columns["ddp"]:
        lines.append(f"| {row} | {columns['ddp'][row] / GIB:.2f} | {columns['fsdp2'][row] / GIB:.2f} |")
    peaks = {engine: peak(c) for engine, c in columns.items()}
    lines.append(f"| **peak** (max of the two phases) | {peaks['ddp'] / GIB:.2f} | {peaks['fsdp2'] / GIB:.2f} |")
    return "\n".join(lines)


def peak(parts: Dict[str, int]) -> int:
    """The larger of the two phases of a step: generation (no gradients: they are freed after each
    update; the KV cache) and the student pass (gradients and activations; the cache is gone)."""
    states = parts["parameters"] + parts["optimizer"] + parts["teacher"] + parts["gathered"]
    return states + max(parts["kv_cache"], parts["gradients"] + parts["activations"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Per-GPU memory, Qwen3-VL-8B -> 2B (docs/trainer.md)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--rollouts", type=int, default=8, help="per GPU: prompts per device x num_generations")
    parser.add_argument("--micro_batch", type=int, default=2)
    parser.add_argument("--prompt_tokens", type=int, default=356, help="text + visual tokens of one prompt")
    parser.add_argument("--completion_tokens", type=int, default=4096)
    parser.add_argument("--image_patches", type=int, default=1024)
    args = parser.parse_args(argv)
    work = Workload(rollouts=args.rollouts, micro_batch=args.micro_batch, prompt=args.prompt_tokens,
                    completion=args.completion_tokens, image_patches=args.image_patches)
    print(table(work, args.gpus))


if __name__ == "__main__":
    main()
