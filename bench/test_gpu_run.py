"""The GPU script's CPU smoke mode (tiny shapes, TRITON_INTERPRET=1), so it cannot rot unseen.

    pytest bench/test_gpu_run.py        # about a minute on 2 shared cores
"""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from bench import gpu_run, gpu_stages, machine


def test_smoke_run_measures_every_stage_through_the_bench(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_run", "--smoke", "--out", str(tmp_path)],
                          cwd=machine.REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_run.json", "gpu_run.log", "gpu_run.md"]
    result = json.loads((tmp_path / "gpu_run.json").read_text())
    assert result["smoke"] and result["versions"].get("torch") and result["date"] and result["card"]
    stages = {s["stage"]: s for s in result["stages"]}
    assert list(stages) == [name for name, stage in gpu_stages.STAGES.items() if stage.default]
    cuda = torch.cuda.is_available()
    for name, stage in gpu_stages.STAGES.items():
        if not stage.default:
            continue
        if stage.gpu_only and not cuda:
            assert stages[name]["status"] == "skipped: no CUDA", stages[name]
        else:
            assert stages[name]["status"] == "ok", stages[name]
    cases = {c["case"]: c for s in result["stages"] for c in s.get("cases", [])}
    assert stages["gemm"]["measured"]["floor_ms"]["va_opd"] > 0
    # KL only through the scalar path, checked against the reference on a row slice
    for name in ("kl vaopd-torch", "kl vaopd-triton", "va_opd_loss triton (default)",
                 "peaked rows (margin 16, p_target ~ 0.95): filter off"):
        assert cases[name]["status"] == "ok" and cases[name]["check"]["ok"], cases[name]
        assert cases[name]["time_over_design_bound"] > 0
    # the compact table comes last, one row per case
    table = proc.stdout.strip().splitlines()
    assert table[-1].startswith("| ") and "gpu_tests" in table[-1]
    assert (tmp_path / "gpu_run.md").read_text().strip() == proc.stdout.strip()[proc.stdout.strip().index("## GPU run"):]


def test_a_stage_past_its_limit_is_reported_not_lost(tmp_path):
    env = gpu_run._stage_env(smoke=True, site="", cuda=False)
    logged = []
    result = gpu_run.run_stage("gemm", smoke=True, limit_s=0.5, env=env, log=logged.append)
    assert result["status"].startswith("timeout"), result
    assert "stage gemm" in logged[0]


def test_kernel_classes():
    assert gpu_stages.kernel_class("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n") == "GEMM (cuBLAS)"
    assert gpu_stages.kernel_class("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NNT") == "GEMM (cuBLAS)"
    assert gpu_stages.kernel_class("void divergence_kernel<float>(DivergenceArgs, bool)") == "vaopd row kernels"
    assert gpu_stages.kernel_class("void at::native::vectorized_elementwise_kernel<4>") == \
        "torch elementwise / reductions"


def test_profiler_time_is_summed_per_kernel_class_from_device_events_only():
    from types import SimpleNamespace as E
    cpu, gpu = "cpu", "cuda"
    events = [E(key="aten::mm", device_type=cpu, self_device_time_total=900.0, count=3),   # the op: not again
              E(key="sm90_xmma_gemm_bf16", device_type=gpu, self_device_time_total=900.0, count=3),
              E(key="void divergence_kernel<float>", device_type=gpu, self_device_time_total=300.0, count=5),
              E(key="void at::native::vectorized_elementwise_kernel", device_type=gpu,
                self_device_time_total=0.0, device_time_total=100.0, count=2)]
    classes, top = gpu_stages.device_time_by_class(events, gpu)
    assert classes == {"GEMM (cuBLAS)": 0.9, "vaopd row kernels": 0.3, "torch elementwise / reductions": 0.1}
    assert [k[1] for k in top][0] == "sm90_xmma_gemm_bf16" and len(top) == 3
