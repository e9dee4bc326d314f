"""Turn job records into results: cross-checks, JSON, a markdown table and PNG plots."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional

from bench.check import TOLERANCE
from bench.peers import CROSS_CHECK_ORDER
from bench.problem import floor_flops
from vaopd_kernels.testing import Shape

MIB = 2 ** 20
TASK_TITLES = {"va_opd": "VA-OPD loss, forward + backward (with the pixelated pass)",
               "kl": "mean per-token reverse KL, forward + backward",
               "va": "visual advantage (both teacher views), forward only",
               "jsd": "mean per-token generalized JSD (beta = 0.5), forward + backward"}


def _key(rec: Dict):
    return rec["task"], json.dumps(rec["shape"], sort_keys=True)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def annotate(records: List[Dict], rate_flops_per_s: Optional[float]) -> None:
    """Add floor_ms, time/floor and the cross-implementation check to every record (in place)."""
    groups: Dict = {}
    for rec in records:
        groups.setdefault(_key(rec), []).append(rec)
    for (task, _), recs in groups.items():
        shape = Shape(**recs[0]["shape"])
        floor_ms = floor_flops(shape, task) / rate_flops_per_s * 1e3 if rate_flops_per_s else None
        ok = {r["impl"]: r for r in recs if r["status"] == "ok"}
        base = next((ok[n] for n in CROSS_CHECK_ORDER if n in ok and ok[n].get("check", {}).get("ok")), None)
        tol = TOLERANCE.get(shape.dtype, 1e-3)
        for rec in recs:
            rec["floor_ms"] = floor_ms
            if rec["status"] != "ok":
                continue
            rec["time_over_floor"] = rec["median_ms"] / floor_ms if floor_ms else None
            if base is None or base is rec:
                continue
            fp, bfp = rec.get("fingerprint", {}), base.get("fingerprint", {})
            errors = {}
            if "loss" in fp and "loss" in bfp:
                errors["loss"] = _rel(fp["loss"], bfp["loss"])
            if "grad_weight_norm" in fp and "grad_weight_norm" in bfp:
                errors["grad_weight_norm"] = _rel(fp["grad_weight_norm"], bfp["grad_weight_norm"])
                errors["grad_weight_proj"] = (abs(fp["grad_weight_proj"] - bfp["grad_weight_proj"])
                                              / max(bfp["grad_weight_norm"], 1e-30))
            bad = sorted(k for k, v in errors.items() if not v <= tol)
            rec["cross_check"] = {"against": base["impl"], "tolerance": tol, "errors": errors,
                                  "ok": not bad, "failed": bad}


def verdict(rec: Dict) -> str:
    if rec["status"] != "ok":
        return rec["status"]
    chk, cross = rec.get("check", {}), rec.get("cross_check")
    failed = list(chk.get("failed", [])) + (list(cross["failed"]) if cross else [])
    if chk.get("error"):
        return "check error"
    if failed:
        return "WRONG: " + ", ".join(failed)
    return "ok" if chk.get("ok") else "unchecked"


def _max_err(rec: Dict) -> Optional[float]:
    errs = list(rec.get("check", {}).get("errors", {}).values())
    if rec.get("cross_check"):
        errs += list(rec["cross_check"]["errors"].values())
    return max(errs) if errs else None


def _fmt(x: Optional[float], spec: str, suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec) + suffix


def markdown(result: Dict) -> str:
    m, rate = result["machine"], result.get("matmul_rate", {})
    lines = [f"# Benchmark `{result['preset']}` on `{m['tag']}`", "",
             f"- created: {result['created']}; device: {m.get('gpu') or m['cpu']} "
             f"({m['cores']} cores, torch threads {m['torch_threads']}); load average at start: "
             f"{', '.join(f'{x:.2f}' for x in m.get('load_average_at_start', []))}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v),
             f"- measured matmul rate: {rate.get('flops_per_s', 0) / 1e12:.3f} TFLOP/s "
             f"({rate.get('dtype')} {rate.get('size')}^3); floor = GEMM FLOPs / rate "
             "(va_opd: 2NV(3Ds+2Dt), kl: 2NV(3Ds+Dt), va: 2NV(2Dt))",
             f"- timing: {result['reps']} timed runs after {result['warmup']} warm-up run(s) (median); memory: "
             "peak above the inputs during the first run, each implementation in its own process"]
    for note in result.get("notes", []):
        lines.append(f"- note: {note}")
    groups: Dict = {}
    for rec in result["results"]:
        groups.setdefault(_key(rec), []).append(rec)
    for (task, _), recs in groups.items():
        shape = Shape(**recs[0]["shape"])
        ref = next((r for r in recs if r["impl"] == "naive" and r["status"] == "ok"), None)
        lines += ["", f"## {TASK_TITLES.get(task, task)}: {shape.label()}", "",
                  f"floor {_fmt(recs[0].get('floor_ms'), '.1f', ' ms')}", "",
                  "| implementation | verdict | median time | time / naive | time / floor | peak extra memory "
                  "| of which gradients | memory / naive | max error | notes |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for rec in recs:
            if rec["status"] != "ok":
                lines.append(f"| {rec['impl']} | {rec['status']} | - | - | - | - | - | - | - | "
                             f"{rec.get('reason', '').splitlines()[0][:160] if rec.get('reason') else ''} |")
                continue
            t, mem = rec["median_ms"], rec["peak_extra_bytes"] / MIB
            t_ratio = t / ref["median_ms"] if ref else None
            m_ratio = rec["peak_extra_bytes"] / ref["peak_extra_bytes"] if ref and ref["peak_extra_bytes"] > 0 else None
            lines.append(f"| {rec['impl']} | {verdict(rec)} | {t:,.1f} ms | {_fmt(t_ratio, '.2f', 'x')} | "
                         f"{_fmt(rec.get('time_over_floor'), '.2f', 'x')} | {mem:,.0f} MiB | "
                         f"{rec.get('grad_bytes', 0) / MIB:,.0f} MiB | "
                         f"{_fmt(m_ratio, '.3f', 'x')} | {_fmt(_max_err(rec), '.1e')} | "
                         f"samples {', '.join(f'{s:,.0f}' for s in rec['samples_ms'])} ms |")
    lines += ["", "of which gradients: the student hidden-state and weight gradients (outputs every "
              "implementation must hold) inside the peak.",
              "", "max error: largest norm-wise relative error of the row-slice check (per-token KL, VA, "
              "student hidden-state gradient vs the reference backend) and of the cross-check of the loss and "
              "weight gradient against the first correct of naive/authors."]
    return "\n".join(lines) + "\n"


def plots(result: Dict, out_dir: Path, stem: str) -> List[str]:
    """PNG plots: time and memory vs the sweep variable (log-log), or bars for a single shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    sweep = result.get("sweep")
    tasks = sorted({r["task"] for r in result["results"]})
    for task in tasks:
        recs = [r for r in result["results"] if r["task"] == task and r["status"] == "ok"]
        if not recs:
            continue
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
        if sweep:
            impls = list(dict.fromkeys(r["impl"] for r in recs))
            for name in impls:
                pts = sorted((r["shape"][sweep], r["median_ms"], r["peak_extra_bytes"] / MIB)
                             for r in recs if r["impl"] == name)
                xs = [p[0] for p in pts]
                ax_t.plot(xs, [p[1] for p in pts], marker="o", label=name)
                ax_m.plot(xs, [max(p[2], 1e-3) for p in pts], marker="o", label=name)
            floors = sorted({(r["shape"][sweep], r["floor_ms"]) for r in recs if r.get("floor_ms")})
            if floors:
                ax_t.plot([f[0] for f in floors], [f[1] for f in floors], "k--", label="GEMM floor")
            label = {"num_rows": "N (tokens)", "vocab": "V (vocabulary)"}[sweep]
            for ax in (ax_t, ax_m):
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel(label)
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=8)
        else:
            names = [r["impl"] for r in recs]
            ax_t.bar(names, [r["median_ms"] for r in recs])
            if recs[0].get("floor_ms"):
                ax_t.axhline(recs[0]["floor_ms"], color="k", linestyle="--", label="GEMM floor")
                ax_t.legend(fontsize=8)
            ax_m.bar(names, [r["peak_extra_bytes"] / MIB for r in recs])
            for ax in (ax_t, ax_m):
                ax.tick_params(axis="x", rotation=30)
                ax.grid(True, axis="y", alpha=0.3)
        ax_t.set_ylabel("median time (ms)")
        ax_m.set_ylabel("peak memory above inputs (MiB)")
        fig.suptitle(f"{result['preset']} on {result['machine']['tag']}: {TASK_TITLES.get(task, task)}", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"{stem}-{task}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


def write(result: Dict, out_dir: Path) -> List[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = result["preset"]
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    try:
        result["plots"] = plots(result, out_dir, stem)
    except ImportError as exc:
        result["plots"] = []
        result.setdefault("notes", []).append(f"no plots: {exc} (pip install matplotlib)")
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md_path.write_text(markdown(result))
    return [json_path, md_path] + [out_dir / p for p in result["plots"]]
