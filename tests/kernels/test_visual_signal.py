"""visual_signal="divergence" (docs/math.md, "The visual signal") against an oracle written here:
KL(p_t(. | image) || p_t(. | degraded)) from float64 log_softmax of both views' full logits over the
first vocab_size head rows. Every backend, every layout, poisoned outputs; the loss built on it
against the objective from that KL (loss and student gradients); the argument's checks."""
from __future__ import annotations

import pytest
import torch

import vaopd_kernels as vk
from _cuda_emulation import EmulatedOps
from test_layouts import LAYOUTS, PAD, V, _problem, _views
from vaopd_kernels import KernelOptions, ops
from vaopd_kernels.backends import backend_unavailable_reason
from vaopd_kernels.backends import cuda as cuda_backend
from vaopd_kernels.backends.triton import _config as triton_config
from vaopd_kernels.testing import rel_err

BACKENDS = ["reference", "torch", "triton"]
TOL = 2e-5  # float32 backends; the reference runs in float64


def kl_views(th, td, tw, vocab):
    """The oracle: KL(p_t || p_d) per row in float64."""
    w = tw[:vocab].double()
    logp_t = torch.log_softmax(th.double() @ w.T, -1)
    logp_d = torch.log_softmax(td.double() @ w.T, -1)
    return (logp_t.exp() * (logp_t - logp_d)).sum(-1)


def reverse_kl(sh, sw, th, tw, vocab):
    """The student's per-token reverse KL in float64, differentiable w.r.t. sh, sw."""
    logp_s = torch.log_softmax(sh.double() @ sw[:vocab].double().T, -1)
    logp_t = torch.log_softmax(th.double() @ tw[:vocab].double().T, -1)
    return (logp_s.exp() * (logp_s - logp_t)).sum(-1)


@pytest.fixture(autouse=True)
def _poisoned(monkeypatch):
    """Unwritten output memory reads as NaN: torch.empty (torch and cuda backends) and the triton
    kernels' buffers (split over the vocabulary, so the host-side merge is exercised too)."""
    empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned_empty)
    monkeypatch.setattr(triton_config, "POISON", True)
    monkeypatch.setattr(triton_config, "FORCE_SPLITS", 2)


def _skip_unavailable(backend):
    reason = backend_unavailable_reason(backend)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


def _close(got, want, label):
    err = rel_err(got.detach().double(), want.detach().double(), norm="max", floor=1.0)
    assert err <= TOL, f"{label}: off by {err:.3g}"


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_visual_advantage_is_the_kl_between_the_teacher_views(backend, kind):
    _skip_unavailable(backend)
    x = _views(_problem(seed=3), kind, torch.float64 if backend == "reference" else torch.float32)
    assert x["tw"].shape[0] == V + PAD  # vocab_size < head rows: the padding rows stay out
    want = kl_views(x["th"], x["thd"], x["tw"], V)
    got = vk.visual_advantage(x["th"], x["thd"], x["tw"], vocab_size=V, visual_signal="divergence", backend=backend)
    assert got.dtype == x["th"].dtype and not got.requires_grad
    _close(got, want, f"{backend}/{kind}")
    with_targets = vk.visual_advantage(x["th"], x["thd"], x["tw"], x["y"], vocab_size=V, visual_signal="divergence",
                                       backend=backend)
    assert torch.equal(with_targets, got)  # the divergence reads no targets


def test_cuda_orchestration_gives_the_kl_between_the_teacher_views(monkeypatch):
    """The cuda backend's chunked scan (several row chunks) with the kernels emulated on the CPU."""
    monkeypatch.setattr(cuda_backend, "_ops", EmulatedOps())
    monkeypatch.setattr(cuda_backend, "_load_error", None)
    x = _problem(seed=4)
    options = KernelOptions(chunk_budget_bytes=3 * V * 4 * 2)
    got = ops.visual_divergence(cuda_backend, x["th"], x["tw"], x["thd"], vocab_size=V, options=options)
    _close(got, kl_views(x["th"], x["thd"], x["tw"], V), "cuda-emulated")


@pytest.mark.parametrize("fused_views", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_va_opd_loss_is_the_objective_of_the_divergence(backend, fused_views):
    _skip_unavailable(backend)
    x = _problem(seed=5)
    dtype = torch.float64 if backend == "reference" else torch.float32
    sh, sw = (x[k].to(dtype).requires_grad_() for k in ("sh", "sw"))
    th, tw, thd = (x[k].to(dtype) for k in ("th", "tw", "thd"))
    va = kl_views(th, thd, tw, V)
    want = vk.va_opd_objective(reverse_kl(sh, sw, th, tw, V), va, x["cu"], x["pid"], backend="reference")
    want_grads = torch.autograd.grad(want.loss, (sh, sw))

    got = vk.va_opd_loss(sh, sw, th, tw, x["y"], x["cu"], x["pid"], teacher_hidden_degraded=thd, vocab_size=V,
                         visual_signal="divergence", backend=backend, options=KernelOptions(fused_views=fused_views))
    grads = torch.autograd.grad(got.loss, (sh, sw))
    _close(got.visual_advantage, va, "visual_advantage")
    assert torch.equal(got.high_mask, want.high_mask)
    _close(got.token_weight, want.token_weight, "token_weight")
    _close(got.loss, want.loss, "loss")
    for name, g, w in zip(("d_sh", "d_sw"), grads, want_grads):
        assert rel_err(g.double(), w) <= 1e-4, name
    module = vk.VAOPDLoss(vocab_size=V, visual_signal="divergence", backend=backend)
    assert torch.equal(module(sh, sw, th, tw, x["y"], x["cu"], x["pid"], teacher_hidden_degraded=thd).loss, got.loss)
    kl = vk.va_kl(sh, sw, th, tw, x["y"], teacher_hidden_degraded=thd, vocab_size=V, visual_signal="divergence",
                  backend=backend)
    _close(kl.visual_advantage, va, "va_kl")


def test_the_signals_differ_and_sampled_is_the_default():
    x = _problem(seed=6)
    args = (x["th"], x["thd"], x["tw"], x["y"])
    default = vk.visual_advantage(*args, vocab_size=V, backend="torch")
    assert torch.equal(default, vk.visual_advantage(*args, vocab_size=V, visual_signal="sampled", backend="torch"))
    assert not torch.allclose(default, vk.visual_advantage(*args, vocab_size=V, visual_signal="divergence",
                                                           backend="torch"))


def test_bad_visual_signal_is_named():
    x = _problem()
    student_teacher = (x["sh"], x["sw"], x["th"], x["tw"], x["y"])
    calls = [
        lambda s: vk.visual_advantage(x["th"], x["thd"], x["tw"], x["y"], vocab_size=V, visual_signal=s),
        lambda s: vk.va_kl(*student_teacher, teacher_hidden_degraded=x["thd"], vocab_size=V, visual_signal=s),
        lambda s: vk.va_opd_loss(*student_teacher, x["cu"], x["pid"], teacher_hidden_degraded=x["thd"],
                                 vocab_size=V, visual_signal=s),
        lambda s: vk.VAOPDLoss(visual_signal=s),
    ]
    for call in calls:
        for bad in ("kl", None, "Divergence"):
            with pytest.raises(ValueError, match=r"^visual_signal: expected one of \('sampled', 'divergence'\)"):
                call(bad)
    with pytest.raises(ValueError, match="^clamp:"):
        vk.visual_advantage(x["th"], x["thd"], x["tw"], vocab_size=V, clamp=False, visual_signal="divergence")
    with pytest.raises(TypeError, match="^targets:"):  # "sampled" reads the sampled tokens
        vk.visual_advantage(x["th"], x["thd"], x["tw"], vocab_size=V)
