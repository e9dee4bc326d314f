"""Checkpoints that survive a crash, a power loss, a full disk and a corrupt file.

``checkpoint-N/`` holds accelerate's state (model, optimizer, scheduler, every RNG) and
``trainer_state.json`` (the step, the run's identity, counters). Writing protocol:

1. everything goes to ``checkpoint-N.tmp``; every file and folder in it is fsynced;
2. ``trainer_state.json`` is written and fsynced last: a folder that holds it is complete;
3. the folder is renamed into place and the parent folder fsynced (the rename is durable).

Re-saving an existing step first moves the old folder to ``checkpoint-N.old`` and deletes it only
once the new one is in place; ``candidates`` accepts a complete ``.old`` folder, so at every
instant a complete checkpoint of that step exists. A failed write removes the ``.tmp`` folder and
leaves every older checkpoint untouched.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from typing import Dict, List, Optional

import torch

from .errors import CheckpointError, DiskFullError

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"checkpoint-(\d+)(\.old)?")
# a write that fails while less than this is free is reported as a full disk even when the writer
# (torch's C++ zip writer) lost the errno on the way ("basic_ios::clear: iostream error")
_FULL_BELOW_BYTES = 16 * 2**20


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    """Every file, then every folder (deepest first), so names and data are on disk."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(os.path.join(folder, name))
        _fsync_path(folder)


def _write_durably(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
    _fsync_path(path)


def _publish(tmp: str, final: str) -> None:
    """Rename ``tmp`` to ``final`` so that a complete checkpoint of this step exists at every instant."""
    old = final + ".old"
    if os.path.isdir(final):
        if os.path.isdir(old):
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_path(os.path.dirname(final) or ".")
    if os.path.isdir(old):
        shutil.rmtree(old)


def _is_disk_full(err: BaseException, folder: str) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(err):  # safetensors' Rust writer: "... (os error 28)"
        return True
    try:
        return shutil.disk_usage(folder).free < _FULL_BELOW_BYTES
    except OSError:
        return False


def _failure(err: BaseException, tmp: str) -> CheckpointError:
    """The error to raise once the partial ``tmp`` folder is gone."""
    where = os.path.dirname(os.path.abspath(tmp))
    if _is_disk_full(err, where):
        try:
            free = f"{shutil.disk_usage(where).free / 2**20:.1f} MiB free"
        except OSError:
            free = "free space unknown"
        return DiskFullError(f"checkpoint: the disk is full: writing {tmp} failed ({err}); {free} on the file "
                             f"system of {where}. The partial folder was removed and older checkpoints are "
                             f"intact; free space (or lower save_total_limit) and resume with resume: latest",
                             errno.ENOSPC)
    return CheckpointError(f"checkpoint: writing {tmp} failed ({err}); the partial folder was removed and older "
                           f"checkpoints are intact")


def all_ranks_ok(accelerator, ok: bool) -> bool:
    """The same answer on every rank (a rank that stops alone would hang the others)."""
    failed = torch.tensor(0.0 if ok else 1.0, device=accelerator.device)
    return float(accelerator.reduce(failed, "sum")) == 0


def save(accelerator, output_dir: str, step: int, state: Optional[Dict[str, object]] = None) -> str:
    """Write ``checkpoint-<step>`` (see the module docstring); ``state`` joins the step in trainer_state.json."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = final + ".tmp"
    if accelerator.is_main_process and os.path.isdir(tmp):
        shutil.rmtree(tmp)  # leftover of an interrupted save
    accelerator.wait_for_everyone()
    error: Optional[BaseException] = None
    try:
        accelerator.save_state(tmp, safe_serialization=True)
    except Exception as err:  # noqa: BLE001 - any write failure is reported below, after cleanup
        error = err
    if all_ranks_ok(accelerator, error is None) and accelerator.is_main_process:
        try:
            _fsync_tree(tmp)
            _write_durably(os.path.join(tmp, STATE_FILE), json.dumps({"step": step, **(state or {})}))
            _fsync_path(tmp)
            _publish(tmp, final)
        except OSError as err:
            error = err
    failed = not all_ranks_ok(accelerator, error is None)
    if failed and accelerator.is_main_process:
        report = error or CheckpointError("another process failed to write its part")
        exc = _failure(report, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        raise exc from error
    if failed:
        raise CheckpointError(f"checkpoint: writing {tmp} failed on another process")
    return final


def _complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, STATE_FILE))


def candidates(output_dir: str) -> List[str]:
    """Complete checkpoints, newest step first (a step's ``.old`` copy only when its new one is absent)."""
    by_step: Dict[int, str] = {}
    if os.path.isdir(output_dir):
        for name in sorted(os.listdir(output_dir), key=lambda n: n.endswith(".old")):  # real names win
            match = _NAME.fullmatch(name)
            path = os.path.join(output_dir, name)
            if match and _complete(path):
                by_step.setdefault(int(match.group(1)), path)
    return [by_step[s] for s in sorted(by_step, reverse=True)]


def latest(output_dir: str) -> Optional[str]:
    """The complete checkpoint with the highest step, or None."""
    found = candidates(output_dir)
    return found[0] if found else None


def read_state(path: str) -> Dict[str, object]:
    """trainer_state.json of a checkpoint folder."""
    if not _complete(path):
        raise CheckpointError(f"resume: {path} is not a complete checkpoint (no {STATE_FILE})")
    with open(os.path.join(path, STATE_FILE)) as f:
        return json.load(f)


def load(accelerator, path: str) -> int:
    """Restore everything saved by ``save``; returns the number of steps already done."""
    state = read_state(path)
    accelerator.load_state(path)
    return int(state["step"])


def rotate(output_dir: str, limit: Optional[int], keep: str) -> List[str]:
    """Delete the oldest complete checkpoints beyond ``limit``, never ``keep`` (the one just written)."""
    if limit is None:
        return []
    removed = []
    for path in candidates(output_dir)[limit:]:
        if os.path.abspath(path) != os.path.abspath(keep):
            shutil.rmtree(path)
            removed.append(path)
    return removed


def run_files(output_dir: str) -> List[str]:
    """Names in ``output_dir`` that belong to a run: checkpoints, metrics, the exported student."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir)
                  if re.fullmatch(r"checkpoint-\d+(\.old|\.tmp)?", name)
                  or name in ("metrics.jsonl", "student", "best"))
