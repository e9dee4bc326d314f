"""Atomic checkpoints: accelerate's state (model, optimizer, scheduler, every RNG) + the step.

A checkpoint is written to ``<name>.tmp`` and renamed into place only when complete, so a crash
mid-save leaves the previous checkpoint intact and no half-written folder under a real name.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Optional

STATE_FILE = "trainer_state.json"


def save(accelerator, output_dir: str, step: int) -> str:
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = final + ".tmp"
    if accelerator.is_main_process and os.path.isdir(tmp):
        shutil.rmtree(tmp)  # leftover of an interrupted save
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp, safe_serialization=True)
    accelerator.wait_for_everyone()  # every rank writes into tmp (its RNG state, DeepSpeed's shards)
    if accelerator.is_main_process:
        with open(os.path.join(tmp, STATE_FILE), "w") as f:
            json.dump({"step": step}, f)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def latest(output_dir: str) -> Optional[str]:
    """The complete checkpoint with the highest step, or None."""
    best, best_step = None, -1
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            match = re.fullmatch(r"checkpoint-(\d+)", name)
            path = os.path.join(output_dir, name)
            if match and os.path.isfile(os.path.join(path, STATE_FILE)) and int(match.group(1)) > best_step:
                best, best_step = path, int(match.group(1))
    return best


def load(accelerator, path: str) -> int:
    """Restore everything saved by ``save``; returns the number of steps already done."""
    if not os.path.isfile(os.path.join(path, STATE_FILE)):
        raise FileNotFoundError(f"resume: {path} is not a complete checkpoint (no {STATE_FILE})")
    accelerator.load_state(path)
    with open(os.path.join(path, STATE_FILE)) as f:
        return int(json.load(f)["step"])
