"""TRL's chunked divergence as a benchmark peer: right answers on the kl and jsd tasks at a tiny size.

    pytest bench/test_trl_peer.py
"""
from __future__ import annotations

import pytest
import torch

from bench import check, report
from bench.peers import Outputs, build_impls, trl_jsd
from bench.presets import get_preset
from bench.worker import run_job
from vaopd_kernels.testing import make_inputs

pytest.importorskip("trl")


@pytest.mark.parametrize("task", ["kl", "jsd"])
def test_trl_naive_and_ours_agree_with_the_reference(task):
    shape = get_preset("smoke", "cpu").shapes[0]
    impls = build_impls()
    records, cache = [], {}
    for name in ("naive", "trl", "vaopd-torch", "vaopd-reference"):
        job = {"task": task, "shape": shape.as_dict(), "reps": 1, "warmup": 1, "check": True}
        records.append(run_job(impls[name], torch.device("cpu"), job, cache))
    for rec in records:
        assert rec["status"] == "ok", rec
        assert rec["check"]["ok"], rec
    report.annotate(records, rate_flops_per_s=1e10)
    assert all(r["cross_check"]["ok"] for r in records if r.get("cross_check")), records


def test_trl_rows_say_why_other_tasks_are_missing():
    trl = build_impls()["trl"]
    assert set(trl.tasks) == {"kl", "jsd"}
    assert set(trl.not_offered) == {"va_opd", "va"}
    assert build_impls()["authors"].not_offered["jsd"]


def test_jsd_check_catches_a_wrong_beta():
    """The jsd check is against beta = 0.5: TRL's divergence at another beta must fail it."""
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    x = make_inputs(get_preset("smoke", "cpu").shapes[0])
    right = trl_jsd(x)
    assert check.check(right, x, "jsd", "float32")["ok"]
    x.zero_grad()
    wrong, _ = ChunkedDivergenceFunction.apply(x.student_hidden, x.student_weight, None, x.teacher_hidden,
                                               x.teacher_weight, None, 0.3)
    wrong.mean().backward()
    bad = check.check(Outputs(wrong.mean().detach(), wrong.detach()), x, "jsd", "float32")
    assert not bad["ok"] and set(bad["failed"]) == {"kl", "grad_hidden"}
