"""Microbenchmarks of every public op, per backend: forward, and forward + backward.

    pytest bench/ --benchmark-only                      # all
    pytest bench/ --benchmark-only -k "va_opd_loss"     # one op
    pytest bench/ --benchmark-only --benchmark-group-by=group   # backends side by side
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytest_benchmark")

import vaopd_kernels  # noqa: E402
from bench.conftest import bench_backends, sync  # noqa: E402

BACKENDS = bench_backends()


def _run(benchmark, shape_name, op, mode, fn, x):
    """Benchmark fn(); for mode "fwd+bwd" fn returns a scalar to backpropagate."""
    benchmark.group = f"{op} {mode} {shape_name}"

    def call():
        x.zero_grad()
        out = fn()
        if mode == "fwd+bwd":
            out.backward()
        sync()
        return out

    out = benchmark(call)
    x.zero_grad()
    return out


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_kl(benchmark, inputs, backend, mode):
    name, x = inputs
    with torch.set_grad_enabled(mode != "fwd"):
        _run(benchmark, name, "linear_kl", mode,
             lambda: vaopd_kernels.linear_kl(*x.kl_args, backend=backend).mean(), x)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_logprob(benchmark, inputs, backend, mode):
    name, x = inputs
    with torch.set_grad_enabled(mode != "fwd"):
        _run(benchmark, name, "linear_logprob", mode,
             lambda: vaopd_kernels.linear_logprob(x.student_hidden, x.student_weight, x.targets,
                                                  backend=backend).sum(), x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_visual_advantage(benchmark, inputs, backend):
    name, x = inputs
    _run(benchmark, name, "visual_advantage", "fwd",
         lambda: vaopd_kernels.visual_advantage(x.teacher_hidden, x.teacher_hidden_degraded, x.teacher_weight,
                                                x.targets, backend=backend), x)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_va_kl(benchmark, inputs, backend, mode):
    name, x = inputs
    with torch.set_grad_enabled(mode != "fwd"):
        _run(benchmark, name, "va_kl", mode,
             lambda: vaopd_kernels.va_kl(*x.kl_args, x.targets, teacher_hidden_degraded=x.teacher_hidden_degraded,
                                         backend=backend).kl.mean(), x)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("pixelated", [True, False], ids=["va_opd", "opd"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_va_opd_loss(benchmark, inputs, backend, pixelated, mode):
    name, x = inputs
    degraded = x.teacher_hidden_degraded if pixelated else None
    with torch.set_grad_enabled(mode != "fwd"):
        _run(benchmark, name, "va_opd_loss" if pixelated else "va_opd_loss[opd]", mode,
             lambda: vaopd_kernels.va_opd_loss(*x.kl_args, x.targets, x.cu_seqlens, x.prompt_ids,
                                               teacher_hidden_degraded=degraded, backend=backend).loss, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vaopd_loss_module(benchmark, inputs, backend):
    name, x = inputs
    module = vaopd_kernels.VAOPDLoss(backend=backend)
    _run(benchmark, name, "VAOPDLoss", "fwd+bwd",
         lambda: module(*x.kl_args, x.targets, x.cu_seqlens, x.prompt_ids,
                        teacher_hidden_degraded=x.teacher_hidden_degraded).loss, x)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_va_opd_objective(benchmark, inputs, mode):
    """Backend independent: the reduction from per-token KL and VA to the loss."""
    name, x = inputs
    n = x.student_hidden.shape[0]
    gen = torch.Generator(device=x.targets.device).manual_seed(0)
    kl = torch.rand(n, generator=gen, device=x.targets.device).requires_grad_(mode != "fwd")
    va = torch.rand(n, generator=gen, device=x.targets.device).clamp_min(0.3) - 0.3

    def fn():
        kl.grad = None
        return vaopd_kernels.va_opd_objective(kl, va, x.cu_seqlens, x.prompt_ids).loss

    with torch.set_grad_enabled(mode != "fwd"):
        _run(benchmark, name, "va_opd_objective", mode, fn, x)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_opd_objective(benchmark, inputs, mode):
    name, x = inputs
    n = x.student_hidden.shape[0]
    kl = torch.rand(n, device=x.targets.device).requires_grad_(mode != "fwd")

    def fn():
        kl.grad = None
        return vaopd_kernels.opd_objective(kl, x.cu_seqlens).loss

    with torch.set_grad_enabled(mode != "fwd"):
        _run(benchmark, name, "opd_objective", mode, fn, x)
