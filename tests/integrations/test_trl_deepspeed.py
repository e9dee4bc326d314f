"""VAOPDTrainer under DeepSpeed ZeRO-3 (both LM heads partitioned; the trainer gathers them for the kernels)
against ZeRO-2 (heads whole): 2 gloo processes on the CPU each, the same fixed completions."""
import os
import subprocess
import sys

import pytest
import torch

WORKER = os.path.join(os.path.dirname(__file__), "_trl_deepspeed_worker.py")


def _run(tmp_path, stage):
    out = tmp_path / f"zero{stage}.pt"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           WORKER, str(stage), "va_opd", str(out)],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    ranks = "\n".join(line for line in proc.stderr.splitlines() if line.startswith("[rank"))
    assert proc.returncode == 0, (ranks or proc.stderr)[-4000:]
    return torch.load(out, weights_only=False)


@pytest.mark.slow
def test_zero3_trains_as_zero2(tmp_path):
    pytest.importorskip("deepspeed")  # the `deepspeed` extra (installed by make test)
    zero3, zero2 = _run(tmp_path, 3), _run(tmp_path, 2)
    assert (zero3["world"], zero3["engine"], zero3["stage"], zero2["stage"]) == (2, "DeepSpeedEngine", 3, 2)
    assert zero3["head_numel"] == [0, 0] and min(zero2["head_numel"]) > 0  # ZeRO-3 held only shards of both heads
    assert len(zero3["logs"]) == len(zero2["logs"]) == 2
    for three, two in zip(zero3["logs"], zero2["logs"]):
        # the second step's loss follows the first update: the head's gradient reached the optimizer
        for key in ("loss", "grad_norm", "entropy", "vaopd/va_mean"):
            assert three[key] == pytest.approx(two[key], rel=1e-5), key
