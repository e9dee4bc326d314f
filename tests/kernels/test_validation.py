"""Bad input raises a clear error naming the argument; nothing runs on garbage."""
from __future__ import annotations

import pytest
import torch

import vaopd_kernels as vk
from problems import make_problem


@pytest.fixture
def p():
    return make_problem(6, 4, 5, 11, head_padding=2)


def _loss(p, **overrides):
    args = dict(student_hidden=p.student_hidden, student_weight=p.student_weight, teacher_hidden=p.teacher_hidden,
                teacher_weight=p.teacher_weight, targets=p.targets, cu_seqlens=torch.tensor([0, 2, 6]),
                prompt_ids=torch.tensor([0, 0]), teacher_hidden_degraded=p.teacher_hidden_degraded,
                vocab_size=p.vocab_size)
    args.update(overrides)
    positional = [args.pop(k) for k in ("student_hidden", "student_weight", "teacher_hidden", "teacher_weight",
                                        "targets", "cu_seqlens", "prompt_ids")]
    return vk.va_opd_loss(*positional, **args)


@pytest.mark.parametrize("overrides,error,name", [
    (lambda p: dict(student_hidden=p.student_hidden[0]), ValueError, "student_hidden"),
    (lambda p: dict(student_weight=p.student_weight[:, :3]), ValueError, "student_weight"),
    (lambda p: dict(teacher_hidden=p.teacher_hidden[:5]), ValueError, "teacher_hidden"),
    (lambda p: dict(teacher_hidden_degraded=p.teacher_hidden_degraded[:, :2]), ValueError, "teacher_hidden_degraded"),
    (lambda p: dict(targets=p.targets.float()), TypeError, "targets"),
    (lambda p: dict(targets=p.targets[:4]), ValueError, "targets"),
    (lambda p: dict(targets=torch.full_like(p.targets, 11)), ValueError, "targets"),
    (lambda p: dict(targets=torch.full_like(p.targets, -1)), ValueError, "targets"),
    (lambda p: dict(vocab_size=14), ValueError, "vocab_size"),
    (lambda p: dict(vocab_size=0), ValueError, "vocab_size"),
    (lambda p: dict(vocab_size=None, student_weight=p.student_weight[:12]), ValueError, "vocab_size"),
    (lambda p: dict(cu_seqlens=torch.tensor([0, 2, 5])), ValueError, "cu_seqlens"),
    (lambda p: dict(cu_seqlens=torch.tensor([1, 2, 6])), ValueError, "cu_seqlens"),
    (lambda p: dict(cu_seqlens=torch.tensor([0, 2, 2, 6]), prompt_ids=torch.tensor([0, 0, 0])), ValueError,
     "cu_seqlens"),
    (lambda p: dict(cu_seqlens=torch.tensor([0.0, 2.0, 6.0])), TypeError, "cu_seqlens"),
    (lambda p: dict(prompt_ids=torch.tensor([0, 0, 1])), ValueError, "prompt_ids"),
    (lambda p: dict(prompt_ids=torch.tensor([0.0, 1.0])), TypeError, "prompt_ids"),
    (lambda p: dict(high_fraction=0.0), ValueError, "high_fraction"),
    (lambda p: dict(high_fraction=1.5), ValueError, "high_fraction"),
    (lambda p: dict(high_weight=-0.1), ValueError, "high_weight"),
    (lambda p: dict(high_weight=1.1), ValueError, "high_weight"),
    (lambda p: dict(va_temperature=0.0), ValueError, "va_temperature"),
    (lambda p: dict(eps=-1.0), ValueError, "eps"),
    (lambda p: dict(num_prompts=0), ValueError, "num_prompts"),
    (lambda p: dict(teacher_hidden=torch.full_like(p.teacher_hidden, float("nan"))), ValueError, "teacher_hidden"),
    (lambda p: dict(backend="nope"), ValueError, "backend"),
    (lambda p: dict(student_hidden=p.student_hidden.detach().to("meta")), ValueError, "meta"),
    (lambda p: dict(student_hidden=p.student_hidden.detach().int()), TypeError, "student_hidden"),
    (lambda p: dict(student_hidden=p.student_hidden.detach().numpy()), TypeError, "student_hidden"),
])
def test_va_opd_loss_rejects(p, overrides, error, name):
    with pytest.raises(error, match=name):
        _loss(p, **overrides(p))


def test_kernel_functions_reject_bad_options(p):
    with pytest.raises(ValueError, match="divergence"):
        vk.linear_kl(*p.kl_args, divergence="kl", vocab_size=11)
    for beta in (0.0, 1.0, 2.0):
        with pytest.raises(ValueError, match="beta"):
            vk.linear_kl(*p.kl_args, divergence="jsd", beta=beta, vocab_size=11)
    with pytest.raises(ValueError, match="temperature"):
        vk.linear_kl(*p.kl_args, temperature=-1.0, vocab_size=11)
    with pytest.raises(ValueError, match="temperature"):
        vk.linear_logprob(p.student_hidden, p.student_weight, p.targets, temperature=float("inf"))
    with pytest.raises(ValueError, match="hidden_degraded"):
        vk.visual_advantage(p.teacher_hidden, p.teacher_hidden[:3], p.teacher_weight, p.targets)
    with pytest.raises(ValueError, match="targets"):
        vk.va_kl(*p.kl_args, p.targets + 100, vocab_size=11)


def test_objective_rejects_bad_input():
    kl, va, cu, pid = torch.rand(4), torch.rand(4), torch.tensor([0, 4]), torch.tensor([0])
    with pytest.raises(ValueError, match="visual_advantage"):
        vk.va_opd_objective(kl, torch.tensor([0.1, float("nan"), 0.2, 0.3]), cu, pid)
    with pytest.raises(ValueError, match="visual_advantage"):
        vk.va_opd_objective(kl, va[:3], cu, pid)
    with pytest.raises(ValueError, match="token_kl"):
        vk.va_opd_objective(kl[None], va, cu, pid)
    with pytest.raises(ValueError, match="backend"):
        vk.va_opd_objective(kl, va, cu, pid, backend="gpu")
    with pytest.raises(RuntimeError, match="cuda"):  # the cuda kernels cannot take CPU tensors
        vk.va_opd_objective(kl, va, cu, pid, backend="cuda")
    with pytest.raises(ValueError, match="cu_seqlens"):
        vk.opd_objective(kl, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="num_rollouts"):
        vk.opd_objective(kl, cu, num_rollouts=-2)


def test_unavailable_backend_names_the_reason(p):
    for name in ("triton", "cuda"):
        if name in vk.available_backends():
            continue
        with pytest.raises(RuntimeError, match=name):
            vk.linear_kl(*p.kl_args, vocab_size=11, backend=name)


def test_module_form_matches_function(p):
    module = vk.VAOPDLoss(vocab_size=p.vocab_size, high_fraction=0.5, backend="torch")
    r1 = module(*p.kl_args, p.targets, torch.tensor([0, 2, 6]), torch.tensor([0, 0]),
                teacher_hidden_degraded=p.teacher_hidden_degraded)
    r2 = _loss(p, high_fraction=0.5, backend="torch")
    assert torch.equal(r1.loss.detach(), r2.loss.detach())
    with pytest.raises(ValueError, match="high_weight"):
        vk.VAOPDLoss(high_weight=2.0)
    assert "torch" in vk.available_backends() and "reference" in vk.available_backends()


def _poisoned(t, value):
    """A copy of a hidden state or head with ``value`` at [3, 1]: row 3 is a token, and a
    vocabulary entry (not head padding) of the heads."""
    t = t.detach().clone()
    t[3, 1] = value
    return t.requires_grad_(True)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["student_hidden", "student_weight", "teacher_hidden", "teacher_weight",
                                  "teacher_hidden_degraded"])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_non_finite_inputs_are_named_not_propagated(p, name, value, backend):
    """A NaN or inf anywhere in the hidden states or heads raises, naming that input, in every
    public function (never a silent NaN loss), OPD and VA-OPD alike."""
    bad = _poisoned(getattr(p, name), value)
    with pytest.raises(ValueError, match=name):
        _loss(p, **{name: bad}, backend=backend)
    if name != "teacher_hidden_degraded":
        with pytest.raises(ValueError, match=name):
            _loss(p, **{name: bad}, teacher_hidden_degraded=None, backend=backend)
        args = {k: getattr(p, k) for k in ("student_hidden", "student_weight", "teacher_hidden", "teacher_weight")}
        args[name] = bad
        with pytest.raises(ValueError, match=name):
            vk.linear_kl(*args.values(), vocab_size=p.vocab_size, backend=backend)
        with pytest.raises(ValueError, match=name):
            vk.va_kl(*args.values(), p.targets, teacher_hidden_degraded=p.teacher_hidden_degraded,
                     vocab_size=p.vocab_size, backend=backend)
    if name.startswith("student"):
        hidden, weight = (bad, p.student_weight) if name == "student_hidden" else (p.student_hidden, bad)
        with pytest.raises(ValueError, match=name.split("_")[1]):
            vk.linear_logprob(hidden, weight, p.targets, vocab_size=p.vocab_size, backend=backend)
    if name in ("teacher_hidden", "teacher_hidden_degraded"):
        full, degraded = ((bad, p.teacher_hidden_degraded) if name == "teacher_hidden"
                          else (p.teacher_hidden, bad))
        with pytest.raises(ValueError, match="hidden_full" if name == "teacher_hidden" else "hidden_degraded"):
            vk.visual_advantage(full, degraded, p.teacher_weight, p.targets, vocab_size=p.vocab_size,
                                backend=backend)


def test_non_finite_token_kl_is_named():
    kl, va, cu, pid = torch.rand(4), torch.rand(4), torch.tensor([0, 4]), torch.tensor([0])
    kl[1] = float("inf")
    with pytest.raises(ValueError, match="token_kl"):
        vk.va_opd_objective(kl, va, cu, pid)
    with pytest.raises(ValueError, match="token_kl"):
        vk.opd_objective(kl, cu)


@pytest.mark.parametrize("field,value", [
    ("chunk_budget_bytes", 0), ("chunk_budget_bytes", True), ("chunk_budget_bytes", 1.5),
    ("vocab_tile", -7), ("vocab_tile", False), ("triton_workspace_bytes", None), ("triton_workspace_bytes", 0),
    ("fused_views", 1), ("fused_views", "yes"), ("backward_gemm", "CUBLAS"), ("head_grad", "bf16"),
    ("gradient_filter_eps", -1e-3), ("gradient_filter_eps", float("nan")), ("gradient_filter_eps", True),
    ("gradient_filter_eps", "2e-12"),
])
def test_kernel_options_name_the_bad_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}: expected"):
        vk.KernelOptions(**{field: value})


def test_kernel_options_refuse_the_filter_with_cublas():
    with pytest.raises(ValueError, match="gradient_filter_eps: the filter needs backward_gemm='triton'"):
        vk.KernelOptions(gradient_filter_eps=1e-3, backward_gemm="cublas")


@pytest.mark.parametrize("call", ["linear_kl", "linear_logprob", "visual_advantage", "va_kl", "va_opd_objective",
                                  "va_opd_loss", "VAOPDLoss"])
def test_options_must_be_kernel_options(p, call):
    bad = {"chunk_budget_bytes": 1 << 20}
    calls = {
        "linear_kl": lambda: vk.linear_kl(*p.kl_args, vocab_size=p.vocab_size, options=bad),
        "linear_logprob": lambda: vk.linear_logprob(p.student_hidden, p.student_weight, p.targets,
                                                    vocab_size=p.vocab_size, options=bad),
        "visual_advantage": lambda: vk.visual_advantage(p.teacher_hidden, p.teacher_hidden_degraded, p.teacher_weight,
                                                        p.targets, vocab_size=p.vocab_size, options=bad),
        "va_kl": lambda: vk.va_kl(*p.kl_args, p.targets, vocab_size=p.vocab_size, options=bad),
        "va_opd_objective": lambda: vk.va_opd_objective(torch.rand(6), torch.rand(6), torch.tensor([0, 6]),
                                                        torch.tensor([0]), options=bad),
        "va_opd_loss": lambda: _loss(p, options=bad),
        "VAOPDLoss": lambda: vk.VAOPDLoss(options=bad),
    }
    with pytest.raises(TypeError, match="options: expected vaopd_kernels.KernelOptions"):
        calls[call]()


def test_importing_reads_no_settings_from_the_environment():
    """Malformed old-style variables cannot break the import, and VAOPD_BACKEND no longer
    overrides backend="auto" behind the caller's back."""
    import os
    import subprocess
    import sys
    script = ("import torch, vaopd_kernels as vk\n"
              "from vaopd_kernels.backends import resolve_backend\n"
              "print(resolve_backend('auto', torch.device('cpu')).__name__)")
    env = {**os.environ, "VAOPD_CHUNK_MB": "lots", "VAOPD_CUDA_HEAD_GRAD": "bf16", "VAOPD_BACKEND": "reference",
           "VAOPD_TRITON_FILTER_EPS": "x"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "vaopd_kernels.backends.torch_chunked"


def test_va_opd_loss_reads_device_values_four_times(p, monkeypatch):
    """Checking costs the host little: va_opd_loss copies device values to Python four times (the
    targets' range, cu_seqlens, the outputs' finiteness, the metrics), none inside the backend,
    and backward none at all. (On a GPU each such copy waits for the device.)"""
    reads = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads.append(_original)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    result = _loss(p, backend="torch")
    assert len(reads) == 4
    reads.clear()
    result.loss.backward()
    assert not reads


@pytest.mark.parametrize("changed", ["student_hidden", "student_weight", "teacher_weight"])
@pytest.mark.parametrize("call", ["linear_kl", "va_opd_loss"])
def test_changing_an_input_before_backward_raises(p, changed, call):
    """As with torch's own operations: a tensor the backward recomputes from, changed in place
    after the forward pass, makes backward raise instead of returning gradients of other values."""
    if call == "linear_kl":
        out = vk.linear_kl(*p.kl_args, vocab_size=p.vocab_size, backend="torch").sum()
    else:
        out = _loss(p, backend="torch").loss
    with torch.no_grad():
        getattr(p, changed).mul_(1.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


@pytest.mark.parametrize("kwargs,name", [(dict(vocab_size=-3), "vocab_size"), (dict(vocab_size=True), "vocab_size"),
                                         (dict(vocab_size=2.0), "vocab_size"), (dict(backend="tritn"), "backend"),
                                         (dict(high_fraction=True), "high_fraction"),
                                         (dict(high_weight=True), "high_weight"),
                                         (dict(va_temperature=True), "va_temperature"),
                                         (dict(eps=False), "eps")])
def test_vaopd_loss_module_rejects_bad_settings_at_construction(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        vk.VAOPDLoss(**kwargs)


@pytest.mark.parametrize("name", ["high_fraction", "high_weight"])
def test_bools_are_not_numbers(p, name):
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        _loss(p, **{name: True})
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        vk.va_opd_objective(torch.rand(6), torch.rand(6), torch.tensor([0, 6]), torch.tensor([0]), **{name: True})


def test_bool_beta_is_not_a_number(p):
    with pytest.raises(ValueError, match="^beta: expected"):
        vk.linear_kl(*p.kl_args, divergence="jsd", beta=True, vocab_size=p.vocab_size)


def _elsewhere(t):
    """The same tensor on another device (the meta device: no data, so a missed check fails loudly)."""
    return t.detach().to("meta")


@pytest.mark.parametrize("call,name", [
    ("linear_logprob", "targets"), ("visual_advantage", "targets"), ("va_kl", "targets"),
    ("va_opd_loss", "targets"), ("va_kl", "teacher_hidden_degraded"), ("va_opd_loss", "teacher_hidden_degraded"),
    ("va_opd_loss", "cu_seqlens"), ("va_opd_loss", "prompt_ids"), ("va_opd_loss", "teacher_weight"),
    ("linear_kl", "teacher_hidden"), ("va_opd_objective", "visual_advantage"), ("va_opd_objective", "cu_seqlens"),
])
def test_a_tensor_on_another_device_is_named(p, call, name):
    args = dict(student_hidden=p.student_hidden, student_weight=p.student_weight, teacher_hidden=p.teacher_hidden,
                teacher_weight=p.teacher_weight, targets=p.targets, teacher_hidden_degraded=p.teacher_hidden_degraded,
                cu_seqlens=torch.tensor([0, 2, 6]), prompt_ids=torch.tensor([0, 0]), visual_advantage=torch.rand(6))
    args[name] = _elsewhere(args[name])
    a = args
    calls = {
        "linear_kl": lambda: vk.linear_kl(a["student_hidden"], a["student_weight"], a["teacher_hidden"],
                                          a["teacher_weight"], vocab_size=p.vocab_size),
        "linear_logprob": lambda: vk.linear_logprob(a["student_hidden"], a["student_weight"], a["targets"],
                                                    vocab_size=p.vocab_size),
        "visual_advantage": lambda: vk.visual_advantage(a["teacher_hidden"], a["teacher_hidden_degraded"],
                                                        a["teacher_weight"], a["targets"], vocab_size=p.vocab_size),
        "va_kl": lambda: vk.va_kl(a["student_hidden"], a["student_weight"], a["teacher_hidden"], a["teacher_weight"],
                                  a["targets"], teacher_hidden_degraded=a["teacher_hidden_degraded"],
                                  vocab_size=p.vocab_size),
        "va_opd_loss": lambda: _loss(p, **{name: a[name]}),
        "va_opd_objective": lambda: vk.va_opd_objective(torch.rand(6), a["visual_advantage"], a["cu_seqlens"],
                                                        a["prompt_ids"]),
    }
    with pytest.raises(ValueError, match=f"^{name}: expected a tensor on cpu"):
        calls[call]()


@pytest.mark.parametrize("backend", [b for b in vk.available_backends() if b != "cuda"])
def test_no_rows_give_empty_results(backend):
    """N = 0 (an empty micro-batch): empty outputs, no error, on every backend."""
    if backend == "triton" and torch.cuda.is_available():
        pytest.skip("CPU tensors; the GPU run covers triton with its own tests")
    h, w = torch.randn(0, 4, requires_grad=True), torch.randn(9, 4, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long)
    lp = vk.linear_logprob(h, w, y, backend=backend)
    va = vk.visual_advantage(h.detach(), h.detach(), w, y, backend=backend)
    kl = vk.linear_kl(h, w, h.detach(), w.detach(), backend=backend)
    r = vk.va_kl(h, w, h.detach(), w.detach(), y, teacher_hidden_degraded=h.detach(), backend=backend)
    for out in (lp, va, kl, r.kl, r.visual_advantage, r.student_logprob, r.teacher_logprob, r.student_entropy):
        assert out.shape == (0,) and out.dtype == torch.float32
    grads = torch.autograd.grad(lp.sum() + kl.sum(), [h, w], allow_unused=True)
    assert all(g is None or not g.any() for g in grads)


def test_the_old_sibling_temperature_keyword_is_python_s_type_error(p):
    """``temperature`` of the objective became ``va_temperature`` (CHANGELOG.md): the old keyword
    must fail loudly, never be taken as a silent default or as the logit temperature."""
    va, cu, pid = torch.rand(6), torch.tensor([0, 2, 6]), torch.tensor([0, 0])
    calls = [lambda: _loss(p, temperature=0.5), lambda: vk.VAOPDLoss(temperature=0.5),
             lambda: vk.va_opd_coefficients(va, cu, pid, temperature=0.5),
             lambda: vk.va_opd_objective(torch.rand(6), va, cu, pid, temperature=0.5)]
    for call in calls:
        with pytest.raises(TypeError, match="unexpected keyword argument 'temperature'"):
            call()
