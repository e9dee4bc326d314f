"""Named benchmark presets. Sweeps pick smaller shapes on a CPU than on a GPU."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from vaopd_kernels.testing import Shape

QWEN_VOCAB = 151_936


@dataclass
class Preset:
    name: str
    shapes: List[Shape]
    tasks: Tuple[str, ...]
    reps: int            # timed repetitions (median reported)
    warmup: int          # untimed runs first (the first run also gives the memory peak)
    timeout_s: float     # per worker process
    sweep: str | None = None  # "num_rows" | "vocab" for sweeps (plots against it)
    note: str = ""


def get_preset(name: str, device_type: str) -> Preset:
    gpu = device_type == "cuda"
    if name == "cpu-small":
        # The CPU target shape. One cold run (memory) + 2 timed runs per implementation:
        # naive takes ~15 s a run on the 2-core machine, so the preset fits in < 5 minutes.
        return Preset(name, [Shape(1024, 512, 1024, QWEN_VOCAB, "float32")], ("va_opd",),
                      reps=5 if gpu else 2, warmup=1, timeout_s=240,
                      note="issue 5 CPU target shape, fp32, with the pixelated pass")
    if name == "qwen3vl-2b-8b":
        return Preset(name, [Shape(8192, 2048, 4096, QWEN_VOCAB, "bfloat16")], ("va_opd", "kl", "va"),
                      reps=3 if gpu else 1, warmup=1, timeout_s=150 if gpu else 3600,
                      note="headline shape: Qwen3-VL-2B student, 8B teacher, bf16")
    if name == "sweep-n":
        if gpu:
            shapes = [Shape(n, 2048, 4096, QWEN_VOCAB, "bfloat16") for n in (1024, 2048, 4096, 8192, 16384)]
        else:
            shapes = [Shape(n, 512, 1024, 32_768, "float32") for n in (128, 256, 512, 1024)]
        return Preset(name, shapes, ("va_opd",), reps=3 if gpu else 1, warmup=1,
                      timeout_s=240 if gpu else 600, sweep="num_rows")
    if name == "sweep-v":
        if gpu:
            shapes = [Shape(4096, 2048, 4096, v, "bfloat16") for v in (16_384, 32_768, 65_536, QWEN_VOCAB, 262_144)]
        else:
            shapes = [Shape(256, 512, 1024, v, "float32") for v in (8_192, 16_384, 32_768, 65_536, QWEN_VOCAB)]
        return Preset(name, shapes, ("va_opd",), reps=3 if gpu else 1, warmup=1,
                      timeout_s=240 if gpu else 600, sweep="vocab")
    if name == "smoke":
        # seconds-long run of every code path (CI, development)
        return Preset(name, [Shape(96, 32, 48, 1000, "float32")], ("va_opd", "kl", "va"), reps=2, warmup=1,
                      timeout_s=120, note="tiny smoke test of the runner, not a benchmark")
    raise ValueError(f"preset: expected one of {PRESETS}, got {name!r}")


PRESETS = ("cpu-small", "qwen3vl-2b-8b", "sweep-n", "sweep-v", "smoke")
