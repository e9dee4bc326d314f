"""Decoding settings for rollouts and evaluation, taken from our config and nothing else.

``transformers``' ``generate`` fills every setting left unset from the model folder's
``generation_config.json`` and then from its own defaults (top-k 50). Qwen3-VL folders ship
top-k / top-p / temperature / repetition penalty of their own, so a run would silently sample from a
different distribution than the config says. ``decoding_config`` therefore states every setting, and
``generate`` runs with it standing in for the model's own config during the call, so nothing is merged
in from the folder. Only the stop tokens are read from the model: all its EOS ids (Qwen3-VL-Instruct
lists ``<|im_end|>`` and ``<|endoftext|>``) plus the tokenizer's.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Sequence

from transformers import GenerationConfig


@dataclass(frozen=True)
class Sampling:
    """TRL's names; ``top_k`` 0 and ``min_p`` 0 mean off; ``do_sample=False`` is greedy decoding."""
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    @classmethod
    def for_rollouts(cls, cfg) -> "Sampling":
        return cls(True, cfg.temperature, cfg.top_p, cfg.top_k, cfg.min_p, cfg.repetition_penalty)

    @classmethod
    def for_eval(cls, cfg) -> "Sampling":
        """Validation samples from the plain distribution at ``eval_temperature`` / ``eval_top_p`` /
        ``eval_top_k`` (no min-p, no repetition penalty), or greedily when ``eval_do_sample`` is false."""
        return cls(cfg.eval_do_sample, cfg.eval_temperature, cfg.eval_top_p, cfg.eval_top_k)


def stop_token_ids(model, tokenizer) -> List[int]:
    """Every EOS id of the model's generation config, plus the tokenizer's EOS."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("student_model: neither its generation_config nor its tokenizer names an EOS token")
    return sorted(set(int(i) for i in ids))


def decoding_config(sampling: Sampling, *, max_new_tokens: int, eos_token_ids: Sequence[int], pad_token_id: int,
                    suppress_tokens: Sequence[int]) -> GenerationConfig:
    """A complete ``GenerationConfig``: every logits processor is either ours or explicitly off."""
    off = dict(num_beams=1, num_return_sequences=1, min_length=0, typical_p=1.0,
               epsilon_cutoff=0.0, eta_cutoff=0.0, no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0,
               encoder_repetition_penalty=1.0, length_penalty=1.0, renormalize_logits=False,
               remove_invalid_values=False, guidance_scale=1.0)
    if sampling.do_sample:
        chosen = dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                      min_p=sampling.min_p if sampling.min_p > 0 else None)
    else:  # greedy: no sampling warper applies, so the warper fields keep transformers' neutral defaults
        chosen = dict(do_sample=False)
    return GenerationConfig(**off, **chosen, repetition_penalty=sampling.repetition_penalty,
                            max_new_tokens=max_new_tokens, use_cache=True, eos_token_id=list(eos_token_ids),
                            pad_token_id=pad_token_id, suppress_tokens=list(suppress_tokens))


@contextmanager
def only_this_config(model, config: GenerationConfig) -> Iterator[None]:
    """``generate`` merges ``model.generation_config`` into unset fields: let ours be that config for
    the call, so the folder's file contributes nothing."""
    saved = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = saved
