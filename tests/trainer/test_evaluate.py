"""Validation as in the paper: avg@k of the first \\boxed{} answer, best checkpoint kept; rollout
accuracy logged on the training batch."""
import json
import os

import pytest
import torch

from _fakes import with_responses
from vaopd_trainer import evaluate as evaluate_module
from vaopd_trainer import train as train_module
from vaopd_trainer.data import Sample, synthetic_dataset
from vaopd_trainer.evaluate import evaluate, extract_boxed, is_correct
from vaopd_trainer.intervals import mean_ci95
from vaopd_trainer.models import load_model, load_processing
from vaopd_trainer.rollout import encode_prompts
from vaopd_trainer.sampling import Sampling
from vaopd_trainer.train import Trainer


def test_the_first_committed_answer_counts():
    text = "maybe \\boxed{3}, no wait, \\boxed{\\frac{1}{2}}"
    assert extract_boxed(text) == "3"
    assert is_correct(text, "3") and not is_correct(text, "\\frac{1}{2}")
    assert is_correct("so \\boxed{0.5}", "\\frac{1}{2}")  # math-verify: equivalent forms
    assert extract_boxed("\\boxed{x") is None and not is_correct("no box", "3")


def test_accuracy_is_the_mean_over_every_sampled_answer(tiny_models, monkeypatch):
    tokenizer, processor = load_processing(tiny_models[1], 256, 4096)
    model = load_model(tiny_models[1], torch.float32, torch.device("cpu"))
    samples = [Sample(s.image, s.question, str(i + 1)) for i, s in enumerate(synthetic_dataset(0, 2, 64))]
    # 3 answers per problem: problem "1" right twice (the second box does not rescue the third), "2" once
    texts = ["\\boxed{1}", "x \\boxed{1}", "\\boxed{7} \\boxed{1}", "\\boxed{2}", "\\boxed{}", "2"]
    calls = []

    def fake_generate(model, batch, tokenizer, *, max_new_tokens, sampling, eos_token_ids):
        calls.append((batch.input_ids.shape[0], sampling))
        start = sum(c[0] for c in calls[:-1])
        return with_responses(batch, tokenizer, texts[start:start + batch.input_ids.shape[0]], eos_token_ids[0])

    monkeypatch.setattr(evaluate_module, "generate", fake_generate)
    sampling = Sampling(temperature=1.0, top_p=1.0)
    out = evaluate(model, samples, tokenizer, processor, batch_size=3, max_new_tokens=8, pixelate_ratio=0.1,
                   device="cpu", sampling=sampling, num_generations=3, eos_token_ids=[tokenizer.eos_token_id])
    assert [c[0] for c in calls] == [3, 3]  # one problem (x 3 answers) per 3-row batch
    assert calls[0][1] is sampling
    assert (out["correct"], out["count"]) == (3.0, 6.0)  # avg@3 = 0.5
    assert out["scores"] == [2 / 3, 1 / 3]  # per problem, for intervals over images
    assert out["tokens"] == sum(len(t) + 1 for t in texts)  # visual reliance over every answer token


def test_trainer_validates_with_eval_sampling_and_its_own_rng(make_config, monkeypatch):
    trainer = Trainer(make_config(eval_num_generations=3, eval_temperature=1.0, eval_top_p=1.0, temperature=0.7))
    seen = []

    def fake_evaluate(model, samples, tokenizer, image_processor, **kwargs):
        seen.append(kwargs)
        torch.rand(3)  # sampling draws from the RNG
        return {"correct": 1.0, "count": 4.0, "reliance_sum": 0.0, "tokens": 1.0, "scores": [0.25]}

    monkeypatch.setattr(train_module, "evaluate", fake_evaluate)
    state = torch.get_rng_state()
    assert trainer.evaluate("before", 0)["eval_accuracy"] == 0.25
    assert torch.equal(torch.get_rng_state(), state)  # the training stream is untouched by validation
    assert seen[0]["num_generations"] == 3
    assert seen[0]["sampling"] == Sampling(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    trainer.cfg = trainer.cfg.__class__(**{**vars(trainer.cfg), "eval_do_sample": False})
    trainer.evaluate("greedy", 0)
    assert seen[1]["num_generations"] == 1 and seen[1]["sampling"].do_sample is False


def test_best_checkpoint_follows_validation_accuracy(make_config, monkeypatch, tmp_path):
    scores = iter([0.5, 0.75, 0.25])  # validations after steps 1, 2 and 3 (the final one)

    def fake_evaluate(model, samples, tokenizer, image_processor, **kwargs):
        score = next(scores)
        return {"correct": score * 4, "count": 4.0, "reliance_sum": 0.0, "tokens": 1.0, "scores": [score]}

    monkeypatch.setattr(train_module, "evaluate", fake_evaluate)
    out = tmp_path / "run"
    outputs = Trainer(make_config(max_steps=3, eval_steps=1, output_dir=str(out))).train()
    assert [e["eval_accuracy"] for e in outputs["evals"].values()] == [0.5, 0.75, 0.25]
    best = json.loads((out / "best" / "best.json").read_text())
    assert best == {"step": 2, "eval_accuracy": 0.75, "checkpoint": "checkpoint-2"}
    assert sorted(os.listdir(out / "best")) == ["best.json", "checkpoint-2"]  # step 1's was replaced
    assert (out / "best" / "checkpoint-2" / "trainer_state.json").exists()
    assert outputs["best"] == str(out / "best")
    # a resumed run only replaces the best with a better validation
    resumed = Trainer(make_config(max_steps=3, eval_steps=1, output_dir=str(out), resume=str(out / "checkpoint-3")))
    assert resumed.best_accuracy == 0.75


def test_rollout_accuracy_scores_the_training_batch(make_config):
    trainer = Trainer(make_config(num_generations=2))
    samples = trainer.step_samples(0)
    batch = encode_prompts(samples, trainer.tokenizer, trainer.image_processor, repeat=2, pixelate_ratio=None)
    texts = [f"\\boxed{{{samples[0].answer}}}", "\\boxed{x}", "no answer", f"so \\boxed{{{samples[1].answer}}}"]
    batch = with_responses(batch, trainer.tokenizer, texts, trainer.tokenizer.eos_token_id)
    assert trainer.rollout_accuracy(batch) == pytest.approx(0.5)
    metrics = trainer.step(0)
    assert 0.0 <= metrics["rollout_accuracy"] <= 1.0


def test_greedy_and_sampled_accuracy_with_intervals_over_images(make_config, monkeypatch):
    """eval_greedy adds a greedy pass beside avg@k; each accuracy carries its 95% interval over the
    per-image scores, which are kept for paired gains."""
    per_pass = {True: [1.0, 0.5, 0.0, 0.5], False: [1.0, 1.0, 0.0, 0.0]}  # sampled avg@2, greedy

    batch_sizes, reliance = [], []

    def fake_evaluate(model, samples, tokenizer, image_processor, *, sampling, num_generations, batch_size, **kwargs):
        batch_sizes.append(batch_size)
        reliance.append(kwargs["reliance"])
        scores = per_pass[sampling.do_sample][:len(samples)]
        return {"correct": sum(scores) * num_generations, "count": float(len(samples) * num_generations),
                "reliance_sum": 0.5, "tokens": 1.0, "scores": scores}

    monkeypatch.setattr(train_module, "evaluate", fake_evaluate)
    trainer = Trainer(make_config(eval_greedy=True, eval_num_generations=2, num_eval_samples=4,
                                  per_device_eval_batch_size=7))
    result = trainer.evaluate("before", 0)
    assert batch_sizes == [7, 7] and reliance == [True, False]  # the greedy pass skips the reliance passes
    assert result["eval_accuracy"] == 0.5 and result["eval_greedy_accuracy"] == 0.5
    assert result["eval_accuracy_ci95"] == pytest.approx(mean_ci95(per_pass[True])[1])
    assert result["eval_greedy_accuracy_ci95"] == pytest.approx(mean_ci95(per_pass[False])[1])
    assert result["eval_accuracy_ci95"] < result["eval_greedy_accuracy_ci95"]  # avg@k spreads less
    assert trainer.eval_scores["before"] == {"eval_accuracy": per_pass[True], "eval_greedy_accuracy": per_pass[False]}
    assert result["eval_visual_reliance"] == 0.5  # from the sampled pass only
