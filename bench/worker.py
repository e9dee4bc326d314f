"""The subprocess that runs jobs for one implementation: ``python -m bench.worker SPEC_JSON``.

SPEC_JSON: {"impl": name, "device": "cpu" | "cuda", "jobs": [{"task", "shape": {...}, "reps",
"warmup", "check"}]}. Each finished job prints one line ``BENCH_JOB <json>`` right away, so the
jobs done before a crash or a timeout still count. Failures become a status, never a crash.
"""
from __future__ import annotations

import gc
import json
import sys
import traceback
from typing import Dict

import torch

from bench import check as check_mod
from bench.measure import measure
from bench.peers import build_impls
from vaopd_kernels.testing import Shape, make_inputs

PREFIX = "BENCH_JOB "


def _emit(record: Dict) -> None:
    print(PREFIX + json.dumps(record), flush=True)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_job(impl, device: torch.device, job: Dict, cache: Dict) -> Dict:
    shape = Shape(**job["shape"])
    record = {"impl": impl.name, "task": job["task"], "shape": shape.as_dict(), "status": "ok"}
    reason = impl.unavailable(device.type)
    if reason is not None:
        return {**record, "status": "unavailable", "reason": reason}
    if job["task"] not in impl.tasks:
        return {**record, "status": "not offered", "reason": impl.not_offered.get(job["task"], "not implemented")}
    if cache.get("shape") != shape:
        cache.clear()
        _free(device)
        cache["shape"], cache["inputs"] = shape, make_inputs(shape, device)
    inputs = cache["inputs"]
    try:
        m = measure(impl.tasks[job["task"]], inputs, reps=job["reps"], warmup=job["warmup"])
    except Exception as exc:  # noqa: BLE001 -- any failure is a result, not a crash
        oom = isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()
        inputs.zero_grad()
        _free(device)
        return {**record, "status": "oom" if oom else "error", "reason": f"{type(exc).__name__}: {exc}"[:2000],
                "traceback": traceback.format_exc()[-4000:]}
    grads = [t.grad for t in (inputs.student_hidden, inputs.student_weight) if t.grad is not None]
    record.update(grad_bytes=sum(g.numel() * g.element_size() for g in grads), samples_ms=m.samples_ms, cold_ms=m.cold_ms, median_ms=m.median_ms,
                  peak_extra_bytes=m.peak_extra_bytes, memory_method=m.memory_method,
                  fingerprint=check_mod.fingerprint(m.outputs, inputs))
    if job.get("check", True):
        try:
            record["check"] = check_mod.check(m.outputs, inputs, job["task"], shape.dtype)
        except Exception as exc:  # noqa: BLE001
            record["check"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:1000]}
    del m
    inputs.zero_grad()
    _free(device)
    return record


def main(argv=None) -> int:
    spec = json.loads((argv or sys.argv[1:])[0])
    device = torch.device(spec["device"])
    impl = build_impls()[spec["impl"]]
    cache: Dict = {}
    for job in spec["jobs"]:
        _emit(run_job(impl, device, job, cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
