import os

from vaopd_trainer import checkpoint
from vaopd_trainer.train import Trainer


def _losses(outputs):
    return [h["loss"] for h in outputs["history"]]


def test_resume_reproduces_the_uninterrupted_loss_sequence(make_config, tmp_path):
    full = Trainer(make_config(max_steps=4, save_steps=2, output_dir=str(tmp_path / "a"))).train()
    ckpt = str(tmp_path / "a" / "checkpoint-2")
    assert checkpoint.latest(str(tmp_path / "a")).endswith("checkpoint-4")
    # a fresh process state (new models, new RNG) restored from step 2 must replay steps 3 and 4 exactly
    resumed = Trainer(make_config(max_steps=4, output_dir=str(tmp_path / "b"), resume=ckpt)).train()
    assert [h["step"] for h in resumed["history"]] == [3, 4]
    assert _losses(resumed) == _losses(full)[2:]
    # and the comparison can fail: a run that does not resume gives a different step 3
    fresh = Trainer(make_config(max_steps=4, output_dir=str(tmp_path / "c"), seed=1)).train()
    assert _losses(fresh)[2] != _losses(full)[2]


def test_interrupted_save_leaves_last_checkpoint(make_config, tmp_path):
    out = tmp_path / "a"
    Trainer(make_config(max_steps=2, output_dir=str(out))).train()
    os.makedirs(out / "checkpoint-3.tmp")  # a save that crashed half-way
    (out / "checkpoint-3.tmp" / "model.safetensors").write_bytes(b"partial")
    assert checkpoint.latest(str(out)).endswith("checkpoint-2")
