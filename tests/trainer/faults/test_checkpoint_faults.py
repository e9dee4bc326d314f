"""Saving and loading checkpoints under faults: a full disk, fsync ordering, re-saving a step, corruption."""
import errno
import logging
import os
import shutil

import pytest
import torch
from _runs import losses, metric_steps

from vaopd_trainer import checkpoint
from vaopd_trainer.errors import CheckpointError, DiskFullError
from vaopd_trainer.train import Trainer


def _fail_writes_into(monkeypatch, folder_name, error):
    """torch.save (accelerate's writer for optimizer, scheduler and RNG states) writes a few bytes of a file in
    ``folder_name`` and then fails with ``error``, as a full disk does half-way through a checkpoint."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if folder_name in str(f):
            with open(f, "wb") as out:
                out.write(b"\0" * 100)
            raise error
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_disk_full_during_a_save_is_named_and_cleaned_up(make_config, tmp_path, monkeypatch, uninterrupted):
    out = tmp_path / "run"
    _fail_writes_into(monkeypatch, "checkpoint-2.tmp", OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(DiskFullError, match="disk is full") as err:
        Trainer(make_config(max_steps=2, save_steps=1, output_dir=str(out))).train()
    assert str(out) in str(err.value) and err.value.errno == errno.ENOSPC
    assert sorted(n for n in os.listdir(out) if n.startswith("checkpoint")) == ["checkpoint-1"]  # no partial folder
    monkeypatch.undo()
    resumed = Trainer(make_config(max_steps=2, output_dir=str(out), resume="latest")).train()
    assert losses(resumed) == uninterrupted[1:2]  # the older checkpoint is intact
    assert metric_steps(out) == [1, 2]


def test_disk_full_reported_when_the_writer_loses_the_errno(make_config, tmp_path, monkeypatch):
    # torch's C++ zip writer reports ENOSPC as "basic_ios::clear: iostream error": the free space tells
    trainer = Trainer(make_config(output_dir=str(tmp_path / "run")))
    _fail_writes_into(monkeypatch, "checkpoint-1.tmp", RuntimeError("basic_ios::clear: iostream error"))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 * 2**30, 10 * 2**30, 0))
    with pytest.raises(DiskFullError, match="disk is full.*0.0 MiB free"):
        trainer.save(1)
    assert not (tmp_path / "run" / "checkpoint-1.tmp").exists()
    monkeypatch.undo()  # with free space the same failure is a plain write error, not "disk full"
    _fail_writes_into(monkeypatch, "checkpoint-1.tmp", RuntimeError("basic_ios::clear: iostream error"))
    with pytest.raises(CheckpointError, match="writing .*checkpoint-1.tmp failed") as err:
        trainer.save(1)
    assert not isinstance(err.value, DiskFullError)
    monkeypatch.undo()  # safetensors' writer keeps the OS message but not the errno
    _fail_writes_into(monkeypatch, "checkpoint-1.tmp", RuntimeError("No space left on device (os error 28)"))
    with pytest.raises(DiskFullError):
        trainer.save(1)
    assert checkpoint.candidates(str(tmp_path / "run")) == []


def test_files_and_folder_are_fsynced_before_the_rename(make_config, tmp_path, monkeypatch):
    trainer = Trainer(make_config(output_dir=str(tmp_path / "run")))
    events, fds = [], {}
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

    def tracking_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        fds[fd] = os.path.abspath(path)
        return fd

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", fds.get(fd))), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.path.abspath(a))), real_replace(a, b)))
    final = trainer.save(1)
    tmp = os.path.abspath(final) + ".tmp"
    renamed = events.index(("replace", tmp))
    synced = {path for kind, path in events[:renamed] if kind == "fsync"}
    written = {os.path.join(tmp, os.path.relpath(os.path.join(d, f), final)) for d, _, fs in os.walk(final) for f in fs}
    assert written and written <= synced  # every file, trainer_state.json included
    assert tmp in synced  # the folder itself
    assert ("fsync", os.path.dirname(os.path.abspath(final))) in events[renamed:]  # then the rename


def test_resaving_a_step_never_leaves_it_without_a_good_checkpoint(make_config, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    trainer = Trainer(make_config(output_dir=out))
    trainer.save(1)
    checked = []
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def check_then(real):
        def call(*args, **kwargs):
            found = checkpoint.candidates(out)
            assert found and os.path.basename(found[0]).startswith("checkpoint-1"), found
            checkpoint.read_state(found[0])
            checked.append(args[0])
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(os, "replace", check_then(real_replace))
    monkeypatch.setattr(shutil, "rmtree", check_then(real_rmtree))
    trainer.save(1)
    assert any(str(c).endswith("checkpoint-1") for c in checked)  # the old folder was moved, then the new one in
    assert checkpoint.candidates(out) == [os.path.join(out, "checkpoint-1")] and not os.path.exists(
        os.path.join(out, "checkpoint-1.old"))


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(make_config, tmp_path, caplog, uninterrupted):
    out = tmp_path / "run"
    Trainer(make_config(max_steps=2, save_steps=1, output_dir=str(out))).train()
    weights = out / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # torn by a power loss
    with caplog.at_level(logging.WARNING, logger="vaopd_trainer"):
        resumed = Trainer(make_config(max_steps=2, output_dir=str(out), resume="latest")).train()
    assert "skipping" in caplog.text and "checkpoint-2" in caplog.text
    assert [h["step"] for h in resumed["history"]] == [2]
    assert losses(resumed) == uninterrupted[1:2]
    assert metric_steps(out) == [1, 2]
