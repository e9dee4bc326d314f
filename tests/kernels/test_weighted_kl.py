"""vaopd_kernels.weighted_kl: sum(token_weight * reverse KL) for weights known in advance.

Every backend's contract (values, gradients, float64 oracle) is in contract.py; here the
public function against a float64 closed form on fresh random inputs, its gradient against
``(token_weight * linear_kl(...)).sum()``, and its argument checks.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vaopd_kernels as vk
from problems import make_problem
from test_torch_backend import rel_err  # norm-wise, with the torch tests' absolute floor
from vaopd_kernels.backends import backend_unavailable_reason

CPU_BACKENDS = ["torch", "reference", "triton"]  # triton runs under the interpreter without a GPU


def _backend(name):
    reason = backend_unavailable_reason(name)
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    return name


def _closed_form(p, token_weight):
    """float64 loss, per-token KL, student log-prob of the targets and entropy, with autograd grads."""
    sh, sw = (t.detach().double().requires_grad_() for t in (p.student_hidden, p.student_weight))
    vocab = p.vocab_size or sw.shape[0]
    logp_s = F.log_softmax(sh @ sw[:vocab].T, -1)
    logp_t = F.log_softmax(p.teacher_hidden.double() @ p.teacher_weight[:vocab].double().T, -1)
    kl = (logp_s.exp() * (logp_s - logp_t)).sum(-1)
    loss = (token_weight.double() * kl).sum()
    loss.backward()
    entropy = -(logp_s.exp() * logp_s).sum(-1)
    return loss.detach(), kl.detach(), logp_s.gather(-1, p.targets[:, None])[:, 0].detach(), entropy.detach(), \
        (sh.grad, sw.grad)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("padding", [0, 3])
def test_matches_float64_closed_form(backend, padding):
    p = make_problem(num_rows=11, vocab=29, head_padding=padding)  # fresh random values each run
    token_weight = torch.rand(11, dtype=torch.float64) + 0.05
    loss, kl, logprob, entropy, grads = _closed_form(p, token_weight)
    r = vk.weighted_kl(*p.kl_args, token_weight.float(), targets=p.targets, vocab_size=p.vocab_size,
                       backend=_backend(backend))
    assert r.kl.dtype == torch.float32 and r.kl.grad_fn is None and r.student_entropy.grad_fn is None
    assert rel_err(r.loss, loss) < 1e-5 and rel_err(r.kl, kl) < 1e-5
    assert rel_err(r.student_logprob, logprob) < 1e-5 and rel_err(r.student_entropy, entropy) < 1e-5
    r.loss.backward()
    assert rel_err(p.student_hidden.grad, grads[0]) < 1e-4
    assert rel_err(p.student_weight.grad, grads[1]) < 1e-4
    if padding:
        assert not p.student_weight.grad[-padding:].any()  # padding rows never enter a softmax


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradient_equals_weighted_linear_kl(backend):
    """Same backend, same inputs: the forward-formed gradient is the one of the per-token path."""
    p = make_problem(num_rows=9, vocab=23)
    q = p.to(torch.float32)
    token_weight = torch.rand(9) * 2 - 0.5  # any sign: the entry point makes no assumption
    r = vk.weighted_kl(*p.kl_args, token_weight, backend=_backend(backend))
    (3.0 * r.loss).backward()
    kl = vk.linear_kl(*q.kl_args, backend=backend)
    (3.0 * (token_weight * kl).sum()).backward()
    assert r.student_logprob is None and r.student_entropy is None
    torch.testing.assert_close(r.kl, kl.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(p.student_hidden.grad, q.student_hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p.student_weight.grad, q.student_weight.grad, rtol=1e-5, atol=1e-6)


def test_float64_gradcheck():
    p = make_problem(num_rows=5, student_dim=4, teacher_dim=6, vocab=7, dtype=torch.float64)
    token_weight = torch.rand(5, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda h, w: vk.weighted_kl(h, w, p.teacher_hidden, p.teacher_weight, token_weight, backend="torch").loss,
        (p.student_hidden, p.student_weight))


def test_micro_batches_sum_to_the_whole_batch():
    p = make_problem(num_rows=10, vocab=19)
    token_weight = torch.rand(10)
    whole = vk.weighted_kl(*p.kl_args, token_weight, backend="torch")
    whole.loss.backward()
    q = p.to(torch.float32)
    parts = [vk.weighted_kl(q.student_hidden[a:b], q.student_weight, q.teacher_hidden[a:b], q.teacher_weight,
                            token_weight[a:b], backend="torch") for a, b in ((0, 4), (4, 10))]
    sum(part.loss for part in parts).backward()
    torch.testing.assert_close(torch.cat([part.kl for part in parts]), whole.kl)
    torch.testing.assert_close(q.student_weight.grad, p.student_weight.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(q.student_hidden.grad, p.student_hidden.grad, rtol=1e-5, atol=1e-7)


def test_no_gradient_wanted_builds_no_graph():
    p = make_problem(num_rows=4, vocab=11)
    with torch.no_grad():
        r = vk.weighted_kl(*p.kl_args, torch.rand(4), backend="torch")
    assert r.loss.grad_fn is None


@pytest.mark.parametrize("make,error,name", [
    (lambda p, w: dict(token_weight=w[:5]), ValueError, "token_weight"),
    (lambda p, w: dict(token_weight=w[:, None]), ValueError, "token_weight"),
    (lambda p, w: dict(token_weight=(w * 10).long()), TypeError, "token_weight"),
    (lambda p, w: dict(token_weight=w.tolist()), TypeError, "token_weight"),
    (lambda p, w: dict(token_weight=w.to("meta")), ValueError, "token_weight"),
    (lambda p, w: dict(token_weight=torch.where(torch.arange(6) == 2, float("nan"), w)), ValueError, "token_weight"),
    (lambda p, w: dict(token_weight=torch.where(torch.arange(6) == 2, float("inf"), w)), ValueError, "token_weight"),
    (lambda p, w: dict(teacher_hidden=p.teacher_hidden[:5]), ValueError, "teacher_hidden"),
    (lambda p, w: dict(student_weight=p.student_weight[:, :3]), ValueError, "student_weight"),
    (lambda p, w: dict(targets=p.targets[:4]), ValueError, "targets"),
    (lambda p, w: dict(targets=torch.full_like(p.targets, 11)), ValueError, "targets"),
    (lambda p, w: dict(vocab_size=0), ValueError, "vocab_size"),
    (lambda p, w: dict(backend="nope"), ValueError, "backend"),
    (lambda p, w: dict(options="fast"), TypeError, "options"),
])
def test_rejects_bad_input(make, error, name):
    p = make_problem(6, 4, 5, 11, head_padding=2)
    args = dict(student_hidden=p.student_hidden, student_weight=p.student_weight, teacher_hidden=p.teacher_hidden,
                teacher_weight=p.teacher_weight, token_weight=torch.rand(6), targets=p.targets,
                vocab_size=p.vocab_size)
    args.update(make(p, args["token_weight"]))
    positional = [args.pop(k) for k in ("student_hidden", "student_weight", "teacher_hidden", "teacher_weight",
                                        "token_weight")]
    with pytest.raises(error, match=name):
        vk.weighted_kl(*positional, **args)
