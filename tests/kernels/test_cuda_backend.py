"""The "cuda" backend's own checks (its contract matrix runs in test_contract.py).

* ``*_gpu`` tests run the real CUDA kernels (skipped without a CUDA device / buildable extension).
* ``*_emulated`` tests run the backend's orchestration (chunking, GEMM routes, packed half
  gradients, autograd wiring) on the CPU with a torch emulation of the kernels
  (``_cuda_emulation.py``), so that part is covered on every machine.
"""
from __future__ import annotations

import pytest
import torch

from _cuda_emulation import EmulatedOps
from contract import compare, make_inputs, oracle, run_case
from vaopd_kernels import KernelOptions, LMHead, objective, ops
from vaopd_kernels.backends import cuda as cuda_backend
from vaopd_kernels.backends import reference
from vaopd_kernels.testing import rel_err

# ----------------------------------------------------------------------------- helpers


def _gpu_skip_reason():
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return cuda_backend.unavailable_reason()


_GPU_REASON = _gpu_skip_reason()
needs_gpu = pytest.mark.skipif(_GPU_REASON is not None, reason=f"cuda backend unavailable: {_GPU_REASON}")


# ----------------------------------------------------------------------------- emulated (CPU)
@pytest.fixture
def emulated_ops():
    saved = (cuda_backend._ops, cuda_backend._load_error)
    cuda_backend._set_ops_for_testing(EmulatedOps())
    yield
    cuda_backend._ops, cuda_backend._load_error = saved


def test_changing_the_teacher_before_backward_raises_emulated(emulated_ops):
    """The backward recomputes teacher logits: a teacher head changed in place after the forward
    pass makes it raise (as torch's own operations do)."""
    x = make_inputs()
    sh, sw = x["sh"].requires_grad_(), x["sw"].requires_grad_()
    kl = ops.linear_kl(cuda_backend, sh, sw, x["th"], x["tw"], divergence="reverse", beta=0.5, temperature=1.0,
                       vocab_size=x["vocab"], options=KernelOptions())
    x["tw"].mul_(1.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        kl.sum().backward()


def test_close_distributions_emulated(emulated_ops):
    x = make_inputs(close=True, dtype=torch.float64)
    compare(run_case(cuda_backend, "va_kl", {}, x), oracle("va_kl", {}, x), torch.float64)


def test_objective_weights_emulated(emulated_ops):
    va = torch.tensor([0.0, 0.3, 0.3, 0.1, 0.0, 2.0, 0.5, 0.5, 0.5, 0.0], dtype=torch.float64)
    cu, prompts = torch.tensor([0, 1, 4, 10]), torch.tensor([3, 8, 3])
    options = dict(high_fraction=0.34, high_weight=0.7, va_temperature=0.5, eps=1e-6, num_prompts=None)
    got = cuda_backend.va_opd_coefficients(va, cu, prompts, **options)
    want = objective.va_opd_coefficients(va, cu, prompts, **options)
    assert torch.equal(got.high_mask, want.high_mask)
    for field in ("token_weight", "rollout_weight", "visual_advantage"):
        torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=1e-8, atol=0)


def test_native_head_grad_accumulation_emulated(emulated_ops):
    """KernelOptions(head_grad="native") sums d(head) over row chunks in bf16: the same gradient up to
    one bf16 rounding per chunk, and no fp32 [V, Ds] buffer."""
    x = make_inputs(n=96, ds=32, dt=48, vocab=160, dtype=torch.bfloat16, seed=5)
    budget = 12 * x["vocab"] * 4 * 2  # 12 rows per chunk: 8 chunks
    want = oracle("va_opd_loss", {}, x)[1]["d_sw"].double()
    errors = {}
    for mode in ("fp32", "native"):
        x["kernel_options"] = KernelOptions(chunk_budget_bytes=budget, head_grad=mode)
        got = run_case(cuda_backend, "va_opd_loss", {}, x)[1]["d_sw"].double()
        errors[mode] = rel_err(got, want)
    # Measured: fp32 2.5e-3 (bf16 dlogits and one final rounding), native 4.1e-3 (8 chunk roundings);
    # a dropped or doubled chunk would cost ~10% or more.
    assert errors["fp32"] < 4e-3 and errors["native"] < 8e-3, errors


def _linear_kl(impl, x, student_bias, teacher_bias, **kwargs):
    """ops.linear_kl through transformed heads with these biases (the scales and soft-caps of x["heads"])
    in row chunks of 5: its outputs and the gradients w.r.t. (hidden, weight, bias)."""
    sh, sw = x["sh"].detach().clone().requires_grad_(), x["sw"].detach().clone().requires_grad_()
    student = LMHead(sw, student_bias, *x["heads"]["student"][1:])
    teacher = LMHead(x["tw"], teacher_bias, *x["heads"]["teacher"][1:])
    out = ops.linear_kl(impl, sh, student, x["th"], teacher, divergence="reverse", beta=0.5, temperature=0.7,
                        vocab_size=x["vocab"], options=KernelOptions(chunk_budget_bytes=5 * x["vocab"] * 8),
                        **kwargs)
    kl = out[0] if isinstance(out, tuple) else out
    kl.sum().backward()
    return out, (sh.grad, sw.grad)


def test_strided_bias_emulated(emulated_ops):
    """Biases that are strided views (every other element) are read as their values, and the
    student's gets its gradient through the view."""
    x = make_inputs(transformed=True, dtype=torch.float64)
    biases = [x["heads"][side][0] for side in ("student", "teacher")]
    buffers = [torch.zeros(2 * b.shape[0], dtype=b.dtype) for b in biases]
    for buffer, b in zip(buffers, biases):
        buffer[::2] = b
    buffers[0].requires_grad_()
    got, got_grads = _linear_kl(cuda_backend, x, buffers[0][::2], buffers[1][::2])
    student_bias = biases[0].clone().requires_grad_()
    want, want_grads = _linear_kl(reference, x, student_bias, biases[1])
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    for g, w in zip((*got_grads, buffers[0].grad[::2]), (*want_grads, student_bias.grad)):
        assert rel_err(g, w) < 1e-9
    assert not buffers[0].grad[1::2].any()


def test_linear_kl_entropy_without_targets_emulated(emulated_ops):
    """linear_kl(return_entropy=True): the student's entropy from the divergence scan, no targets."""
    x = make_inputs(transformed=True, dtype=torch.float64)
    biases = [x["heads"][side][0] for side in ("student", "teacher")]
    (kl, entropy), _ = _linear_kl(cuda_backend, x, *biases, return_entropy=True)
    (want_kl, want_entropy), _ = _linear_kl(reference, x, *biases, return_entropy=True)
    torch.testing.assert_close(kl, want_kl, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(entropy, want_entropy, rtol=1e-9, atol=1e-9)


def test_rows_per_chunk_respects_budget():
    rows = cuda_backend._rows_per_chunk(8192, 151936, 2, torch.float32, 1 << 30)
    assert rows % 128 == 0 and rows * 151936 * 4 * 2 <= 1 << 30
    assert cuda_backend._rows_per_chunk(3, 151936, 2, torch.float32, 1 << 30) == 3
    assert cuda_backend._rows_per_chunk(100, 10, 3, torch.float32, 1) == 1


def test_backend_contract_surface():
    for fn in ("scan", "gradients", "va_opd_coefficients", "unavailable_reason", "supports_device"):
        assert callable(getattr(cuda_backend, fn))
    assert cuda_backend.supports_device(torch.device("cpu")) is False
    if not torch.cuda.is_available():
        assert cuda_backend.unavailable_reason() is not None


# ----------------------------------------------------------------------------- real kernels (GPU)
@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_close_distributions_gpu(dtype):
    x = make_inputs(n=16, ds=64, vocab=2048, pad=0, close=True, dtype=dtype, device="cuda", seed=3)
    compare(run_case(cuda_backend, "va_kl", {}, x), oracle("va_kl", {}, x), dtype)


@needs_gpu
@pytest.mark.gpu
def test_public_api_va_opd_loss_gpu():
    import vaopd_kernels as vk

    x = make_inputs(n=24, ds=64, dt=96, vocab=1000, pad=8, dtype=torch.bfloat16, device="cuda", seed=4)
    cu = torch.tensor([0, 5, 11, 12, 20, 24], device="cuda")
    pid = torch.tensor([0, 0, 0, 1, 1], device="cuda")
    results, grads = {}, {}
    for backend in ("cuda", "reference"):
        sh = x["sh"].detach().clone().requires_grad_(True)
        sw = x["sw"].detach().clone().requires_grad_(True)
        r = vk.va_opd_loss(sh, sw, x["th"], x["tw"], x["y"], cu, pid, teacher_hidden_degraded=x["thd"],
                           vocab_size=x["vocab"], backend=backend)
        r.loss.backward()
        results[backend], grads[backend] = r, (sh.grad.double(), sw.grad.double())
    torch.testing.assert_close(results["cuda"].loss.double(), results["reference"].loss.double(),
                               atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(results["cuda"].kl.double(), results["reference"].kl.double(), atol=1e-3, rtol=1e-3)
    for got, want in zip(grads["cuda"], grads["reference"]):
        assert rel_err(got, want) < 3e-2
    # The coefficients came from the objective kernels: same mask and weights as the torch objective.
    assert torch.equal(results["cuda"].high_mask, results["reference"].high_mask)
    objective_args = (results["cuda"].kl, results["cuda"].visual_advantage, cu, pid)
    on_gpu, in_torch = (vk.va_opd_objective(*objective_args, backend=b) for b in ("cuda", "torch"))
    assert torch.equal(on_gpu.high_mask, in_torch.high_mask)
    torch.testing.assert_close(on_gpu.token_weight, in_torch.token_weight, rtol=1e-6, atol=0)


@needs_gpu
@pytest.mark.gpu
def test_ops_under_torch_compile_gpu():
    cuda_backend._load_ops()
    zs = torch.randn(4, 64, device="cuda")
    zt = torch.randn(4, 64, device="cuda")

    def f(a, b):
        kl, *_ = torch.ops.vaopd.divergence(a.clone(), b, None, None, 0, 0.5, 1.0, 0)
        return kl * 2

    eager = f(zs, zt)
    compiled = torch.compile(f, fullgraph=True)(zs, zt)
    torch.testing.assert_close(compiled, eager)
