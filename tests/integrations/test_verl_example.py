"""The verl recipe in docs/integrations.md, run on plain tensors in verl's batch layout (verl itself
would replace this machine's transformers, so it is not installed)."""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vaopd_kernels as vk

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"


def _doc_example() -> dict:
    text = DOC.read_text()
    block = re.search(r"<!-- verl-example[^>]*-->\s*```python\n(.*?)```", text, flags=re.S)
    assert block, "docs/integrations.md lost its verl example block"
    namespace: dict = {}
    exec(compile(block.group(1), str(DOC), "exec"), namespace)  # noqa: S102 -- our own doc
    return namespace


def _verl_batch(prompt_len=5, response_lens=(4, 2, 3, 1, 3, 4), vocab=50, seed=0):
    """input_ids = left-padded prompt + right-padded response, as verl's rollout returns them."""
    gen = torch.Generator().manual_seed(seed)
    rows, width = len(response_lens), max(response_lens)
    responses = torch.randint(0, vocab, (rows, width), generator=gen)
    response_mask = (torch.arange(width)[None] < torch.tensor(response_lens)[:, None]).long()
    prompts = torch.randint(0, vocab, (rows, prompt_len), generator=gen)
    input_ids = torch.cat([prompts, responses], 1)
    attention_mask = torch.cat([torch.ones(rows, prompt_len, dtype=torch.long), response_mask], 1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp_min(0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "responses": responses, "response_mask": response_mask}


class _Backbone(torch.nn.Module):
    """Stands in for model.model: hidden state at column j depends on the token at column j only."""

    def __init__(self, vocab, dim, seed):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        torch.nn.init.normal_(self.embed.weight, generator=torch.Generator().manual_seed(seed))

    def forward(self, input_ids, attention_mask, position_ids, use_cache=False, **multi_modal_inputs):
        return SimpleNamespace(last_hidden_state=self.embed(input_ids) * (1.0 + multi_modal_inputs.get("shift", 0.0)))


def test_response_hidden_is_the_state_before_each_response_token():
    ex = _doc_example()
    batch = _verl_batch()
    backbone = _Backbone(50, 8, 0)
    hidden = ex["response_hidden"](backbone, batch, {})
    prompt_len = batch["input_ids"].shape[1] - batch["responses"].shape[1]
    # response token 0 is predicted by the last prompt token's state, token t by response token t - 1's
    expected = backbone.embed(torch.cat([batch["input_ids"][:, prompt_len - 1:prompt_len],
                                         batch["responses"][:, :-1]], 1))
    torch.testing.assert_close(hidden, expected)


def test_micro_batches_add_up_to_the_va_opd_loss_and_gradient():
    ex = _doc_example()
    vocab, ds, dt, k = 50, 8, 12, 3
    batch = _verl_batch(vocab=vocab)
    uid = np.array(["b", "b", "b", "a", "a", "a"], dtype=object)  # verl: one uuid string per prompt
    student, teacher = _Backbone(vocab, ds, 1), _Backbone(vocab, dt, 2)
    gen = torch.Generator().manual_seed(3)
    rows = vocab + 6  # padded heads, as Qwen3-VL's: the rows past the tokenizer must stay out of every softmax
    student_weight = torch.nn.Parameter(torch.randn(rows, ds, generator=gen))
    teacher_weight = torch.randn(rows, dt, generator=gen)
    with torch.no_grad():
        th = ex["response_hidden"](teacher, batch, {})
        thd = ex["response_hidden"](teacher, batch, {"shift": 0.3})  # the pixelated view
    coefficients, objective = ex["va_opd_coefficients"](th, thd, teacher_weight, batch, uid, num_prompts=2,
                                                         vocab_size=vocab)

    micro = 2  # DataProto.split(2): contiguous rows
    total, kls = 0.0, []
    for start in range(0, 6, micro):
        mine = slice(start, start + micro)
        part = {key: value[mine] for key, value in batch.items()}
        sh = ex["response_hidden"](student, part, {})
        loss, kl = ex["micro_batch_loss"](sh, student_weight, th[mine], teacher_weight, part, coefficients[mine],
                                          vocab_size=vocab)
        loss.backward()
        kls.append(kl)
        total += float(loss)
    grad_embed, grad_weight = student.embed.weight.grad.clone(), student_weight.grad.clone()
    student.embed.weight.grad = None
    student_weight.grad = None

    mask = batch["response_mask"].bool()
    lengths = mask.sum(1)
    cu = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    sh = ex["response_hidden"](student, batch, {})
    ref = vk.va_opd_loss(sh[mask], student_weight, th[mask], teacher_weight, batch["responses"][mask], cu,
                         torch.tensor([1, 1, 1, 0, 0, 0]), teacher_hidden_degraded=thd[mask], vocab_size=vocab,
                         backend="reference")
    ref.loss.backward()
    assert abs(total - float(ref.loss)) <= 1e-5 * abs(float(ref.loss))
    logged = vk.objective_from_coefficients(torch.cat(kls), objective)  # step 4: the loss and metrics to log
    assert abs(float(logged.loss) - float(ref.loss)) <= 1e-5 * abs(float(ref.loss))
    assert logged.metrics["va_high_share"] == pytest.approx(ref.metrics["va_high_share"], rel=1e-6)
    assert 0.0 < logged.metrics["va_high_share"] <= 1.0 and logged.metrics["va_mean"] > 0
    for got, want in ((grad_weight, student_weight.grad), (grad_embed, student.embed.weight.grad)):
        assert float((got - want).norm() / want.norm()) <= 1e-5
    assert not grad_weight[vocab:].any()  # the padding rows never entered a softmax
    # siblings' rollout weights sum to 1 per prompt, over 2 prompts
    per_prompt = coefficients.sum(1).view(2, k).sum(1)
    torch.testing.assert_close(per_prompt, torch.full((2,), 0.5), rtol=1e-5, atol=1e-6)
