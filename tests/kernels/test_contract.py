"""The backend contract (contract.py) for every backend: torch, triton (under the CPU
interpreter without a GPU), the cuda backend's orchestration with emulated kernels on the CPU, and
the real cuda kernels on a GPU."""
from __future__ import annotations

import pytest
import torch

from _cuda_emulation import EmulatedOps
from contract import CASES, compare, make_inputs, oracle, run_case
from vaopd_kernels import KernelOptions
from vaopd_kernels.backends import _load, backend_unavailable_reason
from vaopd_kernels.backends import cuda as cuda_backend

GPU = torch.cuda.is_available()
# (backend, device, dtypes, kernel options for "many chunks"); triton computes float64 in float32
BACKENDS = {
    "torch": ("cpu", [torch.float32, torch.float64, torch.bfloat16],
              lambda x: KernelOptions(chunk_budget_bytes=1, vocab_tile=7)),
    "triton": ("cuda" if GPU else "cpu", [torch.float32, torch.bfloat16],
               lambda x: KernelOptions(triton_workspace_bytes=1)),
    "cuda-emulated": ("cpu", [torch.float32, torch.float64, torch.bfloat16],
                      lambda x: KernelOptions(chunk_budget_bytes=5 * x["vocab"] * 8)),
    "cuda": ("cuda", [torch.float32, torch.bfloat16, torch.float16, torch.float64],
             lambda x: KernelOptions(chunk_budget_bytes=5 * x["vocab"] * 8)),
}
PARAMS = [(b, d) for b, (_, dtypes, _) in BACKENDS.items() for d in dtypes]


@pytest.fixture
def backend(request):
    name = request.param
    if name == "cuda-emulated":
        saved = (cuda_backend._ops, cuda_backend._load_error)
        cuda_backend._set_ops_for_testing(EmulatedOps())
        yield cuda_backend
        cuda_backend._ops, cuda_backend._load_error = saved
        return
    reason = backend_unavailable_reason(name) or (None if name != "cuda" or GPU else "no GPU")
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    yield _load(name)


@pytest.mark.parametrize("chunks", ["one", "many", "many-transformed"])
@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
@pytest.mark.parametrize("backend,dtype", PARAMS, indirect=["backend"], ids=[f"{b}-{str(d)[6:]}" for b, d in PARAMS])
def test_backend_matches_reference(backend, dtype, name, options, chunks, request):
    label = request.node.callspec.params["backend"]
    device, _, many = BACKENDS[label]
    # "many-transformed": LMHeads with a bias, a logit scale and a soft-cap on both sides
    transformed = chunks == "many-transformed"
    x = make_inputs(dtype=dtype, device=device, transformed=transformed)
    if chunks != "one" and label == "cuda":  # V = 1024: the kernels' 16-byte vector path, several chunks
        x = make_inputs(n=40, ds=64, dt=96, vocab=1024, pad=8, dtype=dtype, device=device, seed=1,
                        transformed=transformed)
    if chunks != "one":
        x["kernel_options"] = many(x)
    compare(run_case(backend, name, options, x), oracle(name, options, x), dtype)
