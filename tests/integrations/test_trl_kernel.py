"""linear_kl against TRL's own fused divergence (trl.kernels.chunked_divergence, what
trl.DistillationTrainer runs) on heads with a bias, a logit scale and a soft-cap per side: the
per-token divergence, the student's entropy and the student's gradients (hidden, weight, bias)."""
import pytest
import torch
from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

import vaopd_kernels as vk
from vaopd_kernels.testing import rel_err

# (our divergence, our beta, TRL's beta): TRL's beta 0 is forward KL, 1 reverse KL, between them its JSD.
DIVERGENCES = [("forward", 0.5, 0.0), ("reverse", 0.5, 1.0), ("jsd", 0.5, 0.5), ("jsd", 0.3, 0.3)]
# (bias, logit scale, soft-cap) of the student's head, then the teacher's.
HEADS = {"student-bias-scale/teacher-softcap": ((True, 0.8, None), (False, 1.0, 30.0)),
         "student-softcap/teacher-bias-scale": ((False, 1.0, 5.0), (True, 1.25, None)),
         "both-everything": ((True, 0.8, 5.0), (True, 1.25, 30.0))}


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("divergence,beta,trl_beta", DIVERGENCES)
def test_linear_kl_equals_trls_chunked_divergence(divergence, beta, trl_beta, temperature, heads, backend):
    n, ds, dt, vocab = 11, 16, 24, 97
    (s_bias, s_scale, s_cap), (t_bias, t_scale, t_cap) = HEADS[heads]
    student = [torch.randn(n, ds) * 2, torch.randn(vocab, ds) * 0.7, torch.randn(vocab) if s_bias else None]
    teacher_hidden, teacher_weight = torch.randn(n, dt) * 2, torch.randn(vocab, dt) * 0.7
    teacher_bias = torch.randn(vocab) if t_bias else None

    def leaves():
        return [None if t is None else t.clone().requires_grad_() for t in student]

    trl_in = leaves()
    trl_kl, trl_entropy = ChunkedDivergenceFunction.apply(
        trl_in[0], trl_in[1], trl_in[2], teacher_hidden, teacher_weight, teacher_bias, trl_beta, temperature,
        s_scale, s_cap, t_scale, t_cap)
    trl_kl.sum().backward()

    ours_in = leaves()
    kl, entropy = vk.linear_kl(ours_in[0], vk.LMHead(ours_in[1], ours_in[2], s_scale, s_cap), teacher_hidden,
                               vk.LMHead(teacher_weight, teacher_bias, t_scale, t_cap), divergence=divergence,
                               beta=beta, temperature=temperature, return_entropy=True, backend=backend)
    kl.sum().backward()

    assert rel_err(kl, trl_kl, norm="max") < 1e-5
    assert rel_err(entropy, trl_entropy, norm="max") < 1e-5
    for name, ours, theirs in zip(("hidden", "weight", "bias"), ours_in, trl_in):
        if theirs is not None:
            assert rel_err(ours.grad, theirs.grad, norm="max") < 2e-5, name
