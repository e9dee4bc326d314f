"""The backend contract as one case matrix: every public op on a backend against the reference
backend in float64 (values and gradients, head padding, temperatures, every divergence).

``test_contract.py`` runs it for every backend; ``test_cuda_backend.py`` adds the
cuda backend's own checks.
"""
from __future__ import annotations

import torch

from vaopd_kernels import Coefficients, KernelOptions, LMHead, ops, testing
from vaopd_kernels.backends import reference
from vaopd_kernels.testing import rel_err


def make_inputs(n=12, ds=16, dt=24, vocab=37, pad=3, dtype=torch.float32, device="cpu", seed=0, close=False,
                transformed=False):
    """The shared problem (vaopd_kernels.testing.make_inputs) as the contract's argument dict, with padded
    heads (the teacher's longer), optionally a near-copy teacher, token weights and an upstream gradient.
    ``transformed``: both heads become LMHeads with a bias, a logit scale and a soft-cap small enough
    that tanh bends most logits (x["heads"]: side -> (bias, logit_scale, final_logit_softcapping))."""
    shape = testing.Shape(n, ds, dt, vocab, dtype=str(dtype).removeprefix("torch."), seed=seed)
    p = testing.make_inputs(shape, device, head_padding=(pad, pad + 2), degraded_noise=0.7)
    if close:  # student ~ teacher: exercises the accurate lse-gap branch
        p = testing.near_teacher(p, degraded_noise=0.7)
    g = torch.Generator().manual_seed(seed)
    token_weight = torch.rand(n, generator=g) + 0.1
    upstream = torch.randn(n, generator=g, dtype=torch.float64)
    heads = None
    if transformed:
        bias = lambda w: (0.5 * torch.randn(w.shape[0], generator=g)).to(device=device, dtype=w.dtype)  # noqa: E731
        heads = dict(student=(bias(p.student_weight), 0.8, 2.0), teacher=(bias(p.teacher_weight), 1.25, 3.0))
    return dict(sh=p.student_hidden.detach(), sw=p.student_weight.detach(), th=p.teacher_hidden,
                tw=p.teacher_weight, thd=p.teacher_hidden_degraded, y=p.targets,
                token_weight=token_weight.to(device), upstream=upstream.to(device), vocab=vocab, heads=heads)


CASES = [
    ("linear_kl", dict(divergence="reverse", temperature=1.0)),
    ("linear_kl", dict(divergence="reverse", temperature=0.7)),
    ("linear_kl", dict(divergence="forward", temperature=1.3)),
    ("linear_kl", dict(divergence="jsd", beta=0.3, temperature=1.0)),
    ("linear_kl", dict(divergence="reverse", temperature=0.7, return_entropy=True)),
    ("linear_logprob", dict(temperature=1.0)),
    ("linear_logprob", dict(temperature=0.5)),
    ("teacher_logprobs", {}),
    ("visual_divergence", {}),
    ("va_kl", {}),
    ("va_kl", dict(visual_signal="divergence")),
    ("va_opd_loss", {}),
    ("va_opd_loss", dict(visual_signal="divergence")),
    ("weighted_kl", dict(targets=True)),
    ("weighted_kl", dict(targets=False)),
]


def run_case(impl, name, options, x):
    """Run one contract function; returns ({output name: tensor}, {grad name: tensor})."""
    sh = x["sh"].detach().clone().requires_grad_(True)
    sw = x["sw"].detach().clone().requires_grad_(True)
    th, tw, thd, y, vocab = x["th"], x["tw"], x["thd"], x["y"], x["vocab"]
    leaves = {"d_sh": sh, "d_sw": sw}
    if x.get("heads"):  # the student's bias is a leaf too; the teacher's is a constant
        (sb, s_scale, s_cap), (tb, t_scale, t_cap) = x["heads"]["student"], x["heads"]["teacher"]
        sb = sb.detach().clone().requires_grad_(True)
        leaves["d_sb"] = sb
        sw, tw = LMHead(sw, sb, s_scale, s_cap), LMHead(tw, tb, t_scale, t_cap)
    up = x["upstream"]
    ko = dict(options=x.get("kernel_options", KernelOptions()))
    outs, scalar = {}, None
    if name == "linear_kl":
        kl = ops.linear_kl(impl, sh, sw, th, tw, divergence=options["divergence"], beta=options.get("beta", 0.5),
                           temperature=options["temperature"], vocab_size=vocab,
                           return_entropy=options.get("return_entropy", False), **ko)
        if options.get("return_entropy"):
            kl, outs["entropy"] = kl
        outs["kl"], scalar = kl, (kl * up.to(kl.dtype)).sum()
    elif name == "linear_logprob":
        lp = ops.linear_logprob(impl, sh, sw, y, temperature=options["temperature"], vocab_size=vocab, **ko)
        outs["logprob"], scalar = lp, (lp * up.to(lp.dtype)).sum()
    elif name == "teacher_logprobs":
        with torch.no_grad():
            lp, lpd = ops.teacher_logprobs(impl, th, tw, y, thd, vocab_size=vocab, **ko)
            lp1, none = ops.teacher_logprobs(impl, th, tw, y, None, vocab_size=vocab, **ko)
        assert none is None
        outs.update(lp=lp, lp_degraded=lpd, lp_single=lp1)
    elif name == "visual_divergence":
        with torch.no_grad():
            outs["kl_views"] = ops.visual_divergence(impl, th, tw, thd, vocab_size=vocab, **ko)
    elif name == "va_kl":
        r = ops.va_kl(impl, sh, sw, th, tw, y, thd, vocab_size=vocab, **options, **ko)
        outs.update(kl=r.kl, va=r.visual_advantage, slp=r.student_logprob, tlp=r.teacher_logprob,
                    ent=r.student_entropy)
        scalar = (r.kl * up.to(r.kl.dtype)).sum()
    elif name == "va_opd_loss":
        coefficients = Coefficients(x["token_weight"], None, None, None)
        loss, r, _ = ops.va_opd_loss(impl, sh, sw, th, tw, y, thd, lambda va: coefficients, vocab_size=vocab,
                                     **options, **ko)
        outs.update(loss=loss, kl=r.kl, va=r.visual_advantage, slp=r.student_logprob, ent=r.student_entropy,
                    tlp=r.teacher_logprob)
        scalar = 2.5 * loss
    elif name == "weighted_kl":
        loss, r = ops.weighted_kl(impl, sh, sw, th, tw, x["token_weight"], y if options["targets"] else None,
                                  vocab_size=vocab, **ko)
        assert r.visual_advantage is None
        if options["targets"]:
            outs.update(slp=r.student_logprob, ent=r.student_entropy)
        else:
            assert r.student_logprob is None and r.student_entropy is None
        outs.update(loss=loss, kl=r.kl)
        scalar = 2.5 * loss
    grads = {}
    if scalar is not None:
        scalar.backward()
        grads = {name: leaf.grad for name, leaf in leaves.items()}
    return {k: v.detach() for k, v in outs.items()}, grads


def oracle(name, options, x):
    double = lambda v: v.detach().double() if torch.is_tensor(v) and v.is_floating_point() else v  # noqa: E731
    x64 = {k: double(v) for k, v in x.items()}
    if x.get("heads"):
        x64["heads"] = {side: (double(b), *rest) for side, (b, *rest) in x["heads"].items()}
    return run_case(reference, name, options, x64)


_TOL = {  # (values atol, values rtol, gradient relative-norm tolerance)
    torch.float64: (1e-9, 1e-9, 1e-9),
    torch.float32: (2e-5, 2e-5, 2e-4),
    torch.bfloat16: (2e-4, 2e-4, 2e-2),
    torch.float16: (2e-4, 2e-4, 2e-2),
}


def compare(got, want, dtype, label=""):
    atol, rtol, gtol = _TOL[dtype]
    outs, grads = got
    w_outs, w_grads = want
    assert outs.keys() == w_outs.keys()
    for k in outs:
        expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        assert outs[k].dtype == expected_dtype, f"{label}{k}: dtype {outs[k].dtype}"
        torch.testing.assert_close(outs[k].double(), w_outs[k].double(), atol=atol, rtol=rtol,
                                   msg=lambda m, k=k: f"{label}{k}: {m}")
    assert grads.keys() == w_grads.keys()
    for k in grads:
        assert grads[k] is not None, f"{label}{k} missing"
        err = rel_err(grads[k], w_grads[k])
        assert err <= gtol, f"{label}{k}: relative gradient error {err:.3g} > {gtol}"
