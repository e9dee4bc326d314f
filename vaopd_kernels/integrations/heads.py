"""The LM head of a transformers model as the kernels read it: one plain projection, logits = W h.

Checked when a trainer is built, before any generation: a head with a bias, a logit scale or a
final-logit soft-cap (Gemma 2/3n soft-cap at 30 by default, Cohere scales by 0.0625) would
otherwise make every loss silently wrong, or fail only at the first loss after a generation pass.
"""
import torch

# config fields (of the text config) that change logits after the projection; None or 1 means off
LOGIT_TRANSFORMS = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling",
                    "final_logit_softcapping")


def plain_lm_head(model, argument: str = "model") -> torch.nn.Module:
    """``model``'s output projection; raises NotImplementedError naming ``argument`` and the field for
    what the kernels do not model (a head bias, a logit scale, soft-capping)."""
    head = model.get_output_embeddings()
    if head is None:
        raise NotImplementedError(f"{argument}: {type(model).__name__} has no output embeddings (LM head)")
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError(f"{argument}: {type(model).__name__}'s LM head has a bias, which vaopd_kernels "
                                  "does not support (logits = head @ hidden only)")
    config = model.config.get_text_config()
    for name in LOGIT_TRANSFORMS:
        if getattr(config, name, None) not in (None, 1, 1.0):
            raise NotImplementedError(f"{argument}: config.{name} = {getattr(config, name)!r} is not supported by "
                                      "vaopd_kernels (logits = head @ hidden only)")
    return head
