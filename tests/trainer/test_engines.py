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
