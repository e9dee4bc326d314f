import json
import os

import pytest
import torch

from vaopd_trainer.train import Trainer

from _fixed_batch import save_reference, torchrun

WORKER = os.path.join(os.path.dirname(__file__), "_ddp_worker.py")


@pytest.mark.slow
def test_two_process_gloo_gradient_equals_single_process(make_config, tmp_path):
    """2 ranks x 2 prompts (micro-batched, DDP all-reduce) == 1 process x 4 prompts, same rollouts."""
    single = Trainer(make_config(per_device_train_batch_size=4, num_generations=2))
    reference = save_reference(single, tmp_path / "batch.pt")

    overrides = {k: str(v) for k, v in vars(single.cfg).items() if v is not None}
    overrides.update(per_device_train_batch_size="2", micro_batch_size="2", output_dir=str(tmp_path / "ddp"))
    (tmp_path / "cfg.json").write_text(json.dumps(overrides))
    torchrun(WORKER, tmp_path / "cfg.json", tmp_path / "batch.pt", tmp_path / "out.pt", timeout=240)
    out = torch.load(tmp_path / "out.pt")
    assert out["world"] == 2
    assert out["grads"].keys() == reference.keys()
    scale = max(g.abs().max() for g in reference.values())
    for name, grad in reference.items():
        torch.testing.assert_close(out["grads"][name], grad, rtol=1e-4, atol=1e-6 * float(scale), msg=name)
