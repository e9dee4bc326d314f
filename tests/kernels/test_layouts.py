"""Every public function on every backend gives the reference's answer for any tensor layout.

Each tensor argument is handed over as a strided view (every other element, non-unit last stride
for matrices), an expanded view (stride 0: one row repeated), a view at a storage offset, a
column-major matrix, or a mix where each argument gets another of those layouts. The oracle is
the reference backend on contiguous float64 copies of the same values.
"""
from __future__ import annotations

import pytest
import torch

import vaopd_kernels as vk
from vaopd_kernels import testing
from vaopd_kernels.backends import backend_unavailable_reason
from vaopd_kernels.testing import rel_err

N, DS, DT, V, PAD = 11, 8, 12, 37, 3
LAYOUTS = ["strided", "expanded", "offset", "column_major", "mixed"]
BACKENDS = ["reference", "torch", "triton", "cuda"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# "mixed": another layout per argument (heads never expanded there, so VA stays non-trivial)
MIXED = dict(sh="strided", sw="column_major", th="offset", tw="strided", thd="expanded", y="strided", cu="offset",
             pid="expanded", kl="expanded", va="strided")


def _strided(v: torch.Tensor) -> torch.Tensor:
    if v.dim() == 1:
        big = torch.zeros(2 * v.shape[0] + 1, dtype=v.dtype, device=v.device)
        big[1::2] = v
        return big[1::2]
    big = torch.zeros(2 * v.shape[0], 3 * v.shape[1], dtype=v.dtype, device=v.device)
    big[::2, ::3] = v
    return big[::2, ::3]


def _offset(v: torch.Tensor) -> torch.Tensor:
    big = torch.zeros(v.numel() + 5, dtype=v.dtype, device=v.device)
    big[5:] = v.reshape(-1)
    return big[5:].view(v.shape)


def _column_major(v: torch.Tensor) -> torch.Tensor:
    return v.t().contiguous().t() if v.dim() == 2 else _strided(v)


def _expanded_values(v: torch.Tensor) -> torch.Tensor:
    """A stride-0 view: the first row (element) repeated."""
    return v[:1].expand(v.shape)


MAKERS = {"strided": _strided, "offset": _offset, "column_major": _column_major}


def layout(v: torch.Tensor, kind: str, expandable: bool = True) -> torch.Tensor:
    """``v``'s values (or, for "expanded", its first row repeated) in layout ``kind``."""
    if kind == "expanded":
        return _expanded_values(v) if expandable else _strided(v)
    return MAKERS[kind](v)


def _problem(seed=0):
    p = testing.make_inputs(testing.Shape(N, DS, DT, V, seed=seed), logit_std=1.0, head_padding=(PAD, PAD))
    g = torch.Generator().manual_seed(seed)
    return dict(
        sh=p.student_hidden.detach(), sw=p.student_weight.detach(), th=p.teacher_hidden, tw=p.teacher_weight,
        thd=p.teacher_hidden_degraded, y=p.targets,
        cu=torch.tensor([0, 3, 4, 8, 11]), pid=torch.tensor([5, 5, 2, 2]),  # prompts neither sorted nor from 0
        kl=torch.rand(N, generator=g), va=torch.rand(N, generator=g))


GRAD_ARGS = {"sh", "sw", "kl"}


def _views(values, kind, dtype):
    """Every argument in layout ``kind``; float ones in ``dtype``, those with gradients as views of
    grad-requiring leaves. cu_seqlens never expands (it must increase)."""
    out = {}
    for name, v in values.items():
        v = (v.to(dtype) if v.is_floating_point() else v).to(DEVICE)
        view = layout(v, MIXED[name] if kind == "mixed" else kind, expandable=name != "cu")
        if name in GRAD_ARGS:
            leaf = view._base if view._base is not None else view
            leaf = leaf.detach().requires_grad_()
            view = leaf.as_strided(view.shape, view.stride(), view.storage_offset())
        out[name] = view
    return out


def _contiguous64(views):
    return {name: (v.detach().double().contiguous().requires_grad_(name in GRAD_ARGS) if v.is_floating_point()
                   else v.contiguous()) for name, v in views.items()}


def _run(call, x, backend):
    """{output name: tensor}, with gradients w.r.t. the grad arguments a call has; ``call:divergence``
    is the call with ``visual_signal="divergence"``."""
    call, _, signal = call.partition(":")
    kw = dict(backend=backend, **({"visual_signal": signal} if signal else {}))
    if call == "linear_kl":
        outs = {"kl": vk.linear_kl(x["sh"], x["sw"], x["th"], x["tw"], vocab_size=V, **kw)}
        scalar, wrt = outs["kl"].sum(), ("sh", "sw")
    elif call == "linear_logprob":
        outs = {"lp": vk.linear_logprob(x["sh"], x["sw"], x["y"], vocab_size=V, **kw)}
        scalar, wrt = outs["lp"].sum(), ("sh", "sw")
    elif call == "visual_advantage":
        clamp = signal == "divergence"  # the signed gap for "sampled"; the divergence has no other form
        targets = None if signal else x["y"]
        outs = {"va": vk.visual_advantage(x["th"], x["thd"], x["tw"], targets, vocab_size=V, clamp=clamp, **kw)}
        scalar, wrt = None, ()
    elif call == "va_kl":
        r = vk.va_kl(x["sh"], x["sw"], x["th"], x["tw"], x["y"], teacher_hidden_degraded=x["thd"], vocab_size=V, **kw)
        outs = dict(kl=r.kl, va=r.visual_advantage, slp=r.student_logprob, tlp=r.teacher_logprob,
                    ent=r.student_entropy)
        scalar, wrt = r.kl.sum(), ("sh", "sw")
    elif call == "va_opd_objective":
        r = vk.va_opd_objective(x["kl"], x["va"], x["cu"], x["pid"], **kw)
        outs = dict(loss=r.loss, token_weight=r.token_weight, high=r.high_mask.double())
        scalar, wrt = r.loss, ("kl",)
    else:
        r = vk.va_opd_loss(x["sh"], x["sw"], x["th"], x["tw"], x["y"], x["cu"], x["pid"],
                           teacher_hidden_degraded=x["thd"], vocab_size=V, **kw)
        outs = dict(loss=r.loss, kl=r.kl, va=r.visual_advantage, token_weight=r.token_weight)
        scalar, wrt = r.loss, ("sh", "sw")
    if scalar is not None:
        grads = torch.autograd.grad(scalar, [x[name] for name in wrt])
        outs.update({f"d_{name}": g for name, g in zip(wrt, grads)})
    return {k: v.detach().double() for k, v in outs.items()}


CALLS = ["linear_kl", "linear_logprob", "visual_advantage", "va_kl", "va_opd_objective", "va_opd_loss",
         "visual_advantage:divergence", "va_kl:divergence", "va_opd_loss:divergence"]


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_any_layout_gives_the_reference_answer(backend, call, kind):
    reason = backend_unavailable_reason(backend)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")
    if backend == "triton":  # the Triton kernels run on the CPU under the interpreter
        from vaopd_kernels.backends.triton import _config
        if not _config.INTERPRET and not torch.cuda.is_available():
            pytest.skip("triton needs CUDA or TRITON_INTERPRET=1")
    dtype = torch.float64 if backend == "reference" else torch.float32
    views = _views(_problem(), kind, dtype)
    got = _run(call, views, backend)
    want = _run(call, _contiguous64(views), "reference")
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert got.keys() == want.keys()
    if kind == "expanded" and call == "va_opd_loss:divergence":
        # one row repeated: every token's divergence ties, so its high groups are a rounding coin flip
        got, want = ({k: d[k] for k in ("kl", "va")} for d in (got, want))
    for name in want:
        # relative to the largest value, absolute below 1 (a degenerate layout can make KL ~ 0)
        err = rel_err(got[name], want[name], norm="max", floor=1.0)
        assert err <= tol, f"{call}/{kind}/{backend}: {name} off by {err:.3g}"
