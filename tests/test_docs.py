"""The README's ```python blocks run as written, in order, in one namespace, on tiny stand-ins.

The free names the README leaves to the reader (student, teacher, batch, targets, ...) are defined
here: tiny "backbones" whose hidden state at a position depends on its token only, so a micro-batch
of response rows sees exactly the hidden states the whole batch saw. The LM heads are padded past
the tokenizer (as Qwen3-VL's are), so a block that drops ``vocab_size`` lets the padding rows into
the softmax and the micro-batch gradients no longer match the whole batch's.
"""
import os
import re
from types import SimpleNamespace

import pytest
import torch

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def python_blocks(path):
    with open(path) as f:
        return re.findall(r"^```python\n(.*?)^```", f.read(), flags=re.S | re.M)


class TinyVLM(torch.nn.Module):
    """``model(**batch).last_hidden_state`` [1, L, D] and ``lm_head.weight`` [padded_vocab, D]."""

    def __init__(self, tokens, dim, padded_vocab):
        super().__init__()
        self.embed = torch.nn.Embedding(tokens, dim)
        self.lm_head = torch.nn.Linear(dim, padded_vocab, bias=False)
        with torch.no_grad():
            self.lm_head.weight[-4:] *= 5  # padding rows that would dominate a softmax they entered

    def model(self, input_ids, pixelated=False):
        hidden = torch.tanh(self.embed(input_ids))
        return SimpleNamespace(last_hidden_state=hidden * 0.7 if pixelated else hidden)


def test_readme_python_blocks_run_and_micro_batches_sum_to_the_whole():
    torch.manual_seed(0)
    vocab, padded = 20, 24  # tokenizer length < head rows
    student, teacher = TinyVLM(vocab, 8, padded), TinyVLM(vocab, 12, padded)
    lengths = [3, 2, 4, 3]  # 2 prompts x 2 sibling rollouts, packed
    n = sum(lengths)
    input_ids = torch.randint(0, vocab, (1, n))
    logged = []
    namespace = dict(
        student=student, teacher=teacher, tokenizer=range(vocab), log=logged.append,
        batch={"input_ids": input_ids}, batch_pixelated={"input_ids": input_ids, "pixelated": True},
        response_positions=(0, torch.arange(n)), targets=torch.randint(0, vocab, (n,)),
        cu_seqlens=torch.tensor([0, 3, 5, 9, 12]), prompt_ids=torch.tensor([0, 0, 1, 1]),
        # whole rollouts per micro-batch; each holds exactly its response rows' tokens
        micro_batches=[({"input_ids": input_ids[:, rows]}, rows) for rows in (slice(0, 5), slice(5, 12))],
        micro_batch_response_positions=(0, slice(None)),
    )
    blocks = python_blocks(README)
    assert len(blocks) == 2, "a new README python block needs its stand-ins here"

    exec(compile(blocks[0], "README.md: training-loop block", "exec"), namespace)
    whole_loss = namespace["out"].loss.detach()
    whole_grads = [p.grad.clone() for p in student.parameters()]
    assert torch.isfinite(whole_loss) and logged
    assert not whole_grads[1][vocab:].any()  # the padding rows never entered a softmax
    student.zero_grad()

    exec(compile(blocks[1], "README.md: micro-batch block", "exec"), namespace)
    import vaopd_kernels as vk

    parts = vk.objective_from_coefficients(torch.cat(namespace["kl"]), namespace["coefficients"])
    assert parts.loss.item() == pytest.approx(whole_loss.item(), rel=1e-5)
    for whole, micro in zip(whole_grads, (p.grad for p in student.parameters())):
        torch.testing.assert_close(micro, whole, rtol=1e-5, atol=1e-7)
    assert len(logged) == 2


@pytest.mark.parametrize("doc", ["README.md", *(os.path.join("docs", n) for n in sorted(os.listdir(
    os.path.join(os.path.dirname(README), "docs"))) if n.endswith(".md"))])
def test_relative_links_resolve(doc):
    """Every relative link in the README and docs/ names a file that exists (anchors and URLs aside)."""
    root = os.path.dirname(README)
    with open(os.path.join(root, doc)) as f:
        targets = re.findall(r"\]\(([^)\s]+)\)", f.read())
    missing = [t for t in targets if not re.match(r"[a-z]+:|#", t)
               and not os.path.exists(os.path.join(root, os.path.dirname(doc), t.split("#")[0]))]
    assert not missing, f"{doc}: {missing}"
