"""bench/floors.py: the design bounds, checked against hand counts."""
from __future__ import annotations

import math

import pytest

from bench import floors
from vaopd_kernels.testing import Shape


def test_materialized_counts_by_hand():
    # N=4, Ds=2, Dt=3, V=10, bf16: GEMMs s, t, t (degraded), d hidden, d head = 3*2 + 2*3 = 12
    s = Shape(4, 2, 3, 10, "bfloat16")
    f = floors.materialized(s, "va_opd")
    assert f.formula() == "3Ds+2Dt" and f.gemm_dims == 12
    assert f.flops() == 2 * 4 * 10 * 12
    assert f.bytes["weights"] == (2 + 3 + 3 + 2 + 2) * 10 * 2      # each GEMM reads its head once
    assert f.bytes["hidden"] == (2 + 3 + 3 + 2 + 2) * 4 * 2
    assert f.bytes["logit buffers"] == (16 + 16 + 32 + 34) * 4 * 10
    assert f.bytes["d head write"] == 10 * 2 * 2
    t = f.times_ms("H200")
    assert t["compute_ms"] == pytest.approx(960 / 760e12 * 1e3)
    assert t["memory_ms"] == pytest.approx(f.total_bytes() / 4.8e12 * 1e3)
    assert t["bound_ms"] == max(t["compute_ms"], t["memory_ms"])


def test_headline_gemm_work_of_each_design():
    h = floors.HEADLINE
    want = {("va_opd", "materialized"): "3Ds+2Dt", ("va_opd", "cuda"): "3Ds+3Dt", ("va_opd", "triton"): "4Ds+4Dt",
            ("va_opd", "triton-fused"): "4Ds+3Dt", ("va_opd", "torch"): "4Ds+3Dt",
            ("kl", "materialized"): "3Ds+1Dt", ("kl", "cuda"): "3Ds+1Dt", ("kl", "liger"): "3Ds+1Dt",
            ("kl", "triton"): "4Ds+2Dt", ("kl", "trl"): "4Ds+2Dt"}
    for (task, design), formula in want.items():
        assert floors.DESIGNS[design](h, task).formula() == formula, (task, design)
    # the materialized floor at 760 TFLOP/s: 2NV(3Ds+2Dt) = 35.7 TFLOP -> ~47 ms
    assert floors.materialized(h, "va_opd").times_ms("H200")["compute_ms"] == pytest.approx(46.95, abs=0.05)


def test_cuda_chunks_and_stacked_teacher_by_hand():
    h = floors.HEADLINE
    # 2 GiB over two fp32 views of 151,936 columns: 1766 rows, cut to 1664 (a multiple of 128): 5 chunks
    rows = (2048 << 20) // (2 * h.vocab * 4)
    assert rows - rows % 128 == 1664 and math.ceil(h.num_rows / 1664) == 5
    plain = floors.cuda_chunked(h, "va_opd")
    stacked = floors.cuda_chunked(h, "va_opd", stacked_teacher=True)
    assert plain.bytes["weights"] - stacked.bytes["weights"] == 5 * h.vocab * h.teacher_dim * 2
    assert stacked.formula() == plain.formula()     # same GEMM work, one head read fewer per chunk
    half = floors.cuda_chunked(h, "va_opd", student_buffer_bytes=2, teacher_buffer_bytes=2)
    # bf16 buffers: twice the rows per chunk (3 chunks) and half the buffer bytes of the views
    assert "3 row chunks" in half.notes[0]
    nv = h.num_rows * h.vocab
    assert plain.bytes["logit buffers"] == (16 + 22) * nv and half.bytes["logit buffers"] == (8 + 14) * nv
    mixed = floors.cuda_chunked(h, "kl", teacher_buffer_bytes=2)
    assert mixed.bytes["logit buffers"] == (2 * (4 + 2) + 6) * nv   # no teacher pass in the kl task


def test_peers_offer_kl_only():
    with pytest.raises(ValueError, match="kl task only"):
        floors.liger(floors.HEADLINE, "va_opd")
    table = floors.markdown()
    assert table.count("\n| va_opd |") == 7 and table.count("\n| kl |") == 8
