"""The per-GPU memory formula (vaopd_trainer.memory) against what the tiny models really hold.

Parameters, gradients, optimizer state, teacher and KV cache are counted exactly; the activations
kept between forward and backward (gradient checkpointing) within the tolerance stated in
docs/trainer.md. The FSDP2 shard sizes are checked in test_fsdp.py and, for the sharded teacher, in
test_teacher_shard.py (2 processes).
"""
import gc
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vaopd_trainer.memory import Workload, per_gpu_memory
from vaopd_trainer.models import lm_head
from vaopd_trainer.train import Trainer

ACTIVATION_TOLERANCE = 0.2  # docs/trainer.md states the same


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class _Created(TorchDispatchMode):
    """Weak references to every tensor an operation creates."""

    def __init__(self):
        super().__init__()
        self.refs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.refs += [weakref.ref(t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        return out


def kept_for_backward(run, existing) -> int:
    """Bytes of the storages created by ``run()`` that are still alive while its loss is: the activations."""
    created = _Created()
    with created:
        loss = run()
    gc.collect()
    alive = {}
    for ref in created.refs:
        tensor = ref()
        if tensor is not None and tensor.untyped_storage().data_ptr() not in existing:
            alive[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(alive.values()), loss


def test_memory_formula_matches_the_tiny_models(make_config):
    trainer = Trainer(make_config(gradient_checkpointing=True))
    torch.manual_seed(0)
    batch = trainer.rollouts(0)
    th = trainer.teacher(batch)
    td = trainer.teacher(batch, degraded=True)
    rows, width = batch.input_ids.shape
    work = Workload(rollouts=rows, micro_batch=rows, prompt=batch.prompt_len, completion=width - batch.prompt_len,
                    image_patches=int(batch.image_grid_thw[0].prod()))
    estimate = per_gpu_memory(trainer.student.config, trainer.teacher.model.config, work, engine="ddp", gpus=1, bf16=False)
    params = list(trainer.inner.parameters())
    assert estimate["parameters"] == nbytes(params)
    assert estimate["teacher"] == nbytes(trainer.teacher.parameters())

    teacher_weight = lm_head(trainer.teacher.model)
    coefficients = trainer.inner.coefficients(batch, th, td, teacher_weight, num_prompts=2, num_rollouts=rows)
    token_weight = coefficients.token_weight
    existing = {t.untyped_storage().data_ptr() for t in [*params, *trainer.teacher.parameters(), th, td, token_weight,
                                                         *[v for v in vars(batch).values() if torch.is_tensor(v)]]}
    trainer.module.train()
    activations, loss = kept_for_backward(lambda: trainer.module(batch, th, teacher_weight, token_weight)[0], existing)
    ratio = activations / estimate["activations"]
    print(f"activations: measured {activations} B, formula {estimate['activations']} B, ratio {ratio:.3f}")
    assert abs(ratio - 1) <= ACTIVATION_TOLERANCE, (activations, estimate["activations"])

    trainer.acc.backward(loss)
    assert estimate["gradients"] == nbytes(p.grad for p in params) and all(p.grad is not None for p in params)
    trainer.optimizer.step()
    state = [t for s in trainer.optimizer.state.values() for t in s.values()]
    assert estimate["optimizer"] == nbytes(state)

    with torch.no_grad():
        cache = trainer.student(**batch.model_inputs(), use_cache=True).past_key_values
    assert estimate["kv_cache"] == nbytes(t for layer in cache.layers for t in (layer.keys, layer.values))


def test_table_fits_the_paper_run_into_24_gib_cards_only_with_the_sharded_teacher(capsys):
    from vaopd_trainer.memory import main

    main(["--card_gib", "24"])
    rows = {line.split(" | ")[2]: line.split(" | ")[-1].strip(" |") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| 8B -> 2B | 8 |")}
    assert rows["FSDP2, teacher FSDP2"] == "yes" and rows["FSDP2, teacher replicated"] == "no"
