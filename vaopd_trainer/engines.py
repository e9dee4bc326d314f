"""How the student is wrapped for each engine the shipped accelerate configs launch, in one place.

- DDP (``configs/accelerate/ddp*.yaml``): ``accelerate.prepare`` wraps the module; non-final
  micro-batches run under ``no_sync``.
- FSDP2 (``fsdp2.yaml``): ``shard_fsdp2`` below is the one function that wraps the student, called
  by the trainer under ``accelerate launch`` and by ``tests/trainer/test_fsdp.py`` with the plugin
  accelerate builds from the same YAML. accelerate only supplies the settings; the module and the
  optimizer never pass through ``accelerate.prepare`` (so the CPU test runs exactly this path).
- DeepSpeed ZeRO-2 (``deepspeed_zero2.yaml``): ``accelerate.prepare`` builds the engine. Its
  ``backward`` steps the engine whenever ``sync_gradients`` is true, so ``micro_batch_sync`` marks
  only the last micro-batch as the accumulation boundary: one optimizer update per rollout batch.
"""
from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, parse_flag_from_env

from .config import TrainConfig


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """The Accelerator for ``cfg``: one scheduler step per optimizer update whatever the process count.

    Without CUDA, ``cpu=True`` lets torchrun / ``accelerate launch`` start gloo data parallelism. A
    DeepSpeed launch (accelerate's ``ACCELERATE_USE_DEEPSPEED``) cannot take ``cpu=True`` (accelerate
    would silently fall back to DDP), so on a CPU it gets the gloo backend explicitly instead.
    """
    cuda = torch.cuda.is_available()
    deepspeed_on_cpu = not cuda and parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")
    return Accelerator(mixed_precision="bf16" if cfg.bf16 else "no", step_scheduler_with_optimizer=False,
                       cpu=not cuda and not deepspeed_on_cpu,
                       kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if deepspeed_on_cpu else None)


def describe(accelerator: Accelerator, module: torch.nn.Module) -> str:
    """What the run is on, printed at start-up so a launcher that silently fell back to one process shows."""
    world = accelerator.num_processes
    if is_sharded(module):
        engine = "FSDP2"
    elif accelerator.distributed_type == DistributedType.DEEPSPEED:
        engine = f"DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.deepspeed_config['zero_optimization']['stage']}"
    elif world > 1:
        engine = "DDP"
    else:
        engine = "single process"
    backend = f", {torch.distributed.get_backend()}" if torch.distributed.is_initialized() else ""
    return f"{world} process{'es' if world > 1 else ''}, {engine} on {accelerator.device.type}{backend}"


def fsdp2_plugin(accelerator: Accelerator):
    """accelerate's FSDP plugin when the run was launched with an FSDP config, else None."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return None
    return accelerator.state.fsdp_plugin


def _check_fsdp2_plugin(plugin) -> None:
    """Refuse settings ``shard_fsdp2`` would otherwise ignore (each names its YAML key)."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    problems = []
    if plugin.fsdp_version != 2:
        problems.append(f"fsdp_version: {plugin.fsdp_version}; only FSDP2 (fsdp_version: 2) is supported")
    policy = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)
    if policy is not transformer_auto_wrap_policy or not plugin.transformer_cls_names_to_wrap:
        problems.append("fsdp_auto_wrap_policy: must be TRANSFORMER_BASED_WRAP with fsdp_transformer_layer_cls_to_wrap")
    if plugin.activation_checkpointing:
        problems.append("fsdp_activation_checkpointing: use the trainer's gradient_checkpointing instead")
    if plugin.cpu_ram_efficient_loading:
        problems.append("fsdp_cpu_ram_efficient_loading: every rank loads the model before sharding")
    if "FULL_STATE_DICT" not in str(plugin.state_dict_type):
        problems.append(f"fsdp_state_dict_type: {plugin.state_dict_type}; checkpoints hold the gathered "
                        "FULL_STATE_DICT")
    if problems:
        raise ValueError("FSDP config not supported by vaopd_trainer: " + "; ".join(problems))


def _shard_units(module: torch.nn.Module, names, unit: dict, root: dict) -> None:
    """``fully_shard`` (with the settings ``unit``) each submodule whose class is named in ``names``,
    then ``module`` itself (settings ``root``): the root unit, holding every other parameter."""
    from torch.distributed.fsdp import fully_shard

    for sub in list(module.modules()):
        if type(sub).__name__ in names:
            fully_shard(sub, **unit)
    fully_shard(module, **root)


def shard_fsdp2(module: torch.nn.Module, plugin) -> torch.nn.Module:
    """``fully_shard`` the StudentLoss as the FSDP2 config says, in place; returns it.

    Each module whose class is named in ``transformer_cls_names_to_wrap`` (decoder layers, vision
    blocks) becomes its own unit with the plugin's ``reshard_after_forward``, mixed precision and
    offload policy. Everything else (embeddings, final norm, **LM head**, vision merger) stays in the
    root unit (StudentLoss), gathered for the whole root forward: the loss kernel reads the full
    LM-head matrix there. ``run_on_student`` is registered as a root forward method, so generation
    and evaluation, which never call ``forward``, gather the root too.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, register_fsdp_forward_method

    _check_fsdp2_plugin(plugin)
    names = set(plugin.transformer_cls_names_to_wrap)
    found = {type(m).__name__ for m in module.modules()}
    if not names <= found:
        raise ValueError(f"fsdp_transformer_layer_cls_to_wrap: {sorted(names - found)} not in the student model")
    mixed_precision = plugin.mixed_precision_policy or MixedPrecisionPolicy()
    # the root keeps its parameters between forward and backward. Its inputs and outputs keep their
    # dtypes: the micro-batch token weights are fp64 coefficients and the loss, per-token KL and
    # metrics are computed in fp32 (accelerate's bf16 policy would round both to bf16)
    _shard_units(module, names,
                 unit=dict(reshard_after_forward=plugin.reshard_after_forward, mp_policy=mixed_precision,
                           offload_policy=plugin.cpu_offload),
                 root=dict(mp_policy=dataclasses.replace(mixed_precision, cast_forward_inputs=False, output_dtype=None),
                           offload_policy=plugin.cpu_offload))
    register_fsdp_forward_method(module, "run_on_student")
    # transformers' generate then runs in lock-step on every rank (synced_gpus): a rank whose rollouts
    # all ended keeps joining the other ranks' forwards, whose layers all-gather across ranks
    module.model._is_fsdp_managed_module = True
    return module


def shard_teacher(teacher: torch.nn.Module, offload: bool) -> torch.nn.Module:
    """``fully_shard`` the frozen ``loss.Teacher`` over all processes, in place; returns it.

    The units are the model's own ``_no_split_modules`` (Qwen3-VL: each decoder layer and vision
    block, as ``configs/accelerate/fsdp2.yaml`` names them for the student) and the root (embeddings,
    final norm, mergers, LM head), all resharded after each forward: a pass holds the root and the
    layer in use (plus the one prefetched). No gradients, no optimizer state, no mixed precision
    (the teacher is loaded in its compute dtype). ``offload``: the shards live on the CPU and each
    all-gather copies them in first (FSDP2's ``CPUOffloadPolicy``). Works beside any student engine;
    with one process it makes a process group of one, which FSDP2 needs.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

    if not dist.is_initialized():  # accelerate's end_training destroys it with the run's
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", store=dist.HashStore(),
                                rank=0, world_size=1)
    # pinned host memory makes the copies asynchronous; it needs CUDA
    policy = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if offload else OffloadPolicy()
    settings = dict(reshard_after_forward=True, offload_policy=policy)
    _shard_units(teacher, set(teacher.model._no_split_modules), unit=settings, root=settings)
    return teacher


@contextmanager
def gathered(module: torch.nn.Module):
    """Inside the block, the root unit of an FSDP2 ``module`` holds its full parameters (all-gathered,
    then resharded on exit); a plain call for a module that is not sharded."""
    if not is_sharded(module):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


def is_sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


class FullStateCheckpoint:
    """The FSDP2 student and optimizer as full (unsharded) state dicts, for ``accelerator.save_state``.

    Registered with ``register_for_checkpointing``: accelerate calls ``state_dict`` on every rank
    (the gather is collective), writes rank 0's copy, and on resume calls ``load_state_dict`` on every
    rank, which keeps its own shard of the full tensors.
    """

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.module, self.optimizer = module, optimizer

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        reshard(self.module)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return {"model": get_model_state_dict(self.module, options=options),
                "optimizer": get_optimizer_state_dict(self.module, self.optimizer, options=options)}

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        reshard(self.module)
        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.module, state["model"], options=options)
        set_optimizer_state_dict(self.module, self.optimizer, state["optimizer"], options=options)


def reshard(module: torch.nn.Module) -> None:
    """Put every FSDP2 unit back to its shard (the root stays gathered after a forward until backward)."""
    from torch.distributed.fsdp import FSDPModule

    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.reshard()


def full_student_state(module: torch.nn.Module) -> Optional[dict]:
    """The student's full state dict for ``save_pretrained`` under FSDP2 (collective: call on every rank;
    rank 0 gets the tensors), None for the other engines (whose ``state_dict`` is already full)."""
    if not is_sharded(module):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    reshard(module)
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {name[len("model."):]: tensor for name, tensor in state.items()}


def prepare(accelerator: Accelerator, module, optimizer, scheduler, cfg: TrainConfig):
    """(module, optimizer, scheduler) ready to train on the launched engine."""
    if is_sharded(module):
        # FSDP2: shard_fsdp2 already wrapped the module; accelerate keeps the scheduler and, through
        # FullStateCheckpoint, saves and restores the gathered model and optimizer with its RNG states
        accelerator.register_for_checkpointing(FullStateCheckpoint(module, optimizer))
        return module, optimizer, accelerator.prepare(scheduler)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        _fill_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config, cfg)
    return accelerator.prepare(module, optimizer, scheduler)


def _fill_deepspeed_config(ds: dict, cfg: TrainConfig) -> None:
    """Settings the trainer owns: clipping at ``max_grad_norm``, no DeepSpeed-side accumulation;
    ZeRO stage 1 or 2."""
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage == 3:
        # Generation, evaluation, checkpoints and exact resume here read whole parameters on every
        # rank (ZeRO-1/2) or gather FSDP2's root unit; ZeRO-3's per-submodule gathering is untested
        # on all of them. FSDP2 (with teacher_sharding: fsdp2) is the sharded-parameter engine.
        raise ValueError("deepspeed_config.zero_stage: 3 is not supported by the vaopd trainer; use ZeRO-1/2, "
                         "or fsdp2.yaml to shard parameters (and teacher_sharding: fsdp2 for the teacher)")
    clip = ds.get("gradient_clipping", "auto")
    if clip == "auto":
        ds["gradient_clipping"] = cfg.max_grad_norm
    elif not math.isclose(float(clip), cfg.max_grad_norm):
        raise ValueError(f"deepspeed_config.gradient_clipping: {clip} differs from max_grad_norm "
                         f"{cfg.max_grad_norm}; set it to auto (the trainer's value is used)")
    if ds.get("gradient_accumulation_steps", "auto") not in ("auto", 1):
        raise ValueError("deepspeed_config.gradient_accumulation_steps: must be 1 or auto; the trainer "
                         "accumulates micro-batches itself (micro_batch_size) and updates once per rollout batch")
    ds["gradient_accumulation_steps"] = 1
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds["train_micro_batch_size_per_gpu"] = cfg.per_device_train_batch_size  # bookkeeping only


@contextmanager
def micro_batch_sync(accelerator: Accelerator, module, last: bool):
    """Context for one micro-batch's forward/backward; gradients are reduced and applied once.

    DDP: skip the all-reduce until the last micro-batch. DeepSpeed: only the last micro-batch is a
    gradient-accumulation boundary, where ``accelerator.backward`` steps the engine (clip, AdamW,
    schedule). FSDP2: every micro-batch reduce-scatters into the sharded gradients (skipping the
    sync would hold a full unsharded gradient per rank); the trainer steps once afterwards.
    """
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.gradient_state._set_sync_gradients(last)  # as transformers' Trainer does
        try:
            yield
        finally:
            accelerator.gradient_state._set_sync_gradients(True)
    elif last or is_sharded(module):
        yield
    else:
        with accelerator.no_sync(module):
            yield
