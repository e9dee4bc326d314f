"""Side-by-side comparison of every implementation on the same shapes, in one run.

    python -m bench.compare --preset cpu-small|qwen3vl-2b-8b|sweep-n|sweep-v [--impls a,b] [--out DIR]

Each implementation runs in its own subprocess (bench.worker): one per job on a CPU (so each
peak RSS is its own), one per implementation on a GPU (peaks come from the CUDA allocator).
Results go to DIR/<machine-tag>/<preset>.{json,md,*.png} (DIR defaults to bench/results).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

from bench import machine, report
from bench.peers import TOKEN_KL_SUFFIX, build_impls
from bench.presets import PRESETS, get_preset
from bench.problem import TASKS
from bench.worker import PREFIX

# the test oracle; "naive" already covers full logits
DEFAULT_EXCLUDED = ("vaopd-reference", "vaopd-reference" + TOKEN_KL_SUFFIX)
EXEC_PRIORITY = ("vaopd-triton", "vaopd-cuda", "naive", "liger", "liger-triton", "trl", "cce", "authors", "vaopd-torch")


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _run_worker(impl: str, device: str, jobs: List[Dict], timeout_s: float) -> List[Dict]:
    """Run jobs in a fresh process; jobs with no result line get a timeout/crash record."""
    spec = json.dumps({"impl": impl, "device": device, "jobs": jobs})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(machine.REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    failure = None
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.worker", spec], cwd=machine.REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout_s)
        stdout, stderr = proc.stdout, proc.stderr
        if proc.returncode != 0:
            failure = ("crashed", f"worker exited {proc.returncode}: {stderr.strip()[-600:]}")
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        failure = ("timeout", f"worker exceeded {timeout_s:.0f} s")
    records = [json.loads(line[len(PREFIX):]) for line in stdout.splitlines() if line.startswith(PREFIX)]
    status, reason = failure or ("crashed", f"no result; stderr: {stderr.strip()[-600:]}")
    for job in jobs[len(records):]:
        records.append({"impl": impl, "task": job["task"], "shape": job["shape"], "status": status, "reason": reason})
    return records


def planned_jobs(impl, shapes, tasks, reps: int, warmup: int, check: bool) -> List[Dict]:
    """One job per (shape, task); a variant row (e.g. ``vaopd-torch-token-kl``) only where it offers the task."""
    return [{"task": task, "shape": shape.as_dict(), "reps": reps, "warmup": warmup, "check": check}
            for shape in shapes for task in tasks if task in impl.tasks or not impl.variant]


def _select(names: str | None, tasks: str | None):
    impls = build_impls()
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in impls]
        if unknown:
            raise SystemExit(f"--impls: unknown {unknown}; known: {sorted(impls)}")
    else:
        wanted = [n for n in impls if n not in DEFAULT_EXCLUDED]
    task_list = None
    if tasks:
        task_list = tuple(t.strip() for t in tasks.split(",") if t.strip())
        bad = [t for t in task_list if t not in TASKS]
        if bad:
            raise SystemExit(f"--tasks: unknown {bad}; known: {TASKS}")
    return impls, wanted, task_list


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", required=True, choices=PRESETS)
    ap.add_argument("--impls", help="comma-separated implementation names (default: all but vaopd-reference)")
    ap.add_argument("--tasks", help=f"comma-separated subset of {','.join(TASKS)} (default: the preset's)")
    ap.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda")
    ap.add_argument("--reps", type=int, help="timed repetitions (default: the preset's)")
    ap.add_argument("--warmup", type=int, help="untimed runs before timing, >= 1 (default: the preset's)")
    ap.add_argument("--timeout", type=float, help="seconds per worker process (default: the preset's)")
    ap.add_argument("--budget", type=float, help="overall seconds for the run: workers get what is left and "
                    "implementations past it get a 'skipped' row (e.g. 170 for a 3-minute slot)")
    ap.add_argument("--no-check", action="store_true", help="skip the row-slice correctness check")
    ap.add_argument("--note", action="append", default=[], help="free text recorded in the results")
    ap.add_argument("--out", default=str(machine.REPO_ROOT / "bench" / "results"),
                    help="results root; files go to OUT/<machine-tag>/ (default bench/results)")
    args = ap.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    preset = get_preset(args.preset, device.type)
    impls, names, tasks = _select(args.impls, args.tasks)
    tasks = tasks or preset.tasks
    reps = args.reps if args.reps is not None else preset.reps
    warmup = max(1, args.warmup if args.warmup is not None else preset.warmup)
    timeout_s = args.timeout or preset.timeout_s
    t_start = time.time()

    info = machine.describe(device)
    _log(f"preset {preset.name} on {info['tag']}: {len(preset.shapes)} shape(s), tasks {tasks}, impls {names}")
    rate = machine.matmul_rate(device, preset.shapes[0].torch_dtype)
    _log(f"matmul rate {rate['flops_per_s'] / 1e12:.3f} TFLOP/s ({rate['dtype']})")
    if device.type == "cuda":
        torch.cuda.empty_cache()

    records: List[Dict] = []
    # Run order under a --budget: the fused kernels and the main peers first, the slow chunked
    # torch backend last (tables keep the peers-first order).
    exec_order = sorted(names, key=lambda n: EXEC_PRIORITY.index(n) if n in EXEC_PRIORITY else len(EXEC_PRIORITY))
    for name in exec_order:
        impl = impls[name]
        jobs = planned_jobs(impl, preset.shapes, tasks, reps, warmup, check=not args.no_check)
        if not jobs:
            continue
        reason = impl.unavailable(device.type)
        if reason is not None:  # no process needed to say so
            records += [{"impl": name, "task": j["task"], "shape": j["shape"], "status": "unavailable",
                         "reason": reason} for j in jobs]
            _log(f"{name}: unavailable ({reason})")
            continue
        offered = [j for j in jobs if j["task"] in impl.tasks]
        records += [{"impl": name, "task": j["task"], "shape": j["shape"], "status": "not offered",
                     "reason": impl.not_offered.get(j["task"], "not implemented")}
                    for j in jobs if j["task"] not in impl.tasks]
        batches = [[j] for j in offered] if device.type == "cpu" else ([offered] if offered else [])
        for batch in batches:
            t0 = time.time()
            left = args.budget - (t0 - t_start) if args.budget else timeout_s
            if left < 5:
                records += [{"impl": name, "task": j["task"], "shape": j["shape"], "status": "skipped",
                             "reason": f"--budget {args.budget:.0f} s used up"} for j in batch]
                _log(f"{name}: skipped, budget used up")
                continue
            got = _run_worker(name, device.type, batch, min(timeout_s, left))
            for rec in got:
                rec["worker_wall_s"] = round(time.time() - t0, 1)
            records += got
            for rec in got:
                extra = (f"median {rec['median_ms']:,.1f} ms, peak +{rec['peak_extra_bytes'] / 2**20:,.0f} MiB, "
                         f"check {'ok' if rec.get('check', {}).get('ok') else rec.get('check')}"
                         if rec["status"] == "ok" else rec.get("reason", "")[:200])
                _log(f"{name} {rec['task']} N={rec['shape']['num_rows']} V={rec['shape']['vocab']}: "
                     f"{rec['status']} {extra}")
            _log(f"{name}: worker took {time.time() - t0:.1f} s")

    # keep the table order: task, then shape, then implementation
    order = {n: i for i, n in enumerate(names)}
    shape_order = {json.dumps(s.as_dict(), sort_keys=True): i for i, s in enumerate(preset.shapes)}
    records.sort(key=lambda r: (TASKS.index(r["task"]), shape_order.get(json.dumps(r["shape"], sort_keys=True), 0),
                                order.get(r["impl"], 99)))
    report.annotate(records, rate["flops_per_s"])
    notes = list(args.note)
    if device.type == "cpu":
        notes.append(f"CPU run on {info['cores']} cores that other processes may share (load average at start "
                     f"{', '.join(f'{x:.2f}' for x in info.get('load_average_at_start', []))}): compare ratios "
                     "within this run, not absolute times across runs")
    result = {"preset": preset.name, "preset_note": preset.note, "created": dt.datetime.now().isoformat(timespec="seconds"),
              "machine": info, "versions": machine.versions(), "matmul_rate": rate, "reps": reps, "warmup": warmup,
              "tasks": list(tasks), "sweep": preset.sweep, "shapes": [s.as_dict() for s in preset.shapes],
              "notes": notes, "wall_s": round(time.time() - t_start, 1), "results": records}
    out_dir = Path(args.out) / info["tag"]
    paths = report.write(result, out_dir)
    print(report.markdown(result))
    _log(f"wrote {', '.join(str(p) for p in paths)} in {result['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
