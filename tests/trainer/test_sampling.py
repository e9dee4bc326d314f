"""Decoding comes from our config only: a model folder's generation_config changes nothing but the
stop tokens, which are all of its EOS ids plus the tokenizer's."""
import json
import shutil

import pytest
import torch
import yaml
from transformers.generation import logits_process as lp

from vaopd_trainer.data import synthetic_dataset
from vaopd_trainer.models import load_model, load_processing
from vaopd_trainer.rollout import encode_prompts, generate
from vaopd_trainer.sampling import Sampling, stop_token_ids
from vaopd_trainer.train import Trainer

# what a hostile (or just a real Qwen3-VL) folder may set: each of these would change the rollouts
FOLDER_SETTINGS = dict(do_sample=True, temperature=0.1, top_k=5, top_p=0.2, min_p=0.5, repetition_penalty=3.0,
                       typical_p=0.3, no_repeat_ngram_size=2, min_new_tokens=4, epsilon_cutoff=0.01)


@pytest.fixture
def opinionated_student(tiny_models, tmp_path):
    """The tiny student whose generation_config.json sets its own sampling and a second EOS ('!')."""
    folder = tmp_path / "student"
    shutil.copytree(tiny_models[1], folder)
    tokenizer, _ = load_processing(str(folder), 256, 4096)
    bang = tokenizer.convert_tokens_to_ids("!")
    settings = dict(FOLDER_SETTINGS, eos_token_id=[bang], bad_words_ids=[[tokenizer.convert_tokens_to_ids("a")]],
                    pad_token_id=tokenizer.pad_token_id)
    (folder / "generation_config.json").write_text(json.dumps(settings))
    return str(folder), bang


def _spy(model):
    """Record the merged config and the logits processors of every generate call."""
    seen = []
    original = model._get_logits_processor

    def spy(generation_config, *args, **kwargs):
        processors = original(generation_config, *args, **kwargs)
        seen.append((generation_config, processors))
        return processors

    model._get_logits_processor = spy
    return seen


def _kinds(processors):
    return {type(p) for p in processors}


def test_folder_generation_config_changes_nothing_but_stop_tokens(opinionated_student):
    folder, bang = opinionated_student
    tokenizer, processor = load_processing(folder, 256, 4096)
    model = load_model(folder, torch.float32, torch.device("cpu"))
    assert model.generation_config.top_k == 5  # the folder's file was read
    eos = stop_token_ids(model, tokenizer)
    assert eos == sorted({bang, tokenizer.eos_token_id})
    seen = _spy(model)
    batch = encode_prompts(synthetic_dataset(0, 2, 64), tokenizer, processor, repeat=2, pixelate_ratio=None)
    torch.manual_seed(0)
    generate(model, batch, tokenizer, max_new_tokens=6, sampling=Sampling(temperature=0.7, top_p=0.95), eos_token_ids=eos)
    config, processors = seen[-1]
    assert _kinds(processors) == {lp.SuppressTokensLogitsProcessor, lp.TemperatureLogitsWarper, lp.TopPLogitsWarper}
    temperature = next(p for p in processors if isinstance(p, lp.TemperatureLogitsWarper))
    top_p = next(p for p in processors if isinstance(p, lp.TopPLogitsWarper))
    assert temperature.temperature == 0.7 and top_p.top_p == pytest.approx(0.95)
    assert config.top_k == 0 and config.min_p is None and config.typical_p == 1.0 and config.bad_words_ids is None
    assert sorted(config.eos_token_id) == eos
    assert model.generation_config.top_k == 5  # the model's own config is back after the call

    # and what the config asks for is applied
    generate(model, batch, tokenizer, max_new_tokens=6, eos_token_ids=eos,
             sampling=Sampling(temperature=1.0, top_p=1.0, top_k=3, min_p=0.1, repetition_penalty=1.3))
    processors = seen[-1][1]
    assert {lp.TopKLogitsWarper, lp.MinPLogitsWarper, lp.RepetitionPenaltyLogitsProcessor} <= _kinds(processors)
    assert next(p for p in processors if isinstance(p, lp.TopKLogitsWarper)).top_k == 3
    # greedy: no sampling warper at all
    generate(model, batch, tokenizer, max_new_tokens=6, eos_token_ids=eos, sampling=Sampling(do_sample=False))
    assert seen[-1][0].do_sample is False and _kinds(seen[-1][1]) == {lp.SuppressTokensLogitsProcessor}


class _Always(torch.nn.Linear):
    """An LM head whose logits always pick one token."""

    def __init__(self, like: torch.nn.Linear, token: int):
        super().__init__(like.in_features, like.out_features, bias=False)
        self.token = token

    def forward(self, hidden):
        logits = hidden.new_zeros(*hidden.shape[:-1], self.out_features)
        logits[..., self.token] = 10.0
        return logits


def test_generation_stops_at_every_eos_id(opinionated_student):
    """'!' is an EOS only in the folder's generation_config: a model that says '!' stops there."""
    folder, bang = opinionated_student
    tokenizer, processor = load_processing(folder, 256, 4096)
    model = load_model(folder, torch.float32, torch.device("cpu"))
    model.lm_head = _Always(model.lm_head, bang)
    batch = encode_prompts(synthetic_dataset(0, 1, 64), tokenizer, processor, repeat=2, pixelate_ratio=None)
    out = generate(model, batch, tokenizer, max_new_tokens=6, sampling=Sampling(do_sample=False),
                   eos_token_ids=stop_token_ids(model, tokenizer))
    assert out.input_ids.shape[1] == batch.prompt_len + 1  # generation ended after one token
    assert out.response_mask.sum(1).tolist() == [1, 1] and out.targets().tolist() == [bang, bang]
    # with only the tokenizer's EOS the same model runs to the length limit
    out = generate(model, batch, tokenizer, max_new_tokens=6, sampling=Sampling(do_sample=False),
                   eos_token_ids=[tokenizer.eos_token_id])
    assert out.response_mask.sum(1).tolist() == [6, 6]


def test_trainer_passes_config_values_and_records_them(make_config, opinionated_student, tmp_path):
    folder, _ = opinionated_student
    trainer = Trainer(make_config(student_model=folder, top_k=7, min_p=0.05, repetition_penalty=1.1, temperature=0.9,
                                  top_p=0.8))
    seen = _spy(trainer.student)
    torch.manual_seed(0)
    trainer.rollouts(0)
    config, processors = seen[-1]
    assert (config.top_k, config.min_p, config.repetition_penalty, config.temperature, config.top_p) == (7, 0.05, 1.1, 0.9, 0.8)
    assert config.typical_p == 1.0 and config.no_repeat_ngram_size == 0 and not config.min_new_tokens
    assert lp.TypicalLogitsWarper not in _kinds(processors) and lp.NoBadWordsLogitsProcessor not in _kinds(processors)
    with open(tmp_path / "run" / "config.yaml") as f:
        written = yaml.safe_load(f)
    assert {k: written[k] for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")} == dict(
        temperature=0.9, top_p=0.8, top_k=7, min_p=0.05, repetition_penalty=1.1)
    assert str(trainer.eos_token_ids) in (tmp_path / "run" / "config.yaml").read_text().splitlines()[0]
