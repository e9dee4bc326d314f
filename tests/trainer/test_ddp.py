import json
import os
import subprocess
import sys

import pytest
import torch

from vaopd_trainer.train import Trainer

from _fixed_batch import save_reference

WORKER = os.path.join(os.path.dirname(__file__), "_ddp_worker.py")


@pytest.mark.slow
def test_two_process_gloo_gradient_equals_single_process(make_config, tmp_path):
    """2 ranks x 2 prompts (micro-batched, DDP all-reduce) == 1 process x 4 prompts, same rollouts."""
    single = Trainer(make_config(per_device_train_batch_size=4, num_generations=2))
    reference = save_reference(single, tmp_path / "batch.pt")

    overrides = {k: str(v) for k, v in vars(single.cfg).items() if v is not None}
    overrides.update(per_device_train_batch_size="2", micro_batch_size="2", output_dir=str(tmp_path / "ddp"))
    (tmp_path / "cfg.json").write_text(json.dumps(overrides))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           WORKER, str(tmp_path / "cfg.json"), str(tmp_path / "batch.pt"), str(tmp_path / "out.pt")],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    assert out["world"] == 2
    assert out["grads"].keys() == reference.keys()
    scale = max(g.abs().max() for g in reference.values())
    for name, grad in reference.items():
        torch.testing.assert_close(out["grads"][name], grad, rtol=1e-4, atol=1e-6 * float(scale), msg=name)
