"""The chunked torch backend computes the reference's function: values and gradients."""
from __future__ import annotations

from functools import partial

import pytest
import torch

import vaopd_kernels as vk
from problems import make_problem
from vaopd_kernels.testing import near_teacher, rel_err

# fp32 evaluates sum p (z_s - z_t) and lse_t - lse_s, two numbers of logit size whose difference
# is the KL: that costs ~1e-6 absolute whatever the formula, so a KL of 0.05 on a single row
# cannot meet 1e-5 relative. Errors are judged norm-wise relative to max(|ref|, ABS_FLOOR) per element.
ABS_FLOOR = 0.2
rel_err = partial(rel_err, floor=ABS_FLOOR)

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
# Gradients are judged norm-wise, and the reverse-KL gradient p_s (log p_s - log p_t - KL) cancels:
# with KL ~ 18 (temperature 0.7, one row) fp32's last-bit rounding of KL alone moves the gradient
# by up to ~7e-5 of its norm. Measured over 4,000 fresh draws of the worst case (N = 1): this
# backend 7.0e-5 at most, the naive fp32 reference 5.8e-5. A real bug (a dropped tile or term)
# costs far more than 1e-3.
GRAD_TOL = {torch.float32: 2e-4, torch.bfloat16: 2e-2}


@pytest.fixture(params=["tiny-tiles", "default-tiles"])
def chunking(request):
    """Options that run a test with 1-row blocks x 7-wide vocab tiles (many tiles, ragged last one)
    and with the defaults (one tile at these sizes)."""
    if request.param == "tiny-tiles":
        return vk.KernelOptions(chunk_budget_bytes=1, vocab_tile=7)
    return vk.KernelOptions()


def _grads(value, problem):
    # retain_graph: some tests take a second gradient of the same output
    return torch.autograd.grad(value, [problem.student_hidden, problem.student_weight], retain_graph=True)


def _weighted_sum(per_token):
    # Random per-token upstream gradients exercise backward's row scaling.
    g = torch.linspace(-1.0, 2.0, per_token.numel(), dtype=per_token.dtype)
    return (per_token * g).sum()


SHAPES = [  # (N, Ds, Dt, V, head padding)
    (1, 8, 12, 31, 0),
    (9, 12, 20, 37, 5),
    (17, 16, 8, 257, 0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("divergence,temperature", [("reverse", 1.0), ("reverse", 0.7), ("forward", 1.3),
                                                    ("jsd", 1.0), ("jsd", 2.0)])
def test_linear_kl_matches_reference(chunking, dtype, shape, divergence, temperature):
    n, ds, dt, v, pad = shape
    base = make_problem(n, ds, dt, v, pad, dtype=dtype, logit_scale=3.0)
    opts = dict(divergence=divergence, beta=0.3, temperature=temperature, vocab_size=base.vocab_size)
    ref_p, out_p = base.to(torch.float64), base.to(dtype)
    ref = vk.linear_kl(*ref_p.kl_args, backend="reference", **opts)
    out = vk.linear_kl(*out_p.kl_args, backend="torch", **opts)
    assert out.dtype == torch.float32 and out.shape == (n,)
    assert rel_err(out, ref) <= TOL[dtype]
    for g_out, g_ref, leaf in zip(_grads(_weighted_sum(out), out_p), _grads(_weighted_sum(ref), ref_p),
                                  [out_p.student_hidden, out_p.student_weight]):
        assert g_out.dtype == leaf.dtype and g_out.shape == leaf.shape
        assert rel_err(g_out, g_ref) <= GRAD_TOL[dtype]
    if pad:  # LM-head padding rows never enter a softmax, so they get exactly zero gradient
        assert torch.all(_grads(out.sum(), out_p)[1][v:] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_logprob_va_and_va_kl_match_reference(chunking, dtype, shape):
    n, ds, dt, v, pad = shape
    base = make_problem(n, ds, dt, v, pad, dtype=dtype, logit_scale=2.0)
    ref_p, out_p = base.to(torch.float64), base.to(dtype)
    V = base.vocab_size

    lp_ref = vk.linear_logprob(ref_p.student_hidden, ref_p.student_weight, base.targets, temperature=0.8,
                               vocab_size=V, backend="reference", options=chunking)
    lp_out = vk.linear_logprob(out_p.student_hidden, out_p.student_weight, base.targets, temperature=0.8,
                               vocab_size=V, backend="torch", options=chunking)
    assert rel_err(lp_out, lp_ref) <= TOL[dtype]
    for a, b in zip(_grads(_weighted_sum(lp_out), out_p), _grads(_weighted_sum(lp_ref), ref_p)):
        assert rel_err(a, b) <= GRAD_TOL[dtype]

    for clamp in (True, False):
        va_ref = vk.visual_advantage(ref_p.teacher_hidden, ref_p.teacher_hidden_degraded, ref_p.teacher_weight,
                                     base.targets, vocab_size=V, clamp=clamp, backend="reference", options=chunking)
        va_out = vk.visual_advantage(out_p.teacher_hidden, out_p.teacher_hidden_degraded, out_p.teacher_weight,
                                     base.targets, vocab_size=V, clamp=clamp, backend="torch", options=chunking)
        assert (va_out - va_ref).abs().max() <= TOL[dtype] * (1 + va_ref.abs().max())
        assert not va_out.requires_grad
    assert bool((va_out.clamp_min(0) - va_ref.clamp_min(0)).abs().max() <= TOL[dtype] * (1 + va_ref.abs().max()))

    ref = vk.va_kl(*ref_p.kl_args, base.targets, teacher_hidden_degraded=ref_p.teacher_hidden_degraded,
                   vocab_size=V, backend="reference", options=chunking)
    out = vk.va_kl(*out_p.kl_args, base.targets, teacher_hidden_degraded=out_p.teacher_hidden_degraded,
                   vocab_size=V, backend="torch", options=chunking)
    for field in ("kl", "visual_advantage", "student_logprob", "teacher_logprob", "student_entropy"):
        got, want = getattr(out, field), getattr(ref, field)
        assert got.dtype == torch.float32, field
        assert (got - want).abs().max() <= TOL[dtype] * (1 + want.abs().max()), field
    assert (out.visual_advantage >= 0).all()
    for a, b in zip(_grads(_weighted_sum(out.kl), out_p), _grads(_weighted_sum(ref.kl), ref_p)):
        assert rel_err(a, b) <= GRAD_TOL[dtype]
    no_va = vk.va_kl(*out_p.kl_args, base.targets, vocab_size=V, backend="torch", options=chunking)
    assert no_va.visual_advantage is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_va", [True, False])
def test_va_opd_loss_matches_reference(chunking, dtype, with_va):
    base = make_problem(13, 12, 20, 41, 3, dtype=dtype, logit_scale=2.0)
    cu = torch.tensor([0, 4, 5, 9, 13])
    prompts = torch.tensor([7, 7, 3, 3])
    results = {}
    for backend, p in (("reference", base.to(torch.float64)), ("torch", base.to(dtype))):
        r = vk.va_opd_loss(*p.kl_args, base.targets, cu, prompts, vocab_size=base.vocab_size,
                           teacher_hidden_degraded=p.teacher_hidden_degraded if with_va else None, backend=backend,
                           options=chunking)
        results[backend] = (r, _grads(r.loss * 3.0, p))
    (ref, ref_g), (out, out_g) = results["reference"], results["torch"]
    assert rel_err(out.loss, ref.loss) <= TOL[dtype]
    for a, b in zip(out_g, ref_g):
        assert rel_err(a, b) <= GRAD_TOL[dtype]
    assert torch.equal(out.high_mask, ref.high_mask) or dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32 and out.kl.dtype == torch.float32
    # The loss is exactly the weighted sum of the reported per-token KL.
    assert torch.allclose(out.loss.double(), (out.token_weight.double() * out.kl.double()).sum(), rtol=1e-5)


@pytest.mark.parametrize("divergence", ["reverse", "forward", "jsd"])
def test_gradcheck_linear_kl(chunking, divergence):
    p = make_problem(4, 3, 5, 7, 2, dtype=torch.float64, logit_scale=2.0)
    fn = lambda h, w: vk.linear_kl(h, w, p.teacher_hidden, p.teacher_weight, divergence=divergence,  # noqa: E731
                                   beta=0.4, temperature=0.9, vocab_size=p.vocab_size, backend="torch",
                                   options=chunking)
    assert torch.autograd.gradcheck(fn, (p.student_hidden, p.student_weight))


def test_gradcheck_logprob_and_loss(chunking):
    p = make_problem(5, 3, 4, 6, 1, dtype=torch.float64, logit_scale=2.0)
    lp = lambda h, w: vk.linear_logprob(h, w, p.targets, temperature=1.5, vocab_size=p.vocab_size,  # noqa: E731
                                        backend="torch", options=chunking)
    assert torch.autograd.gradcheck(lp, (p.student_hidden, p.student_weight))
    cu, prompts = torch.tensor([0, 2, 5]), torch.tensor([0, 0])
    loss = lambda h, w: vk.va_opd_loss(h, w, p.teacher_hidden, p.teacher_weight, p.targets, cu, prompts,  # noqa: E731
                                       teacher_hidden_degraded=p.teacher_hidden_degraded,
                                       vocab_size=p.vocab_size, backend="torch", options=chunking).loss
    assert torch.autograd.gradcheck(loss, (p.student_hidden, p.student_weight))


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_no_gradient_reaches_the_teacher(backend):
    p = make_problem(6, 4, 5, 11)
    th = p.teacher_hidden.clone().requires_grad_()
    tw = p.teacher_weight.clone().requires_grad_()
    thd = p.teacher_hidden_degraded.clone().requires_grad_()
    r = vk.va_opd_loss(p.student_hidden, p.student_weight, th, tw, p.targets, torch.tensor([0, 3, 6]),
                       torch.tensor([0, 0]), teacher_hidden_degraded=thd, backend=backend)
    kl = vk.linear_kl(p.student_hidden, p.student_weight, th, tw, backend=backend)
    (r.loss + kl.sum()).backward()
    assert th.grad is None and tw.grad is None and thd.grad is None
    assert p.student_hidden.grad is not None and p.student_weight.grad is not None


def test_inputs_are_not_modified():
    p = make_problem(7, 4, 6, 13, 2)
    before = [t.detach().clone() for t in (*p.kl_args, p.teacher_hidden_degraded, p.targets)]
    r = vk.va_opd_loss(*p.kl_args, p.targets, torch.tensor([0, 7]), torch.tensor([0]),
                       teacher_hidden_degraded=p.teacher_hidden_degraded, vocab_size=p.vocab_size, backend="torch")
    r.loss.backward()
    after = [t.detach() for t in (*p.kl_args, p.teacher_hidden_degraded, p.targets)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_kl_accurate_when_student_matches_teacher():
    """fp32 absolute error <= 1e-6 for nearly identical unit-scale logits at a real vocabulary."""
    p = near_teacher(make_problem(16, 64, 64, 151_936, dtype=torch.float64, seed=0))
    h, w, h_t, w_t = (t.detach() for t in p.kl_args)
    ref = vk.linear_kl(h, w, h_t, w_t, backend="reference")
    out = vk.linear_kl(h.float(), w.float(), h_t.float(), w_t.float(), backend="torch")
    assert ref.max() < 1e-4  # the regime under test: tiny KL
    assert (out.double() - ref).abs().max() <= 1e-6
    same = vk.linear_kl(h.float(), w.float(), h.float(), w.float(), backend="torch")
    assert same.abs().max() <= 1e-6


@pytest.mark.parametrize("divergence", ["reverse", "forward", "jsd"])
def test_huge_logits_stay_finite(chunking, divergence):
    p = make_problem(6, 4, 4, 19, logit_scale=1e4)
    kl = vk.linear_kl(*p.kl_args, divergence=divergence, backend="torch", options=chunking)
    ref = vk.linear_kl(*p.to(torch.float64).kl_args, divergence=divergence, backend="reference", options=chunking)
    assert torch.isfinite(kl).all()
    assert rel_err(kl, ref) <= 1e-4
    g = _grads(kl.sum(), p)
    assert all(torch.isfinite(x).all() for x in g)
    r = vk.va_opd_loss(*p.kl_args, p.targets, torch.tensor([0, 6]), torch.tensor([0]),
                       teacher_hidden_degraded=p.teacher_hidden_degraded, backend="torch", options=chunking)
    assert torch.isfinite(r.loss) and torch.isfinite(r.visual_advantage).all()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_loss_supports_a_repeated_backward(backend):
    """The precomputed gradients are handed over by the first backward; a second one recomputes."""
    if backend not in vk.available_backends():
        pytest.skip(f"{backend} backend not available here")
    p = make_problem(8, 4, 6, 13)
    r = vk.va_opd_loss(*p.kl_args, p.targets, torch.tensor([0, 3, 8]), torch.tensor([0, 0]),
                       teacher_hidden_degraded=p.teacher_hidden_degraded, backend=backend)
    first = torch.autograd.grad(r.loss, [p.student_hidden, p.student_weight], retain_graph=True)
    first = [g.clone() for g in first]
    second = torch.autograd.grad(r.loss * 2.0, [p.student_hidden, p.student_weight])
    for a, b in zip(first, second):
        assert torch.allclose(2.0 * a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("backend", ["torch"])
def test_caller_autocast_does_not_change_the_result(backend):
    """Trainers often call the loss (and even backward) inside torch.autocast: the fused backends
    keep their own fp32 math. (The reference backend's plain-autograd backward is not guarded.)"""
    p = make_problem(12, 16, 24, 300, 4, logit_scale=3.0)
    args = (*p.kl_args, p.targets, torch.tensor([0, 5, 12]), torch.tensor([0, 0]))
    opts = dict(teacher_hidden_degraded=p.teacher_hidden_degraded, vocab_size=p.vocab_size, backend=backend)
    plain = vk.va_opd_loss(*args, **opts)
    want = _grads(plain.loss, p)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = vk.va_opd_loss(*args, **opts)
        kl = vk.linear_kl(*p.kl_args, vocab_size=p.vocab_size, backend=backend)
        got = _grads(mixed.loss, p)  # backward inside the region too
        kl_grads = _grads(kl.sum(), p)
    assert mixed.loss.dtype == torch.float32
    assert rel_err(mixed.loss, plain.loss) <= 1e-6
    for a, b in zip(got, want):
        assert a.dtype == torch.float32 and rel_err(a, b) <= 1e-6
    ref_kl = vk.linear_kl(*p.kl_args, vocab_size=p.vocab_size, backend=backend)
    assert rel_err(kl, ref_kl) <= 1e-6
    for a, b in zip(kl_grads, _grads(ref_kl.sum(), p)):
        assert rel_err(a, b) <= 1e-6
