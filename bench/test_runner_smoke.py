"""A seconds-long check that the comparison runner's pieces work (skipped by --benchmark-only).

    pytest bench/test_runner_smoke.py
"""
from __future__ import annotations

import torch

from bench import report
from bench.peers import build_impls
from bench.presets import get_preset
from bench.worker import run_job


def test_every_impl_yields_a_row_and_correct_answers(tmp_path):
    preset = get_preset("smoke", "cpu")
    shape = preset.shapes[0]
    records, cache = [], {}
    for impl in build_impls().values():
        for task in preset.tasks:
            job = {"task": task, "shape": shape.as_dict(), "reps": 1, "warmup": 1, "check": True}
            records.append(run_job(impl, torch.device("cpu"), job, cache))
    by = {(r["impl"], r["task"]): r for r in records}
    assert {r["status"] for r in records} <= {"ok", "unavailable", "not offered"}
    for task in preset.tasks:
        for name in ("naive", "authors", "vaopd-torch", "vaopd-reference"):
            rec = by[(name, task)]
            assert rec["status"] == "ok", rec
            assert rec["check"]["ok"], rec["check"]
    assert by[("cce", "va_opd")]["status"] in ("unavailable", "not offered")

    report.annotate(records, rate_flops_per_s=1e10)
    assert all(r["cross_check"]["ok"] for r in records if r.get("cross_check")), records
    result = {"preset": "smoke", "created": "now", "machine": {"tag": "test", "cpu": "cpu", "cores": 1,
                                                              "torch_threads": 1},
              "versions": {"torch": torch.__version__}, "matmul_rate": {"flops_per_s": 1e10}, "reps": 1,
              "warmup": 1, "sweep": None, "results": records}
    paths = report.write(result, tmp_path)
    text = (tmp_path / "smoke.md").read_text()
    assert "| naive | ok |" in text and "vaopd-torch" in text
    assert all(p.exists() for p in paths)


def test_wrong_answer_is_flagged():
    """A fast wrong answer must not pass the check: scale the naive KL by 1.01."""
    from bench import check
    from bench.peers import Outputs, naive_va_opd
    from vaopd_kernels.testing import make_inputs

    x = make_inputs(get_preset("smoke", "cpu").shapes[0])
    out = naive_va_opd(x)
    x.student_hidden.grad.mul_(1.01)
    bad = check.check(Outputs(out.loss, out.kl * 1.01, out.va), x, "va_opd", "float32")
    assert not bad["ok"] and set(bad["failed"]) == {"kl", "grad_hidden"}


def test_kl_task_times_our_scalar_opd_loss_and_keeps_the_per_token_row(monkeypatch):
    """Ours answer the kl task through va_opd_loss (gradient formed in the forward), the
    ``-token-kl`` variant through linear_kl(...).mean(); both give the same loss and pass the check;
    the variant only appears in the kl table."""
    import vaopd_kernels
    from bench import check
    from bench.compare import planned_jobs
    from bench.peers import TOKEN_KL_SUFFIX
    from vaopd_kernels.testing import make_inputs

    shape = get_preset("smoke", "cpu").shapes[0]
    impls = build_impls()
    scalar, per_token = impls["vaopd-torch"], impls["vaopd-torch" + TOKEN_KL_SUFFIX]
    real_linear_kl, real_va_opd_loss = vaopd_kernels.linear_kl, vaopd_kernels.va_opd_loss
    results = {}
    for name, impl, banned, real in (("scalar", scalar, "linear_kl", real_linear_kl),
                                     ("token", per_token, "va_opd_loss", real_va_opd_loss)):
        x = make_inputs(shape)

        def refuse(*args, **kwargs):
            raise AssertionError(f"{name} row must not call {banned}")
        monkeypatch.setattr(vaopd_kernels, banned, refuse)
        out = impl.tasks["kl"](x)
        monkeypatch.setattr(vaopd_kernels, banned, real)
        verdict = check.check(out, x, "kl", shape.dtype)
        assert verdict["ok"], verdict
        results[name] = (float(out.loss), x.student_weight.grad.clone())
    assert abs(results["scalar"][0] - results["token"][0]) < 1e-5 * abs(results["token"][0])
    torch.testing.assert_close(results["scalar"][1], results["token"][1], rtol=1e-4, atol=1e-7)

    tasks = ("va_opd", "kl", "va")
    assert [j["task"] for j in planned_jobs(per_token, [shape], tasks, 1, 1, True)] == ["kl"]
    assert [j["task"] for j in planned_jobs(scalar, [shape], tasks, 1, 1, True)] == list(tasks)
