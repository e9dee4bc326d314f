"""Engine settings the trainer cannot honour fail at start, naming the accelerate config key."""
import pytest
import torch
from accelerate.utils import FullyShardedDataParallelPlugin

from vaopd_trainer import engines
from vaopd_trainer.config import TrainConfig


def _plugin(**overrides):
    settings = dict(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                    transformer_cls_names_to_wrap=["Linear"], state_dict_type="FULL_STATE_DICT")
    settings.update(overrides)
    return FullyShardedDataParallelPlugin(**settings)


@pytest.mark.parametrize("overrides, key", [
    (dict(state_dict_type="SHARDED_STATE_DICT"), "fsdp_state_dict_type"),
    (dict(activation_checkpointing=True), "fsdp_activation_checkpointing"),
    (dict(auto_wrap_policy="size_based_wrap"), "fsdp_auto_wrap_policy"),
    (dict(transformer_cls_names_to_wrap=["NoSuchLayer"]), "fsdp_transformer_layer_cls_to_wrap"),
])
def test_fsdp2_settings_that_would_be_ignored_are_refused(overrides, key):
    module = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=key):
        engines.shard_fsdp2(module, _plugin(**overrides))
    assert not engines.is_sharded(module)  # refused before anything was wrapped


def test_deepspeed_config_takes_the_trainer_settings():
    cfg = TrainConfig(max_grad_norm=0.5, per_device_train_batch_size=3)
    ds = {"gradient_clipping": "auto", "gradient_accumulation_steps": "auto", "train_micro_batch_size_per_gpu": "auto"}
    engines._fill_deepspeed_config(ds, cfg)
    assert ds == {"gradient_clipping": 0.5, "gradient_accumulation_steps": 1, "train_micro_batch_size_per_gpu": 3}
    with pytest.raises(ValueError, match="gradient_clipping"):
        engines._fill_deepspeed_config({"gradient_clipping": 1.0}, cfg)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        engines._fill_deepspeed_config({"gradient_accumulation_steps": 4}, cfg)
    with pytest.raises(ValueError, match="^deepspeed_config.zero_stage: 3 is not supported"):
        engines._fill_deepspeed_config({"zero_optimization": {"stage": 3}}, cfg)


class _Root(torch.nn.Module):
    """The shape of StudentLoss that shard_fsdp2 relies on: ``.model`` and ``run_on_student``."""

    def __init__(self):
        super().__init__()
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))  # the norm: root unit

    def forward(self, x, *, token_weight):
        return self.model(x), token_weight

    def run_on_student(self, fn, *args):
        return fn(self.model, *args)


def test_fsdp2_bf16_root_keeps_its_input_and_output_dtypes_and_gathers_for_run_on_student():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        plugin = _plugin()
        plugin.set_mixed_precision("bf16")
        module = engines.shard_fsdp2(_Root(), plugin)
        assert engines.is_sharded(module) and engines.is_sharded(module.model[0])
        assert not engines.is_sharded(module.model[1])
        out, weight = module(torch.randn(3, 4), token_weight=torch.rand(3, dtype=torch.float64))
        assert out.dtype == torch.bfloat16 and weight.dtype == torch.float64
        # outside a forward the root's parameters are DTensor shards; run_on_student gathers them
        engines.reshard(module)
        assert hasattr(module.model[1].weight, "full_tensor")
        seen = module.run_on_student(lambda model: (hasattr(model[1].weight, "full_tensor"), model[1].weight.dtype))
        assert seen == (False, torch.bfloat16)
    finally:
        dist.destroy_process_group()
