"""Per-GPU memory of a training run, computed from the models' parameter shapes (no weights needed).

``per_gpu_memory`` gives bytes per GPU for each part of a VA-OPD step; docs/trainer.md ("Memory per
GPU") prints it for Qwen3-VL-8B -> 2B on 8 GPUs, and which configurations fit which cards
(``python -m vaopd_trainer.memory``); tests/trainer/test_memory_table.py, test_fsdp.py and
test_teacher_shard.py check it against the tensors the tiny models really hold. With s the number of
shards (1 under DDP, the GPU count under FSDP2), P_i the parameter tensors of the student, and
shard(P_i) = ceil(rows_i / s) x the rest (FSDP2 splits each tensor by rows; the first rank holds the
largest piece):

- parameters  4 x sum shard(P_i)                fp32 master weights (bf16 only inside autocast / FSDP2's
                                                mixed precision)
- gradients   4 x sum shard(P_i)                fp32
- optimizer   8 x sum shard(P_i) + 4 x #tensors AdamW exp_avg and exp_avg_sq (fp32) and a step counter
                                                per tensor
- teacher     b_w x sum shard(T_i)              frozen (T_i its tensors, b_w = 2 with ``bf16``), s_t shards:
                                                1 with ``teacher_sharding: none`` (a whole copy per GPU), the
                                                GPU count with ``fsdp2``; 0 with ``teacher_offload`` (on the CPU)
- teacher_root   b_w x root unit                sharded teacher only: its gathered root (embeddings, LM head,
                                                mergers), during each teacher pass and while the kernels read
                                                the head (the student pass)
- teacher_layers b_w x 2 largest layers         sharded teacher only: the layer in use and the one prefetched,
                                                during the teacher passes
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

A step's peak is the largest of its phases over what it always holds (parameters, optimizer, teacher,
gathered): generation (kv_cache), the teacher passes (teacher_root + teacher_layers) and the student
pass (gradients + activations + teacher_root). ``teacher_offload`` copies the teacher host to device
every step (``offload_traffic``): in each of its 2 passes (1 for OPD) the root once and every layer once
per chunk of ``micro_batch_size`` rollouts (resharded after each chunk's forward), and the root once
more for the kernels' read: b_w x (2 x (root + ceil(R / m) x layers) + root), which is
2 x b_w x P_teacher + b_w x root when a pass is one chunk (``micro_batch_size: 0``).

Not counted: the one layer recomputed at a time in the backward, the loss kernel's workspace, the
teacher's hidden states (2 x N x D_teacher x b_w) and its per-layer activations (no gradient: one
layer at a time), allocator fragmentation, CUDA context (about 0.5-1 GiB; ``RESERVE_GIB``).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Dict, List

import torch

GIB = 1024 ** 3
RESERVE_GIB = 1.0  # left free on each card for what the table does not count (CUDA context, fragmentation)
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
                   bf16: bool = True, teacher_sharding: str = "none", teacher_offload: bool = False) -> Dict[str, int]:
    """Bytes per GPU for each part of a step (see the module docstring for the formulas)."""
    if engine not in ("ddp", "fsdp2"):
        raise ValueError(f"engine: expected 'ddp' or 'fsdp2', got {engine!r}")
    if teacher_sharding not in ("none", "fsdp2") or (teacher_offload and teacher_sharding == "none"):
        raise ValueError(f"teacher_sharding: expected 'none' or 'fsdp2' (offload needs fsdp2), "
                         f"got {teacher_sharding!r}")
    shards = gpus if engine == "fsdp2" else 1
    student = parameter_shapes(student_config)
    tensors = student["root"] + student["layer"]
    sharded = sum(shard_numel(s, shards) for s in tensors)
    teacher = parameter_shapes(teacher_config)
    teacher_shards = gpus if teacher_sharding == "fsdp2" else 1
    text, vision = student_config.text_config, student_config.vision_config
    act_bytes = 2 if (engine == "fsdp2" and bf16) else 4
    kv_bytes = 2 if bf16 else 4
    teacher_bytes = 2 if bf16 else 4
    out = {
        "parameters": 4 * sharded,
        "gradients": 4 * sharded,
        "optimizer": 8 * sharded + 4 * len(tensors),
        "teacher": 0 if teacher_offload else teacher_bytes * sum(
            shard_numel(s, teacher_shards) for s in teacher["root"] + teacher["layer"]),
        "teacher_root": 0,
        "teacher_layers": 0,
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
    if teacher_sharding == "fsdp2":
        out["teacher_root"] = teacher_bytes * sum(math.prod(s) for s in teacher["root"])
        out["teacher_layers"] = teacher_bytes * 2 * sum(math.prod(s) for s in teacher["largest_layer"])
    return out


def offload_traffic(teacher_config, work: Workload, bf16: bool = True, passes: int = 2) -> int:
    """Host-to-device bytes per step and GPU of ``teacher_offload`` (the module docstring's formula)."""
    teacher = parameter_shapes(teacher_config)
    root, layers = (sum(math.prod(s) for s in teacher[unit]) * (2 if bf16 else 4) for unit in ("root", "layer"))
    return passes * (root + math.ceil(work.rollouts / work.micro_batch) * layers) + root


def qwen3_vl_config(size: str):
    """The released Qwen3-VL-2B/4B/8B-Instruct architectures (their config.json values), for the table."""
    from transformers import Qwen3VLConfig

    text = dict(vocab_size=151936, head_dim=128, num_key_value_heads=8)
    vision = dict(num_heads=16, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                  num_position_embeddings=2304)
    if size in ("2B", "4B"):  # the same vision tower
        vision.update(depth=24, hidden_size=1024, intermediate_size=4096, deepstack_visual_indexes=[5, 11, 17])
        tied = True
    if size == "2B":
        text.update(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16)
    elif size == "4B":
        text.update(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32)
    elif size == "8B":
        text.update(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32)
        vision.update(depth=27, hidden_size=1152, intermediate_size=4304, deepstack_visual_indexes=[8, 16, 24])
        tied = False
    else:
        raise ValueError(f"size: expected '2B', '4B' or '8B', got {size!r}")
    vision.update(out_hidden_size=text["hidden_size"])
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tied)


# (label, engine, teacher_sharding, teacher_offload) of the configurations compared; with one GPU the
# student is not wrapped ("ddp": the same memory) and a sharded teacher only pays when offloaded
CONFIGURATIONS = {
    8: [("DDP, teacher replicated", "ddp", "none", False), ("DDP, teacher FSDP2", "ddp", "fsdp2", False),
        ("FSDP2, teacher replicated", "fsdp2", "none", False), ("FSDP2, teacher FSDP2", "fsdp2", "fsdp2", False),
        ("FSDP2, teacher FSDP2 + offload", "fsdp2", "fsdp2", True)],
    1: [("one process, teacher on the GPU", "ddp", "none", False),
        ("one process, teacher offloaded", "ddp", "fsdp2", True)],
}
STUDENT_STATES = ("parameters", "gradients", "optimizer")


def breakdown(work: Workload, gpus: int = 8, teacher: str = "8B") -> str:
    """A Markdown table (GiB per GPU) of every term for the 2B student, per configuration."""
    student, teacher_config = qwen3_vl_config("2B"), qwen3_vl_config(teacher)
    configurations = CONFIGURATIONS[8 if gpus > 1 else 1]
    columns = [per_gpu_memory(student, teacher_config, work, engine=engine, gpus=gpus, teacher_sharding=sharding,
                              teacher_offload=offload) for _, engine, sharding, offload in configurations]
    title = f"{teacher} -> 2B, GiB per GPU, {gpus} GPU{'s' if gpus > 1 else ''}"
    lines = [f"| {title} | " + " | ".join(c[0] for c in configurations) + " |", "|---|" + "---:|" * len(configurations)]
    for row in columns[0]:
        lines.append(f"| {row} | " + " | ".join(f"{c[row] / GIB:.2f}" for c in columns) + " |")
    lines.append("| **peak** (the largest phase) | " + " | ".join(f"**{peak(c) / GIB:.2f}**" for c in columns) + " |")
    return "\n".join(lines)


def fits(work: Workload, cards_gib: List[float], reserve_gib: float = RESERVE_GIB) -> str:
    """Which configurations fit which cards (peak + ``reserve_gib`` <= card), for 8B -> 2B and 4B -> 2B on
    8 GPUs and on 1; where none fits, the term that keeps it above."""
    cards = " | ".join(f"{card:g} GiB" for card in cards_gib)
    lines = [f"| teacher -> student | GPUs | configuration | peak GiB | {cards} |",
             "|---|---:|---|---:|" + ":-:|" * len(cards_gib)]
    notes = []
    student = qwen3_vl_config("2B")
    for teacher in ("8B", "4B"):
        for gpus, configurations in CONFIGURATIONS.items():
            parts = [per_gpu_memory(student, qwen3_vl_config(teacher), work, engine=engine, gpus=gpus,
                                    teacher_sharding=sharding, teacher_offload=offload)
                     for _, engine, sharding, offload in configurations]
            peaks = [peak(p) / GIB for p in parts]
            for (label, *_), value in zip(configurations, peaks):
                marks = " | ".join("yes" if value + reserve_gib <= card else "no" for card in cards_gib)
                lines.append(f"| {teacher} -> 2B | {gpus} | {label} | {value:.2f} | {marks} |")
            best = min(range(len(parts)), key=peaks.__getitem__)
            for card in cards_gib:
                if peaks[best] + reserve_gib > card:
                    states = sum(parts[best][k] for k in STUDENT_STATES) / GIB
                    notes.append(f"- {teacher} -> 2B on {gpus} x {card:g} GiB: nothing fits; the smallest peak "
                                 f"({configurations[best][0]}) is {peaks[best]:.2f} GiB, of which the student's fp32 "
                                 f"weights, gradients and AdamW state are {states:.2f} GiB")
    traffic = ", ".join(f"{teacher} {offload_traffic(qwen3_vl_config(teacher), work) / GIB:.1f} GiB"
                        for teacher in ("8B", "4B"))
    notes.append(f"- teacher_offload copies per step and GPU, host to device: {traffic} (2 passes x (root + "
                 f"{math.ceil(work.rollouts / work.micro_batch)} chunks x layers) + root)")
    return "\n".join(lines + [""] + notes)


def peak(parts: Dict[str, int]) -> int:
    """The largest phase of a step, over what every phase holds: generation (the KV cache; no
    gradients: they are freed after each update), the teacher passes (a sharded teacher's gathered
    root and layers) and the student pass (gradients, activations, the teacher's gathered head)."""
    states = parts["parameters"] + parts["optimizer"] + parts["teacher"] + parts["gathered"]
    return states + max(parts["kv_cache"], parts["teacher_root"] + parts["teacher_layers"],
                        parts["gradients"] + parts["activations"] + parts["teacher_root"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Per-GPU memory of Qwen3-VL distillation into 2B, and which "
                                                 "configurations fit which cards (docs/trainer.md)")
    parser.add_argument("--teacher", choices=("8B", "4B"), default="8B", help="of the per-term table")
    parser.add_argument("--gpus", type=int, default=8, help="of the per-term table")
    parser.add_argument("--card_gib", type=float, nargs="+", default=[24, 48, 80], help="GPU memory sizes to fit")
    parser.add_argument("--reserve_gib", type=float, default=RESERVE_GIB,
                        help="left free per card for what the table does not count (CUDA context, fragmentation)")
    parser.add_argument("--rollouts", type=int, default=8, help="per GPU: prompts per device x num_generations")
    parser.add_argument("--micro_batch", type=int, default=2)
    parser.add_argument("--prompt_tokens", type=int, default=356, help="text + visual tokens of one prompt")
    parser.add_argument("--completion_tokens", type=int, default=4096)
    parser.add_argument("--image_patches", type=int, default=1024)
    args = parser.parse_args(argv)
    work = Workload(rollouts=args.rollouts, micro_batch=args.micro_batch, prompt=args.prompt_tokens,
                    completion=args.completion_tokens, image_patches=args.image_patches)
    print(breakdown(work, args.gpus, args.teacher))
    print()
    print(fits(work, args.card_gib, args.reserve_gib))


if __name__ == "__main__":
    main()
