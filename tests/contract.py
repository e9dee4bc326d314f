"""The backend contract as one case matrix: every public op on a backend against the reference
backend in float64 (values and gradients, head padding, temperatures, every divergence).

``tests/test_contract.py`` runs it for every backend; ``tests/test_cuda_backend.py`` adds the
cuda backend's own checks.
"""
from __future__ import annotations

import torch

from vaopd_kernels import KernelOptions, objective, ops
from vaopd_kernels.backends import reference


def make_inputs(n=12, ds=16, dt=24, vocab=37, pad=3, dtype=torch.float32, device="cpu", seed=0, close=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    sh, sw = r(n, ds), r(vocab + pad, ds) * (2.0 / ds ** 0.5)
    th, tw = r(n, dt), r(vocab + pad + 2, dt) * (2.0 / dt ** 0.5)
    if close:  # student ~ teacher: exercises the accurate lse-gap branch
        dt = ds
        th, tw = sh + 1e-3 * r(n, ds), sw.clone()
        tw = torch.cat([tw + 1e-3 * r(*tw.shape), r(2, ds)])
    thd = th + 0.7 * r(*th.shape)
    targets = torch.randint(0, vocab, (n,), generator=g)
    token_weight = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    upstream = torch.randn(n, generator=g, dtype=torch.float64)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return dict(sh=cast(sh), sw=cast(sw), th=cast(th), tw=cast(tw), thd=cast(thd), y=targets.to(device),
                token_weight=token_weight.to(device=device, dtype=torch.float32), upstream=upstream.to(device),
                vocab=vocab)


CASES = [
    ("linear_kl", dict(divergence="reverse", temperature=1.0)),
    ("linear_kl", dict(divergence="reverse", temperature=0.7)),
    ("linear_kl", dict(divergence="forward", temperature=1.3)),
    ("linear_kl", dict(divergence="jsd", beta=0.3, temperature=1.0)),
    ("linear_logprob", dict(temperature=1.0)),
    ("linear_logprob", dict(temperature=0.5)),
    ("teacher_logprobs", {}),
    ("va_kl", {}),
    ("weighted_kl", {}),
    ("given_weights_kl", dict(targets=True)),
    ("given_weights_kl", dict(targets=False)),
]


def run_case(impl, name, options, x):
    """Run one contract function; returns ({output name: tensor}, {grad name: tensor})."""
    sh = x["sh"].detach().clone().requires_grad_(True)
    sw = x["sw"].detach().clone().requires_grad_(True)
    th, tw, thd, y, vocab = x["th"], x["tw"], x["thd"], x["y"], x["vocab"]
    up = x["upstream"]
    ko = dict(options=x.get("kernel_options", KernelOptions()))
    outs, scalar = {}, None
    if name == "linear_kl":
        kl = ops.linear_kl(impl, sh, sw, th, tw, divergence=options["divergence"], beta=options.get("beta", 0.5),
                            temperature=options["temperature"], vocab_size=vocab, **ko)
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
    elif name == "va_kl":
        r = ops.va_kl(impl, sh, sw, th, tw, y, thd, vocab_size=vocab, **ko)
        outs.update(kl=r.kl, va=r.visual_advantage, slp=r.student_logprob, tlp=r.teacher_logprob,
                    ent=r.student_entropy)
        scalar = (r.kl * up.to(r.kl.dtype)).sum()
    elif name == "weighted_kl":
        weights = objective.TokenWeights(x["token_weight"], None, None, None)
        loss, r, _ = ops.weighted_kl(impl, sh, sw, th, tw, y, thd, lambda va: weights, vocab_size=vocab, **ko)
        outs.update(loss=loss, kl=r.kl, slp=r.student_logprob, ent=r.student_entropy, tlp=r.teacher_logprob)
        scalar = 2.5 * loss
    elif name == "given_weights_kl":
        loss, r = ops.given_weights_kl(impl, sh, sw, th, tw, x["token_weight"], y if options["targets"] else None,
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
        grads = {"d_sh": sh.grad, "d_sw": sw.grad}
    return {k: v.detach() for k, v in outs.items()}, grads


def oracle(name, options, x):
    x64 = {k: (v.detach().double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in x.items()}
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
        err = (grads[k].double() - w_grads[k].double()).norm() / w_grads[k].double().norm().clamp_min(1e-30)
        assert err <= gtol, f"{label}{k}: relative gradient error {float(err):.3g} > {gtol}"
