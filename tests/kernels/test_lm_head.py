"""LMHead: read from transformers models as their own forward computes logits, checked on input,
and the numerics around it (autocast, the JSD of distributions that underflow in different
vocabulary blocks, rows with no tokens). The transform against the float64 oracle on every backend
is the contract matrix's "many-transformed" case (test_contract.py)."""
import pytest
import torch
from transformers import (CohereConfig, CohereForCausalLM, Gemma2Config, Gemma2ForCausalLM, GraniteConfig,
                          GraniteForCausalLM, PhiConfig, PhiForCausalLM)

import vaopd_kernels as vk
from vaopd_kernels import testing

TINY = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1)
# (family, config extras, what LMHead.from_model must read: has a bias, logit_scale, final_logit_softcapping)
FAMILIES = {
    "gemma2-softcap": (Gemma2Config, Gemma2ForCausalLM, dict(head_dim=8, final_logit_softcapping=1.5),
                       (False, 1.0, 1.5)),
    "cohere-logit-scale": (CohereConfig, CohereForCausalLM, dict(logit_scale=0.5), (False, 0.5, None)),
    "granite-logits-scaling": (GraniteConfig, GraniteForCausalLM, dict(logits_scaling=4.0), (False, 0.25, None)),
    "phi-bias": (PhiConfig, PhiForCausalLM, {}, (True, 1.0, None)),
}


def _double(head: vk.LMHead) -> vk.LMHead:
    bias = head.bias.detach().double() if head.bias is not None else None
    return vk.LMHead(head.weight.detach().double(), bias, head.logit_scale, head.final_logit_softcapping)


@pytest.mark.parametrize("family", FAMILIES)
def test_from_model_gives_the_models_own_log_probs_and_entropy(family):
    config_cls, model_cls, extras, (has_bias, scale, cap) = FAMILIES[family]
    torch.manual_seed(0)
    model = model_cls(config_cls(**TINY, **extras)).eval()
    head = vk.LMHead.from_model(model)
    assert (head.bias is not None, head.logit_scale, head.final_logit_softcapping) == (has_bias, scale, cap)
    assert head.weight is model.get_output_embeddings().weight  # the parameter itself: gradients reach it

    ids = torch.randint(0, TINY["vocab_size"], (2, 7))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    hidden = out.hidden_states[-1].flatten(0, 1).double()  # after the final norm: what the head reads
    log_p = torch.log_softmax(out.logits.flatten(0, 1).double(), -1)
    targets = torch.randint(0, TINY["vocab_size"], (hidden.shape[0],))
    got = vk.linear_logprob(hidden, _double(head), targets, backend="torch")
    torch.testing.assert_close(got, log_p.gather(1, targets[:, None])[:, 0], atol=1e-6, rtol=0)
    # the entropy linear_kl returns is the model's, whatever the teacher
    _, entropy = vk.linear_kl(hidden, _double(head), hidden, _double(head), return_entropy=True, backend="torch")
    torch.testing.assert_close(entropy, -(log_p.exp() * log_p).sum(-1), atol=1e-6, rtol=0)


def _explicit_log_softmax(hidden, head: vk.LMHead, temperature):
    """The transform written out in float64, independent of the library's own."""
    z = hidden.double() @ head.weight.double().T + head.bias.double()
    z = z * head.logit_scale
    if head.final_logit_softcapping is not None:
        z = head.final_logit_softcapping * torch.tanh(z / head.final_logit_softcapping)
    return torch.log_softmax(z / temperature, -1)


def _explicit_divergence(logp_s, logp_t, divergence, beta):
    p_s, p_t = logp_s.exp(), logp_t.exp()
    if divergence == "reverse":
        return (p_s * (logp_s - logp_t)).sum(-1)
    if divergence == "forward":
        return (p_t * (logp_t - logp_s)).sum(-1)
    logm = torch.log(beta * p_t + (1 - beta) * p_s)
    return beta * (p_t * (logp_t - logm)).sum(-1) + (1 - beta) * (p_s * (logp_s - logm)).sum(-1)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("divergence", ["reverse", "forward", "jsd"])
@pytest.mark.parametrize("backend", [b for b in vk.available_backends() if b != "reference"])
def test_transformed_heads_match_the_explicit_formula(backend, divergence, temperature):
    """Every divergence and temperature: values, entropy and the gradients of the student's hidden
    states, weight and bias, in fp32 against the formula in float64 (soft-cap on the student, scale
    and bias on both sides)."""
    p = testing.make_inputs(testing.Shape(24, 8, 12, 70), "cpu")
    g = torch.Generator().manual_seed(1)
    bias = lambda rows: 0.5 * torch.randn(rows, generator=g)  # noqa: E731
    student = vk.LMHead(p.student_weight.detach().requires_grad_(), bias(70).requires_grad_(), 0.8, 2.0)
    teacher = vk.LMHead(p.teacher_weight, bias(70), 1.25, None)
    hidden = p.student_hidden.detach().requires_grad_()
    options = vk.KernelOptions(vocab_tile=16) if backend == "torch" else None
    kl, entropy = vk.linear_kl(hidden, student, p.teacher_hidden, teacher, divergence=divergence, beta=0.3,
                               temperature=temperature, return_entropy=True, backend=backend, options=options)
    upstream = torch.randn(24, generator=g)
    grads = torch.autograd.grad((kl * upstream).sum(), (hidden, student.weight, student.bias))

    leaves = [t.detach().double().requires_grad_() for t in (hidden, student.weight, student.bias)]
    logp_s = _explicit_log_softmax(leaves[0], vk.LMHead(*leaves[1:], 0.8, 2.0), temperature)
    logp_t = _explicit_log_softmax(p.teacher_hidden, teacher, temperature)
    want = _explicit_divergence(logp_s, logp_t, divergence, 0.3)
    want_grads = torch.autograd.grad((want * upstream.double()).sum(), leaves)
    torch.testing.assert_close(kl.double(), want.detach(), atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(entropy.double(), -(logp_s.exp() * logp_s).sum(-1).detach(), atol=2e-5, rtol=2e-5)
    for name, got, expected in zip(("hidden", "weight", "bias"), grads, want_grads):
        assert testing.rel_err(got, expected) < 2e-4, name


def test_from_model_without_an_lm_head_names_the_model():
    class Headless(torch.nn.Module):
        def get_output_embeddings(self):
            return None

    with pytest.raises(ValueError, match="^model: Headless has no output embeddings"):
        vk.LMHead.from_model(Headless())


W = torch.randn(9, 4)


@pytest.mark.parametrize("head,message", [
    (vk.LMHead(W, bias=torch.randn(8)), r"student_weight.bias: expected 9 entries"),
    (vk.LMHead(W, bias=torch.randn(9, 1)), r"student_weight.bias: expected a 1-D tensor"),
    (vk.LMHead(W, bias=torch.zeros(9, dtype=torch.long)), r"student_weight.bias: expected dtype float32"),
    (vk.LMHead(W, logit_scale=float("nan")), r"student_weight.logit_scale: expected a finite number"),
    (vk.LMHead(W, logit_scale=True), r"student_weight.logit_scale: expected a finite number"),
    (vk.LMHead(W, final_logit_softcapping=0.0), r"student_weight.final_logit_softcapping: expected a finite number > 0"),
    ("weights", r"student_weight: expected a torch.Tensor or vaopd_kernels.LMHead, got str"),
])
def test_a_bad_head_is_refused_naming_its_part(head, message):
    with pytest.raises((ValueError, TypeError), match=message):
        vk.linear_kl(torch.randn(3, 4), head, torch.randn(3, 4), W)


def test_a_nan_bias_is_named():
    head = vk.LMHead(W, bias=torch.full((9,), float("nan")))
    with pytest.raises(ValueError, match=r"^teacher_weight.bias: expected finite values"):
        vk.linear_kl(torch.randn(3, 4), W, torch.randn(3, 4), head)


def test_a_plain_tensor_and_an_identity_lm_head_give_the_same_bits():
    p = testing.make_inputs(testing.Shape(20, 8, 12, 33), "cpu")
    plain = vk.linear_kl(*p.kl_args, return_entropy=True, backend="torch")
    wrapped = vk.linear_kl(p.student_hidden, vk.LMHead(p.student_weight), p.teacher_hidden,
                           vk.LMHead(p.teacher_weight), return_entropy=True, backend="torch")
    assert all(torch.equal(a, b) for a, b in zip(plain, wrapped))


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_autocast_changes_nothing(backend):
    """Under torch.autocast the kernels still compute in fp32 from the inputs' own dtypes (README),
    bit for bit as without it; they do not round logits to the autocast dtype as an autocast matmul would."""
    p = testing.make_inputs(testing.Shape(16, 8, 12, 40), "cpu")
    head = vk.LMHead(p.student_weight, torch.randn(40), 0.7, 5.0)

    def run():
        kl, entropy = vk.linear_kl(p.student_hidden, head, p.teacher_hidden, p.teacher_weight, return_entropy=True,
                                   backend=backend)
        (grad,) = torch.autograd.grad(kl.sum(), p.student_hidden)
        return kl, entropy, grad

    plain = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = run()
    assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(plain, under))


def _one_hot_logits(logits: torch.Tensor):
    """(hidden, head) whose logits are ``logits`` exactly: an identity head."""
    return logits.clone(), torch.eye(logits.shape[1], dtype=logits.dtype)


@pytest.mark.parametrize("backend", vk.available_backends())
def test_jsd_of_distributions_that_underflow_in_different_blocks(backend):
    """The student's mass sits in the first vocabulary block, the teacher's in the last: each side's
    probabilities underflow to 0 in fp32 where the other's mass is. JSD is then the mixture's entropy
    term -beta log beta - (1 - beta) log(1 - beta), finite, with a finite gradient."""
    vocab, beta = 96, 0.3
    student, teacher = torch.full((4, vocab), -60.0), torch.full((4, vocab), -60.0)
    student[:, :8] = 60.0
    teacher[:, -8:] = 60.0
    sh, sw = _one_hot_logits(student)
    th, tw = _one_hot_logits(teacher)
    sh.requires_grad_()
    options = vk.KernelOptions(vocab_tile=32) if backend == "torch" else None
    jsd = vk.linear_kl(sh, sw, th, tw, divergence="jsd", beta=beta, backend=backend, options=options)
    want = torch.full((4,), -beta * torch.log(torch.tensor(beta)) - (1 - beta) * torch.log(torch.tensor(1 - beta)))
    torch.testing.assert_close(jsd, want, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(jsd.sum(), sh)
    oracle_sh = sh.detach().double().requires_grad_()
    oracle = vk.linear_kl(oracle_sh, sw.double(), th.double(), tw.double(), divergence="jsd", beta=beta,
                          backend="reference")
    (want_grad,) = torch.autograd.grad(oracle.sum(), oracle_sh)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad.double(), want_grad, atol=1e-5, rtol=1e-4)


def test_no_rows_keep_the_graph_to_the_whole_head():
    """A micro-batch whose tokens are all masked out: a zero loss that still reaches the hidden
    states, the head and its bias (zero gradients, not None), so data-parallel ranks stay in step."""
    h = torch.randn(0, 4, requires_grad=True)
    head = vk.LMHead(torch.randn(9, 4, requires_grad=True), torch.randn(9, requires_grad=True), 0.5, 3.0)
    out = vk.weighted_kl(h, head, torch.randn(0, 6), torch.randn(9, 6), torch.zeros(0))
    kl, entropy = vk.linear_kl(h, head, torch.randn(0, 6), torch.randn(9, 6), return_entropy=True)
    assert out.loss.item() == 0 and kl.shape == entropy.shape == (0,)
    (out.loss + kl.sum()).backward()
    assert not head.weight.grad.any() and not head.bias.grad.any() and h.grad.shape == (0, 4)
