"""Every GPU measurement in one call: stages, each in its own process with its own time limit.

    python -m bench.gpu_run                      # on an H100/H200: under 8 minutes
    python -m bench.gpu_run --smoke              # any machine: tiny shapes, seconds per stage
    python -m bench.gpu_run --stages gemm,kl_only --out DIR

The peers travel as wheels in ``.whl/`` (docs/benchmarks.md, "GPU runs"): they are installed
into /tmp/site first, and each stage sees them. Stages (``bench.gpu_stages``): cuBLAS at the
exact GEMM shapes (the floor); the cuda ``va_opd_loss`` under torch.profiler; triton default vs
fused views vs cuBLAS backward; KL-only through the scalar path, ours vs Liger-Kernel vs TRL on
the same inputs; the gradient filter on peaked rows; the trainer's demo; the backends' tests on
the GPU. ``--stages compare`` (a call of its own) runs the side-by-side runner at the headline
preset with the peers installed the same way. Every timed case goes
through the same pieces: ``vaopd_kernels.testing`` inputs, ``measure`` timing and memory, ``check``
errors against the reference on a row slice. A stage that overruns its limit is killed; the
cases it finished are kept (it rewrites its result file after each).

Results: ``gpu_run.json`` (card, versions, date, commit, every case), ``gpu_run.md`` (the compact
table, also printed LAST) and ``gpu_run.log`` (every stage's output) in ``--out``, default $OUT
when set, else bench/results/<machine-tag>/ (e.g. gpu-nvidia-h200).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from bench import gpu_stages, machine

PEER_SITE = "/tmp/site"
TOTAL_LIMIT_S = 470          # under 8 minutes for the whole call (peer install included); stages get what is left


def install_peer_wheels(log) -> str:
    """pip-install .whl/*.whl into PEER_SITE (no network there); returns the path or '' with why."""
    wheels = sorted((machine.REPO_ROOT / ".whl").glob("*.whl"))
    if not wheels:
        log("no .whl/ folder: the Liger-Kernel and TRL rows will say 'not installed'\n")
        return ""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", PEER_SITE] + [str(w) for w in wheels]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log(f"peer wheels: {', '.join(w.name for w in wheels)} -> exit {proc.returncode}\n{proc.stderr[-2000:]}\n")
    return PEER_SITE if proc.returncode == 0 else ""


def _stage_env(smoke: bool, site: str, cuda: bool) -> Dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = [site, str(machine.REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    if not cuda:
        env["TRITON_INTERPRET"] = "1"   # read when the kernels are defined: set before any import
    return env


def run_stage(name: str, smoke: bool, limit_s: float, env: Dict[str, str], log) -> Dict:
    """One stage in a fresh process; its result file holds the cases finished before any failure."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "stage.json"
        cmd = [sys.executable, "-m", "bench.gpu_stages", name, str(result_path), "--limit", str(round(limit_s))]
        cmd += ["--smoke"] if smoke else []
        t0 = time.time()
        status = "ok"
        try:
            proc = subprocess.run(cmd, cwd=machine.REPO_ROOT, env=env, capture_output=True, text=True,
                                  timeout=limit_s)
            out = proc.stdout + proc.stderr
            if proc.returncode != 0:
                status = f"crashed (exit {proc.returncode})"
        except subprocess.TimeoutExpired as exc:
            out = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (exc.stdout, exc.stderr))
            status = f"timeout after {limit_s:.0f} s"
        log(f"\n===== stage {name} ({status}, {time.time() - t0:.1f} s) =====\n{out}")
        result = json.loads(result_path.read_text()) if result_path.exists() else {"cases": []}
    result.update(stage=name, status=result.get("skipped") or status,
                  wall_s=round(time.time() - t0, 1), limit_s=round(limit_s))
    if status != "ok" and not result.get("skipped"):
        result["error_tail"] = out[-1500:]
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_run", description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, seconds per stage (any machine)")
    ap.add_argument("--stages", help=f"comma-separated subset of {','.join(gpu_stages.STAGES)}")
    ap.add_argument("--out", help="results folder (default: $OUT, else bench/results/<machine-tag>/)")
    ap.add_argument("--no-install", action="store_true", help="do not install the peers from .whl/")
    ap.add_argument("--commit", help="the commit to record where the tree is no git checkout (a device copy)")
    args = ap.parse_args(argv)
    default = ",".join(name for name, stage in gpu_stages.STAGES.items() if stage.default)
    names = [s.strip() for s in (args.stages or default).split(",") if s.strip()]
    unknown = [s for s in names if s not in gpu_stages.STAGES]
    if unknown:
        ap.error(f"--stages: unknown {unknown}; expected a subset of {list(gpu_stages.STAGES)}")

    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    info = machine.describe(device)
    out_dir = Path(args.out or os.environ.get("OUT") or machine.REPO_ROOT / "bench" / "results" / info["tag"])
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(out_dir / "gpu_run.log", "w")

    def log(text: str) -> None:
        log_file.write(text)
        log_file.flush()

    t_start = time.time()
    site = "" if args.no_install or args.smoke else install_peer_wheels(log)
    env = _stage_env(args.smoke, site, cuda)
    stages: List[Dict] = []
    for name in names:
        left = TOTAL_LIMIT_S - (time.time() - t_start)
        limit = gpu_stages.STAGES[name].limit_s(args.smoke)
        if left < 5:
            stages.append({"stage": name, "status": "skipped", "reason": "the run's time limit is used up",
                           "cases": []})
            continue
        stages.append(run_stage(name, args.smoke, min(limit, left), env, log))
        print(f"[gpu_run {time.time() - t_start:5.0f} s] {name}: {stages[-1]['status']}", file=sys.stderr, flush=True)

    if site:
        sys.path.insert(0, site)   # so the versions below see the installed peers
    versions = machine.versions()
    versions.setdefault("trl", machine._version("trl"))
    if args.commit and "git" not in versions:
        versions["git"] = args.commit
    result = {"card": info.get("gpu") or info["cpu"], "machine": info, "versions": versions,
              "date": dt.datetime.now().isoformat(timespec="seconds"), "smoke": args.smoke,
              "peers_installed_from": site or None, "wall_s": round(time.time() - t_start, 1), "stages": stages}
    gpu_stages.annotate_bounds(result)
    (out_dir / "gpu_run.json").write_text(json.dumps(result, indent=1, default=str))
    table = gpu_stages.compact_table(result)
    (out_dir / "gpu_run.md").write_text(table + "\n")
    log_file.close()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
