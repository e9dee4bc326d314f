"""The torch backend never materialises [N, V] logits: peak RSS growth in a fresh process."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

N, D, V = 2048, 32, 32768
FULL_LOGITS_MB = N * V * 4 / 2**20  # one fp32 [N, V] tensor: 256 MiB

SCRIPT = textwrap.dedent(f"""
    import json, resource, sys, torch
    import vaopd_kernels as vk
    torch.set_num_threads(1)
    backend = sys.argv[1]
    options = vk.KernelOptions(chunk_budget_bytes=16 << 20)
    from vaopd_kernels.testing import Shape, make_inputs
    x = make_inputs(Shape({N}, {D}, {D}, {V}), logit_std=1.0, degraded_noise=0.1)
    (sh, sw, th, tw), thd, y, cu, pid = x.kl_args, x.teacher_hidden_degraded, x.targets, x.cu_seqlens, x.prompt_ids
    # Warm up allocator and kernels on a small slice, then take the baseline.
    vk.va_opd_loss(sh[:64], sw, th[:64], tw, y[:64], torch.tensor([0, 64]), torch.tensor([0]),
                   teacher_hidden_degraded=thd[:64], backend=backend, options=options).loss.backward()
    sh.grad = sw.grad = None
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = vk.va_opd_loss(sh, sw, th, tw, y, cu, pid, teacher_hidden_degraded=thd, backend=backend, options=options)
    r.loss.backward()
    kl = vk.linear_kl(sh, sw, th, tw, backend=backend, options=options)
    kl.sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"growth_mb": (peak - base) / 1024}}))
""")


def _growth_mb(backend: str) -> float:
    out = subprocess.run([sys.executable, "-c", SCRIPT, backend], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])["growth_mb"]


@pytest.mark.slow
def test_torch_backend_stays_far_below_full_logits():
    growth = _growth_mb("torch")
    assert growth < 0.25 * FULL_LOGITS_MB, f"torch backend grew {growth:.0f} MiB"


@pytest.mark.slow
def test_the_check_catches_a_backend_that_materialises_logits():
    growth = _growth_mb("reference")
    assert growth > FULL_LOGITS_MB, f"reference grew only {growth:.0f} MiB: the memory check is too weak"
