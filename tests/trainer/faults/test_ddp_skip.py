import json
import os
import subprocess
import sys

import pytest
import torch

WORKER = os.path.join(os.path.dirname(__file__), "_ddp_skip_worker.py")


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_skips_the_step_on_every_rank(make_config, tmp_path):
    cfg = make_config(max_steps=3, per_device_train_batch_size=2, num_generations=2, output_dir=str(tmp_path / "run"))
    (tmp_path / "cfg.json").write_text(json.dumps({k: str(v) for k, v in vars(cfg).items() if v is not None}))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           WORKER, str(tmp_path / "cfg.json"), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"out.{r}.pt") for r in (0, 1)]
    for out in ranks:
        assert out["skipped"] == [0, 1, 1]  # rank 0 saw a finite loss and skipped all the same
        assert out["optimizer_steps"] == [2]
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name  # the replicas did not drift apart
