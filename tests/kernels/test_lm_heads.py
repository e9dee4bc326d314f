"""vaopd_kernels.integrations.heads: a head the kernels cannot read is refused, naming the argument
and the field; a plain projection passes."""
import pytest
import torch
from transformers import PretrainedConfig

from vaopd_kernels.integrations.heads import LOGIT_TRANSFORMS, plain_lm_head


class _Model(torch.nn.Module):
    def __init__(self, bias=False, **config):
        super().__init__()
        self.config = PretrainedConfig(**config)
        self.lm_head = torch.nn.Linear(4, 7, bias=bias)

    def get_output_embeddings(self):
        return self.lm_head


def test_a_plain_head_passes():
    model = _Model(logit_scale=1.0, final_logit_softcapping=None)
    assert plain_lm_head(model) is model.lm_head


@pytest.mark.parametrize("field", LOGIT_TRANSFORMS)
def test_a_logit_transform_is_refused_naming_the_field(field):
    with pytest.raises(NotImplementedError, match=f"teacher_model: config.{field} = 0.5"):
        plain_lm_head(_Model(**{field: 0.5}), "teacher_model")


def test_a_head_bias_is_refused():
    with pytest.raises(NotImplementedError, match="student_model: _Model's LM head has a bias"):
        plain_lm_head(_Model(bias=True), "student_model")
