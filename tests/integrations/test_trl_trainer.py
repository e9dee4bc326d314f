"""VAOPDTrainer (vaopd_kernels.integrations.trl) against TRL's own DistillationTrainer and the reference.

Tiny Qwen3-VL student/teacher built in memory, images through an image-only Qwen3-VL processor
(tiny_vlm.py), completions sampled by TRL's own generation path.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import tiny_vlm as tv
from trl import DistillationConfig, DistillationTrainer
from trl.trainer.utils import split_pixel_values_by_grid, split_tensor_dict, unsplit_pixel_values_by_grid

import vaopd_kernels
from vaopd_kernels.integrations import trl as vtrl
from vaopd_kernels.integrations.trl import VAOPDConfig, VAOPDTrainer
from vaopd_kernels.pixelate import pixelate
from vaopd_kernels.testing import rel_err


def _trainer(cls, cfg_cls, tmp_path, student, teacher, proc, **overrides):
    args = cfg_cls(**tv.config_kwargs(tmp_path, generation_kwargs=dict(suppress_tokens=tv.never_sample(proc)),
                                      **overrides))
    trainer = cls(student, teacher, args=args, train_dataset=tv.dataset(4), processing_class=proc)
    trainer.model.train()
    return trainer


def _grads(model):
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _generation_batch(trainer, prompts: int, k: int):
    """One generation batch sampled by TRL's path: each prompt k times in adjacent rows, as the sampler gives."""
    torch.manual_seed(0)
    return trainer._generate_and_score_completions([ex for ex in tv.examples(prompts) for _ in range(k)])


def _against_trl(tmp_path, student, teacher, **kwargs):
    """One generation batch's loss, student gradients and logged ``entropy`` under TRL's DistillationTrainer
    and VAOPDTrainer (each on its own copy of the student)."""
    proc = tv.processor()
    kwargs = dict(per_device_train_batch_size=4, **kwargs)
    theirs = _trainer(DistillationTrainer, DistillationConfig, tmp_path, student, teacher, proc, **kwargs)
    ours = _trainer(VAOPDTrainer, VAOPDConfig, tmp_path, tv.clone(student), teacher, proc, **kwargs)
    batch = _generation_batch(theirs, 4, 1)
    assert int(batch["completion_mask"].sum()) > 8
    out = {}
    for name, trainer in (("theirs", theirs), ("ours", ours)):
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        out[name] = {"loss": loss.item(), "grads": _grads(trainer.model),
                     "entropy": trainer._metrics["train"]["entropy"][-1]}
    return ours, batch, out["ours"], out["theirs"]


def _assert_equal_to_trl(ours, theirs, label):
    loss_rel = abs(ours["loss"] - theirs["loss"]) / abs(theirs["loss"])
    grad_rel = {n: rel_err(ours["grads"][n], g) for n, g in theirs["grads"].items()}
    print(f"\nparity {label}: loss {theirs['loss']:.6g} rel diff {loss_rel:.2e}; max grad rel diff "
          f"{max(grad_rel.values()):.2e} over {len(grad_rel)} tensors; entropy {theirs['entropy']:.6g}")
    assert ours["grads"].keys() == theirs["grads"].keys() and len(theirs["grads"]) > 10
    assert loss_rel <= 1e-5
    assert max(grad_rel.values()) <= 1e-5, sorted(grad_rel.items(), key=lambda kv: -kv[1])[:3]
    assert ours["entropy"] == pytest.approx(theirs["entropy"], rel=1e-5)


@pytest.mark.parametrize("beta", [1.0, 0.0, 0.5], ids=["reverse", "forward", "jsd"])
def test_opd_loss_and_student_gradients_equal_trl(tmp_path, monkeypatch, beta):
    calls = []
    real = vaopd_kernels.linear_kl

    def counted(*args, **kw):
        calls.append(kw.get("divergence"))
        return real(*args, **kw)

    monkeypatch.setattr(vtrl.vaopd_kernels, "linear_kl", counted)
    _, _, ours, theirs = _against_trl(tmp_path, *tv.models(), beta=beta, temperature=0.7)
    assert calls == [{0.0: "forward", 1.0: "reverse", 0.5: "jsd"}[beta]]
    _assert_equal_to_trl(ours, theirs, f"beta={beta}")


def _transformed_heads(student, teacher):
    """Heads with a bias on both sides, a Cohere-style logit scale on the student's and a Gemma-style soft-cap
    (low enough to bend these small logits) on the teacher's, set where transformers keeps them."""
    torch.manual_seed(2)
    for model in (student, teacher):
        plain = model.lm_head
        model.lm_head = torch.nn.Linear(plain.in_features, plain.out_features, bias=True)
        with torch.no_grad():
            model.lm_head.weight.copy_(plain.weight)
            model.lm_head.bias.normal_(0.0, 0.5)
    student.config.get_text_config().logit_scale = 3.0
    teacher.config.get_text_config().final_logit_softcapping = 2.0


def test_heads_with_bias_scale_and_softcap_equal_trl(tmp_path):
    student, teacher = tv.models()
    _transformed_heads(student, teacher)
    trainer, batch, ours, theirs = _against_trl(tmp_path, student, teacher, beta=0.5, temperature=0.7)
    assert "lm_head.bias" in theirs["grads"]
    _assert_equal_to_trl(ours, theirs, "transformed heads")

    # the entropy metric by hand: the student's full logits, scaled, at the temperature
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        hidden = trainer._get_last_hidden_state(trainer.model, input_ids, attention, batch["completion_ids"].size(1),
                                                **{k: batch[k] for k in vtrl.MULTIMODAL_KEYS if k in batch})
        logits = 3.0 * trainer.model.lm_head(hidden[batch["completion_mask"].bool()]).double() / 0.7
    entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()
    assert ours["entropy"] == pytest.approx(float(entropy), rel=1e-5)


def _reference_va_opd(batch, student, teacher, proc, prompts, k, visual_signal):
    """VA-OPD loss computed independently: our own forward passes, pixelation and the reference backend."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    width, length = batch["prompt_ids"].shape[1], batch["completion_ids"].shape[1]
    images = [ex["image"] for ex in tv.examples(prompts) for _ in range(k)]
    degraded = proc.image_processor(images=[pixelate(im, 0.1) for im in images], return_tensors="pt")["pixel_values"]
    common = dict(input_ids=input_ids, attention_mask=attention, image_grid_thw=batch["image_grid_thw"],
                  mm_token_type_ids=(input_ids == proc.image_token_id).int(), use_cache=False)

    def hidden(model, pixels):
        return model.model(pixel_values=pixels, **common).last_hidden_state[:, width - 1:width - 1 + length]

    valid = batch["completion_mask"].bool()
    sh = hidden(student, batch["pixel_values"])[valid]
    with torch.no_grad():
        th = hidden(teacher, batch["pixel_values"])[valid]
        thd = hidden(teacher, degraded)[valid]
    lengths = valid.sum(1)
    cu = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    pid = torch.arange(prompts).repeat_interleave(k)
    return vaopd_kernels.va_opd_loss(sh, vaopd_kernels.LMHead.from_model(student), th,
                                     vaopd_kernels.LMHead.from_model(teacher),
                                     batch["completion_ids"][valid], cu, pid, teacher_hidden_degraded=thd,
                                     visual_signal=visual_signal, backend=_REFERENCE_BACKEND[visual_signal])


# The tiny random teacher's divergence between its views is ~1e-5 nats, within float32 roundoff of
# two ways of computing it, and the sibling z-scores magnify that into the rollout weights: there
# the reference is the trainer's own backend on CPUs (the KL's accuracy: tests/kernels/test_visual_signal.py).
_REFERENCE_BACKEND = {"sampled": "reference", "divergence": "torch"}


@pytest.mark.parametrize("visual_signal,heads", [("sampled", "plain"), ("divergence", "plain"),
                                                  ("sampled", "transformed")])
def test_va_opd_equals_the_reference_and_accumulation_gives_the_full_batch_gradient(tmp_path, visual_signal, heads):
    proc = tv.processor()
    student, teacher = tv.models()
    if heads == "transformed":
        _transformed_heads(student, teacher)
    prompts, k = 2, 3
    trainer = _trainer(VAOPDTrainer, VAOPDConfig, tmp_path, student, teacher, proc, method="va_opd",
                       num_generations=k, per_device_train_batch_size=3, gradient_accumulation_steps=2,
                       visual_signal=visual_signal)
    batch = _generation_batch(trainer, prompts, k)
    assert batch[vtrl.TOKEN_WEIGHT].shape == batch["completion_ids"].shape

    reference = _reference_va_opd(batch, student, teacher, proc, prompts, k, visual_signal)
    reference.loss.backward()
    grads_reference = _grads(student)

    full = trainer.compute_loss(trainer.model, batch)
    full.backward()
    grads_full = _grads(trainer.model)
    # as TRL's _prepare_inputs does: shuffle rows, then one micro-batch per accumulation step
    torch.manual_seed(1)
    rows = torch.randperm(prompts * k)
    shuffled = {key: (value[rows] if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == len(rows)
                      else [value[i] for i in rows] if isinstance(value, list) else value)
                for key, value in split_pixel_values_by_grid(batch).items()}
    micro = [unsplit_pixel_values_by_grid(part) for part in split_tensor_dict(shuffled, 2)]
    for part in micro:
        trainer.compute_loss(trainer.model, part).backward()
    grads_accumulated = _grads(trainer.model)

    assert abs(float(full) - float(reference.loss)) <= 1e-5 * abs(float(reference.loss))
    for name, g in grads_reference.items():
        assert rel_err(grads_full[name], g) <= 1e-4, name
        assert rel_err(grads_accumulated[name], g) <= 1e-4, name
    # the weights are the paper's: per prompt, rollout weights sum to 1
    weight = batch[vtrl.TOKEN_WEIGHT].sum(1).view(prompts, k).sum(1)
    torch.testing.assert_close(weight, torch.full((prompts,), 1.0 / prompts), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["opd", "va_opd"])
def test_a_few_training_steps_run_end_to_end_and_log(tmp_path, method):
    proc = tv.processor()
    student, teacher = tv.models()
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    trainer = _trainer(VAOPDTrainer, VAOPDConfig, tmp_path, student, teacher, proc, method=method,
                       num_generations=2, max_steps=2, gradient_accumulation_steps=2 if method == "va_opd" else 1)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(e["loss"])) for e in logs)
    assert all(e["vaopd/kl_mean"] > 0 for e in logs)
    # TRL's metric: the student's mean entropy per completion token, at most log(vocabulary)
    vocab = student.get_output_embeddings().weight.shape[0]
    assert all(0.0 < e["entropy"] < torch.log(torch.tensor(float(vocab))) for e in logs)
    if method == "va_opd":
        for e in logs:
            assert 0.0 < e["vaopd/va_high_share"] <= 1.0
            assert 0.0 < e["vaopd/rollout_weight_min"] <= 0.5 <= e["vaopd/rollout_weight_max"] < 1.0
            assert e["vaopd/kl_high_mean"] > 0 and e["vaopd/kl_low_mean"] > 0
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert "lm_head.weight" in moved and len(moved) > 10


def test_lora_trains_only_the_adapter(tmp_path):
    peft = pytest.importorskip("peft")  # the `peft` extra (installed by make test)
    proc = tv.processor()
    student, teacher = tv.models()
    args = VAOPDConfig(**tv.config_kwargs(tmp_path, generation_kwargs=dict(suppress_tokens=tv.never_sample(proc)),
                                          max_steps=2))
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = VAOPDTrainer(student, teacher, args=args, train_dataset=tv.dataset(4), processing_class=proc,
                           peft_config=lora)
    assert isinstance(trainer.model, peft.PeftModel)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor([e["loss"], e["entropy"]])).all() for e in logs)
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    adapter = {n for n in before if "lora_" in n}
    # after two steps both LoRA factors moved (B starts at zero, so A's first gradient is zero); nothing else did
    assert moved == adapter and len(adapter) == 4


def test_config_checks_name_the_field(tmp_path):
    base = tv.config_kwargs(tmp_path)
    with pytest.raises(ValueError, match="method"):
        VAOPDConfig(**base, method="gkd")
    with pytest.raises(ValueError, match="num_generations"):
        VAOPDConfig(**{**base, "per_device_train_batch_size": 3}, method="va_opd", num_generations=2)
    with pytest.raises(ValueError, match="pixelate_ratio"):
        VAOPDConfig(**base, method="va_opd", num_generations=2, pixelate_ratio=1.5)
    with pytest.raises(ValueError, match="high_fraction"):
        VAOPDConfig(**base, high_fraction=0.0)
    with pytest.raises(ValueError, match="visual_signal"):
        VAOPDConfig(**base, visual_signal="kl")
    assert VAOPDConfig(**{**base, "per_device_train_batch_size": 4}, method="va_opd").num_generations == 4
    assert VAOPDConfig(**base).num_generations == 1


def test_trainer_refuses_what_it_cannot_do(tmp_path):
    proc = tv.processor()
    student, teacher = tv.models()
    with pytest.raises(TypeError, match="args: expected a VAOPDConfig"):
        VAOPDTrainer(student, teacher, args=DistillationConfig(**tv.config_kwargs(tmp_path)),
                     train_dataset=tv.dataset(2), processing_class=proc)
    text_only = VAOPDConfig(**tv.config_kwargs(tmp_path), method="va_opd", num_generations=2)
    with pytest.raises(ValueError, match="processing_class"):
        VAOPDTrainer(student, teacher, args=text_only, train_dataset=tv.dataset(2), processing_class=proc.tokenizer)
    # a head the kernels cannot read is refused at construction, before any generation
    teacher.config.get_text_config().final_logit_softcapping = -30.0
    args = VAOPDConfig(**tv.config_kwargs(tmp_path), method="va_opd", num_generations=2)
    with pytest.raises(ValueError, match="teacher_model.final_logit_softcapping: expected a finite number > 0"):
        VAOPDTrainer(student, teacher, args=args, train_dataset=tv.dataset(2), processing_class=proc)
    teacher.config.get_text_config().final_logit_softcapping = None
    student.config.get_text_config().logit_scale = float("nan")
    with pytest.raises(ValueError, match="model.logit_scale: expected a finite number"):
        VAOPDTrainer(student, teacher, args=args, train_dataset=tv.dataset(2), processing_class=proc)


def test_siblings_stay_adjacent_on_one_rank(tmp_path):
    proc = tv.processor()
    student, teacher = tv.models()
    trainer = _trainer(VAOPDTrainer, VAOPDConfig, tmp_path, student, teacher, proc, method="va_opd",
                       num_generations=2, gradient_accumulation_steps=2)
    order = list(trainer._get_train_sampler())
    assert order[:4] == [order[0]] * 2 + [order[2]] * 2 and order[0] != order[2]
    batch = _generation_batch(trainer, 2, 2)
    torch.testing.assert_close(trainer._sibling_prompt_ids(batch), torch.tensor([0, 0, 1, 1]))
    swapped = unsplit_pixel_values_by_grid({**split_pixel_values_by_grid(batch)})
    per_row = split_pixel_values_by_grid(batch)["pixel_values"]
    swapped["pixel_values"] = torch.cat([per_row[i] for i in (0, 2, 1, 3)])
    with pytest.raises(RuntimeError, match="rows 0 and 1 should be completions of one prompt"):
        trainer._sibling_prompt_ids(swapped)


def test_import_needs_no_trl():
    code = ("import sys; sys.modules['trl'] = None; import vaopd_kernels, vaopd_kernels.integrations; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
