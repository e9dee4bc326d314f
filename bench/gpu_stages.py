"""The stages of ``python -m bench.gpu_run``, one per process: ``python -m bench.gpu_stages NAME RESULT [--smoke]``.

Each stage writes RESULT (JSON: its cases so far) after every case, so a stage killed at its
time limit still reports what it finished. Timed cases go through ``bench.measure`` (CUDA events,
peak memory above the inputs), correctness through ``bench.check`` (row slice against the
reference backend, norm-wise relative error, the tolerance of the inputs' dtype); kernel variants
are chosen with ``vaopd_kernels.KernelOptions`` passed as ``options=``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

MIB = 2 ** 20
FILTER_EPS = (2.0 ** -12, 2.0 ** -8)   # the gradient filter's two thresholds on peaked rows


# ----------------------------------------------------------------------------- a stage's context
class Context:
    def __init__(self, stage: str, result_path: Path, smoke: bool, limit_s: float):
        import torch

        from vaopd_kernels.testing import Shape

        self.torch = torch
        self.stage, self.path, self.smoke, self.limit_s = stage, result_path, smoke, limit_s
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        # smoke: float32 (the CPU interpreter's dots are exact in fp32), 128 rows (one 128-row filter
        # block), one (cold) run per case: ~2 s a triton call under the interpreter
        self.shape = (Shape(128, 16, 32, 256, "float32") if smoke
                      else Shape(8192, 2048, 4096, 151_936, "bfloat16"))
        self.reps = 0 if smoke else 3
        self.data: Dict = {"stage": stage, "shape": self.shape.as_dict(), "cases": []}
        self._inputs = None
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1, default=str))

    def log(self, msg: str) -> None:
        print(f"[{self.stage} {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def add(self, case: Dict) -> Dict:
        self.data["cases"].append(case)
        self.save()
        brief = {k: case[k] for k in ("status", "median_ms", "peak_extra_mib", "max_error") if k in case}
        self.log(f"{case['case']}: {brief}")
        return case

    def inputs(self):
        """The stage's one problem (vaopd_kernels.testing.make_inputs): every case of a stage sees the same inputs."""
        if self._inputs is None:
            from vaopd_kernels.testing import make_inputs
            self._inputs = make_inputs(self.shape, self.device)
        return self._inputs

    def free(self) -> None:
        import gc
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


def kernel_options(**fields):
    """A kernel variant, chosen the way users choose it: ``vaopd_kernels.KernelOptions`` as ``options=``."""
    import vaopd_kernels
    return vaopd_kernels.KernelOptions(**fields)


def timed_case(ctx: Context, name: str, fn: Callable, task: str, x=None, design: Optional[str] = None,
               reference_grads=None, **extra) -> Optional[tuple]:
    """Time ``fn(inputs)`` with bench.measure, check it with bench.check; returns its gradients
    (hidden, head), compared with ``reference_grads`` when given (same error measure)."""
    from bench import check
    from bench.measure import measure
    from vaopd_kernels.testing import rel_err

    x = x if x is not None else ctx.inputs()
    case = {"case": name, "task": task, "design": design, **extra}
    try:
        m = measure(fn, x, reps=ctx.reps, warmup=1)
    except Exception as exc:  # noqa: BLE001 -- a failure is a row, the stage goes on
        x.zero_grad()
        ctx.free()
        ctx.add({**case, "status": "error", "reason": f"{type(exc).__name__}: {exc}"[:600],
                 "traceback": traceback.format_exc()[-2000:]})
        return None
    grads = (x.student_hidden.grad, x.student_weight.grad)
    grad_bytes = sum(g.numel() * g.element_size() for g in grads if g is not None)
    verdict = check.check(m.outputs, x, task, ctx.shape.dtype)
    case.update(status="ok" if verdict["ok"] else "WRONG: " + ", ".join(verdict["failed"]),
                median_ms=round(m.median_ms, 3), samples_ms=[round(s, 3) for s in m.samples_ms],
                cold_ms=round(m.cold_ms, 3), peak_extra_mib=round((m.peak_extra_bytes - grad_bytes) / MIB, 1),
                grad_mib=round(grad_bytes / MIB, 1), check=verdict,
                max_error=max(verdict["errors"].values()) if verdict["errors"] else None)
    grads = tuple(None if g is None else g.detach().clone() for g in grads)
    if reference_grads is not None:
        case["grad_error_vs_reference_case"] = {
            name_: rel_err(g, r) for name_, g, r in zip(("hidden", "head"), grads, reference_grads)}
    ctx.add(case)
    x.zero_grad()
    del m
    ctx.free()
    return grads


# ----------------------------------------------------------------------------- stages
def stage_gemm(ctx: Context) -> None:
    """cuBLAS at the exact GEMM shapes of the problem: the materialized floor measured, the matmul
    rate and the copy bandwidth the design bounds are computed with."""
    torch = ctx.torch
    from bench.measure import _Clock
    from vaopd_kernels.backends._gemm import addmm_into, mm_into

    s, dev, dt = ctx.shape, ctx.device, ctx.shape.torch_dtype
    n, v, ds, dtd = s.num_rows, s.vocab, s.student_dim, s.teacher_dim
    gen = torch.Generator(device=dev).manual_seed(0)
    hs, ht = torch.randn(n, ds, generator=gen, device=dev, dtype=dt), torch.randn(n, dtd, generator=gen, device=dev, dtype=dt)
    ws, wt = torch.randn(v, ds, generator=gen, device=dev, dtype=dt), torch.randn(v, dtd, generator=gen, device=dev, dtype=dt)
    dz = torch.randn(n, v, generator=gen, device=dev, dtype=dt)
    out_half = torch.empty(n, v, device=dev, dtype=dt)
    out_f32 = torch.empty(n, v, device=dev, dtype=torch.float32)
    d_hidden = torch.empty(n, ds, device=dev, dtype=torch.float32)
    d_head = torch.zeros(v, ds, device=dev, dtype=torch.float32)
    clock = _Clock(dev)
    gemms = {  # name: (call, FLOPs)
        "student logits [N,Ds]x[Ds,V] -> model dtype": (lambda: torch.mm(hs, ws.T, out=out_half), 2 * n * v * ds),
        "teacher logits [N,Dt]x[Dt,V] -> model dtype": (lambda: torch.mm(ht, wt.T, out=out_half), 2 * n * v * dtd),
        "student logits -> fp32 (chunk buffer)": (lambda: mm_into(out_f32, hs, ws.T), 2 * n * v * ds),
        "teacher logits -> fp32 (chunk buffer)": (lambda: mm_into(out_f32, ht, wt.T), 2 * n * v * dtd),
        "d hidden [N,V]x[V,Ds] -> fp32": (lambda: mm_into(d_hidden, dz, ws), 2 * n * v * ds),
        "d head [V,N]x[N,Ds] += fp32": (lambda: addmm_into(d_head, dz.T, hs), 2 * n * v * ds),
    }
    times = {}
    for name, (call, flops) in gemms.items():
        call()
        samples = [clock.time_ms(call)[1] for _ in range(5 if ctx.cuda else 2)]
        ms = sorted(samples)[len(samples) // 2]
        times[name] = ms
        ctx.add({"case": name, "status": "ok", "median_ms": round(ms, 3), "samples_ms": samples,
                 "tflops": round(flops / ms / 1e9, 1)})
    t_s, t_t = times["student logits [N,Ds]x[Ds,V] -> model dtype"], times["teacher logits [N,Dt]x[Dt,V] -> model dtype"]
    t_dh, t_dw = times["d hidden [N,V]x[V,Ds] -> fp32"], times["d head [V,N]x[N,Ds] += fp32"]
    floor = {"va_opd": t_s + 2 * t_t + t_dh + t_dw, "kl": t_s + t_t + t_dh + t_dw}
    rate = 2 * n * v * (3 * ds + 2 * dtd) / floor["va_opd"] / 1e9
    del dz, out_half, out_f32
    ctx.free()
    big = torch.empty((1 << 29) if ctx.cuda else (1 << 22), device=dev, dtype=torch.uint8)
    copy = torch.empty_like(big)
    copy.copy_(big)
    samples = [clock.time_ms(lambda: copy.copy_(big))[1] for _ in range(5)]
    ms = sorted(samples)[2]
    bandwidth = 2 * big.numel() / ms / 1e9
    ctx.add({"case": f"device copy {big.numel() >> 20} MiB (read + write)", "status": "ok", "median_ms": round(ms, 3),
             "tbs": round(bandwidth, 3)})
    ctx.data["measured"] = {"floor_ms": floor, "bf16_tflops": rate, "bandwidth_tbs": bandwidth}
    ctx.save()


def stage_cuda_profile(ctx: Context) -> None:
    """The cuda backend: JIT build, va_opd_loss timed and checked (and with the native d head
    accumulation), then one step under torch.profiler: device time per kernel class."""
    torch = ctx.torch
    from bench import peers
    from vaopd_kernels.backends import cuda as cb

    t0 = time.time()
    try:
        cb._load_ops()
    except Exception as exc:  # noqa: BLE001 -- the compiler's output is the result
        cause = f"{exc}\n{exc.__cause__}" if exc.__cause__ is not None else str(exc)
        ctx.add({"case": "JIT build of csrc/", "status": "error", "wall_s": round(time.time() - t0, 1),
                 "reason": cause[-4000:]})
        return
    ctx.add({"case": "JIT build of csrc/", "status": "ok", "wall_s": round(time.time() - t0, 1),
             "build": dict(cb.BUILD_INFO)})
    step = lambda x: peers.va_opd_with_pixelated_view(x, "cuda")  # noqa: E731
    timed_case(ctx, "va_opd_loss cuda", step, "va_opd", design="cuda")
    timed_case(ctx, "va_opd_loss cuda, head_grad=native",
               lambda x: peers.va_opd_with_pixelated_view(x, "cuda", kernel_options(head_grad="native")),
               "va_opd", design="cuda")
    timed_case(ctx, "va_opd_loss cuda, 4 GiB chunk budget (2 GiB default)",
               lambda x: peers.va_opd_with_pixelated_view(x, "cuda", kernel_options(chunk_budget_bytes=4 << 30)),
               "va_opd", design="cuda")
    x = ctx.inputs()
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step(x)
        torch.cuda.synchronize()
    x.zero_grad()
    classes, kernels = device_time_by_class(prof.key_averages(), torch.autograd.DeviceType.CUDA)
    ctx.add({"case": "va_opd_loss cuda under torch.profiler (device ms per kernel class, one step)",
             "status": "ok" if classes else "no device events recorded",
             "classes_ms": {k: round(v, 2) for k, v in sorted(classes.items(), key=lambda kv: -kv[1])},
             "device_ms_total": round(sum(classes.values()), 2),
             "top_kernels": [{"ms": round(ms, 2), "name": name, "calls": c} for ms, name, c in kernels]})


def device_time_by_class(events, cuda_type):
    """Profiler events -> (ms per kernel class, the ten longest kernels). Device-side events only:
    an operator's own row would count its kernels' time again."""
    classes: Dict[str, float] = {}
    kernels = []
    for event in events:
        if getattr(event, "device_type", None) != cuda_type:
            continue
        us = getattr(event, "self_device_time_total", None) or getattr(event, "device_time_total", 0.0)
        if not us:
            continue
        kernels.append((us / 1e3, event.key[:90], event.count))
        cls = kernel_class(event.key)
        classes[cls] = classes.get(cls, 0.0) + us / 1e3
    kernels.sort(reverse=True)
    return classes, kernels[:10]


def kernel_class(name: str) -> str:
    low = name.lower()
    if any(k in low for k in ("gemm", "cutlass", "nvjet", "xmma", "cublas", "sm90_", "sm80_")):
        return "GEMM (cuBLAS)"
    if any(k in low for k in ("divergence_kernel", "view_stats_kernel", "logprob_grad_kernel")):
        return "vaopd row kernels"
    if any(k in low for k in ("select_kernel", "sibling_kernel", "scale_kernel")):
        return "vaopd objective kernels"
    if "memcpy" in low or "memset" in low:
        return "copies / memsets"
    if any(k in low for k in ("elementwise", "vectorized", "reduce", "fill", "cat", "index", "scatter", "gather")):
        return "torch elementwise / reductions"
    return "other"


def stage_triton_variants(ctx: Context) -> None:
    """The triton va_opd_loss: default, fused views, cuBLAS backward matmuls; each variant's
    gradients against the default's on the same inputs."""
    from bench import peers

    base = timed_case(ctx, "va_opd_loss triton (default)", lambda x: peers.va_opd_with_pixelated_view(x, "triton"),
                      "va_opd", design="triton")
    for label, design, fields in (("fused views", "triton-fused", dict(fused_views=True)),
                                  ("cuBLAS backward", "triton", dict(backward_gemm="cublas")),
                                  # meets the 64 MB extra-memory target at the headline shape (32 MiB default)
                                  ("24 MiB dlogits workspace", "triton", dict(triton_workspace_bytes=24 * MIB))):
        timed_case(ctx, f"va_opd_loss triton, {label}",
                   lambda x, f=fields: peers.va_opd_with_pixelated_view(x, "triton", kernel_options(**f)),
                   "va_opd", design=design, reference_grads=base)


def stage_kl_only(ctx: Context) -> None:
    """KL only through the scalar OPD loss: ours (every backend) vs Liger-Kernel vs TRL's chunked
    divergence, same inputs, same process; then our per-token linear_kl(...).mean() rows."""
    from bench.peers import TOKEN_KL_SUFFIX, build_impls
    from vaopd_kernels.backends import backend_unavailable_reason

    impls = build_impls()
    # the slow fp32 torch backend after the peers (Liger's first call includes its torch.compile)
    rows = [("vaopd-triton", "triton"), ("vaopd-cuda", "cuda"), ("liger", "liger"), ("trl", "trl"),
            ("vaopd-torch", "torch"),
            ("vaopd-triton" + TOKEN_KL_SUFFIX, "triton"), ("vaopd-cuda" + TOKEN_KL_SUFFIX, "cuda")]
    for name, design in rows:
        impl = impls.get(name)
        if impl is None:
            ctx.add({"case": f"kl {name}", "status": f"skipped: no '{name}' implementation in bench/peers.py"})
            continue
        # our GPU backends run on a CPU under TRITON_INTERPRET / not at all (cuda): ask the backend itself
        if name.startswith("vaopd-"):
            reason = backend_unavailable_reason(name[len("vaopd-"):].replace(TOKEN_KL_SUFFIX, ""))
        else:
            reason = impl.unavailable(ctx.device.type)
        if reason is not None:
            ctx.add({"case": f"kl {name}", "status": f"skipped: {reason}"})
            continue
        if name == "vaopd-torch":
            ctx.reps, reps = min(1, ctx.reps), ctx.reps   # fp32 GEMMs: ~0.6 s a step at the headline shape
            timed_case(ctx, f"kl {name}", impl.tasks["kl"], "kl", design=design)
            ctx.reps = reps
            continue
        timed_case(ctx, f"kl {name}", impl.tasks["kl"], "kl",
                   design=None if name.endswith(TOKEN_KL_SUFFIX) else design)


def stage_filter(ctx: Context) -> None:
    """The triton gradient filter off / on at two thresholds on peaked rows: time, the share of
    blocks left live (counted on a row sample of the same inputs, grouped by confidence as the
    backward visits them), and the gradient error against the unfiltered run."""
    torch = ctx.torch
    from bench import filter_reach, peers
    from vaopd_kernels.testing import peaked

    for label, margin, uncertain in (("peaked rows (margin 16, p_target ~ 0.95)", 16.0, 0.0),
                                     ("70% near-certain (margin 24) + 30% margin 16", 24.0, 0.3)):
        x = peaked(ctx.inputs(), margin=margin, uncertain_share=uncertain)
        live = live_blocks(x, torch, filter_reach, rows=128 if ctx.smoke else 512)
        base = timed_case(ctx, f"{label}: filter off", lambda x_: peers.va_opd_with_pixelated_view(x_, "triton"),
                          "va_opd", x=x, design="triton")
        for eps in FILTER_EPS:
            timed_case(ctx, f"{label}: filter eps 2^{round(torch.log2(torch.tensor(eps)).item())}",
                       lambda x_, e=eps: peers.va_opd_with_pixelated_view(
                           x_, "triton", kernel_options(gradient_filter_eps=e)),
                       "va_opd", x=x, design="triton", reference_grads=base, live_blocks=live.get(eps))
        del x
        ctx.free()


def live_blocks(x, torch, filter_reach, rows: int) -> Dict[float, Dict]:
    """filter_reach's block counts on the first ``rows`` rows of these inputs, per threshold."""
    n = min(rows, x.student_hidden.shape[0]) // 128 * 128
    if n == 0:
        return {}
    with torch.no_grad():
        z_s = (x.student_hidden[:n].float() @ x.student_weight.float().T)
        z_t = (x.teacher_hidden[:n].float() @ x.teacher_weight.float().T)
        order = torch.argsort(z_s.amax(1) - z_s.logsumexp(1))
        z_s, z_t = z_s[order], z_t[order]
        return {eps: {k: round(v, 4) for k, v in filter_reach.reach(
                    z_s, z_t, eps=eps, ds=x.student_hidden.shape[1], dt=x.teacher_hidden.shape[1]).items()}
                for eps in FILTER_EPS}


def stage_trainer(ctx: Context) -> None:
    """The trainer's demo config on the GPU: bf16, a few steps, the default (auto) loss backend."""
    from bench import machine

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "vaopd_trainer", "--config", "configs/demo.yaml", "--max_steps", "4",
               "--save_steps", "0", "--val_before_train", "false", "--bf16", "true", "--output_dir", str(out)]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=machine.REPO_ROOT, capture_output=True, text=True)
        metrics = out / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        ctx.add({"case": "trainer demo, bf16, 4 steps", "status": "ok" if proc.returncode == 0 else
                 f"error (exit {proc.returncode})", "wall_s": round(time.time() - t0, 1),
                 "metrics": [json.loads(line) for line in lines[-8:]], "output_tail": (proc.stdout + proc.stderr)[-1500:]})


GPU_TESTS = ("tests/kernels/test_cuda_backend.py", "tests/kernels/test_triton_backend.py",
             "tests/kernels/test_objective_native.py", "tests/kernels/test_lm_head.py",
             "tests/kernels/test_contract.py")
# The contract matrix's reference/torch/triton rows run on every CPU; only its cuda rows need the GPU.
GPU_TEST_FILTER = "cuda or not test_contract"


def stage_gpu_tests(ctx: Context) -> None:
    """The backends' test files on the GPU (they run the real kernels when CUDA is there: the cuda
    contract matrix with its transformed-head rows, the objective kernels, the triton cases, the
    LM-head formula checks), stopped with SIGINT at the limit
    so pytest still prints its summary."""
    import os
    import signal

    from bench import machine

    env = dict(os.environ, VAOPD_TRITON_AUTOTUNE="0")  # first config only: no autotuning per test shape
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", GPU_TEST_FILTER,
                             *GPU_TESTS],
                            cwd=machine.REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    try:
        out, _ = proc.communicate(timeout=max(5.0, ctx.limit_s - 10.0))
        stopped = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate()
        stopped = True
    summary = [line for line in out.splitlines() if " passed" in line or " failed" in line or " error" in line]
    failed = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
    ctx.add({"case": "pytest " + " ".join(GPU_TESTS), "status": "ok" if proc.returncode == 0 else
             ("stopped at the limit" if stopped else f"failed (exit {proc.returncode})"),
             "wall_s": round(time.time() - t0, 1), "reason": summary[-1] if summary else out[-300:],
             "failed": failed[:40], "output_tail": out[-3000:]})


def stage_compare(ctx: Context) -> None:
    """The side-by-side runner (``bench.compare``) at the headline preset, every implementation, with
    a budget 40 s inside this stage's limit (a running worker is not cut; the report takes time
    too); its JSON and markdown travel inside this stage's result."""
    from bench import machine

    preset = "smoke" if ctx.smoke else "qwen3vl-2b-8b"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "bench.compare", "--preset", preset, "--budget", str(max(5, round(ctx.limit_s - 40))),
               "--out", tmp]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=machine.REPO_ROOT, capture_output=True, text=True)
        found = sorted(Path(tmp).glob(f"*/{preset}.json"))
        report = json.loads(found[0].read_text()) if found else None
    ctx.add({"case": f"bench.compare --preset {preset}", "status": "ok" if proc.returncode == 0 and report else
             f"failed (exit {proc.returncode})", "wall_s": round(time.time() - t0, 1),
             "reason": None if report else (proc.stderr or proc.stdout)[-600:],
             "markdown": proc.stdout[-6000:], "compare": report})


@dataclass(frozen=True)
class Stage:
    run: Callable[[Context], None]
    limit_full_s: int
    limit_smoke_s: int
    gpu_only: bool = False
    default: bool = True      # in a plain ``python -m bench.gpu_run``

    def limit_s(self, smoke: bool) -> int:
        return self.limit_smoke_s if smoke else self.limit_full_s


# The full run's limits sum to 455 s (bench.gpu_run caps the whole at 470 s, so the last stage
# gets what is left).
STAGES: Dict[str, Stage] = {
    "gemm": Stage(stage_gemm, 20, 60),
    "cuda_profile": Stage(stage_cuda_profile, 115, 60, gpu_only=True),
    "triton_variants": Stage(stage_triton_variants, 95, 90),
    "kl_only": Stage(stage_kl_only, 80, 90),
    "filter": Stage(stage_filter, 50, 90),
    "trainer": Stage(stage_trainer, 35, 60, gpu_only=True),
    "gpu_tests": Stage(stage_gpu_tests, 60, 60, gpu_only=True),
    # the side-by-side tables at the headline shape: a call of its own (--stages compare)
    "compare": Stage(stage_compare, 400, 240, default=False),
}


# ----------------------------------------------------------------------------- the run's report
def annotate_bounds(result: Dict) -> None:
    """Each timed case with a design gets its design's bound (bench.floors) on the measured matmul
    rate and copy bandwidth (datasheet values when the gemm stage did not run), and time / bound."""
    from bench import floors
    from vaopd_kernels.testing import Shape

    measured = next((s.get("measured") for s in result["stages"] if s.get("measured")), None)
    card = "H100" if "H100" in str(result.get("card", "")) else "H200"
    rates = ({"bf16_tflops": measured["bf16_tflops"], "bandwidth_tbs": measured["bandwidth_tbs"]}
             if measured else {})
    result["bounds_from"] = "measured (gemm stage)" if measured else f"datasheet ({card})"
    for stage in result["stages"]:
        if "shape" not in stage:
            continue
        shape = Shape(**stage["shape"])
        for case in stage.get("cases", []):
            if case.get("design") in floors.DESIGNS and "median_ms" in case:
                f = floors.DESIGNS[case["design"]](shape, case["task"])
                t = f.times_ms(card, **rates)
                case["design_bound_ms"], case["design_serial_ms"] = round(t["bound_ms"], 3), round(t["serial_ms"], 3)
                case["time_over_design_bound"] = round(case["median_ms"] / t["bound_ms"], 3)
                if measured and case["task"] in measured["floor_ms"]:
                    case["time_over_materialized_floor"] = round(case["median_ms"] / measured["floor_ms"][case["task"]], 3)


def compact_table(result: Dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v)
    lines = [f"## GPU run on {result['card']}{' (smoke: tiny shapes, not a benchmark)' if result['smoke'] else ''}",
             "", f"{result['date']}; {versions}; bounds from {result.get('bounds_from')}", "",
             "| stage | case | status | median ms | time / design bound | time / materialized floor "
             "| peak extra MiB (beyond grads) | max error | notes |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for stage in result["stages"]:
        if not stage.get("cases"):
            lines.append(f"| {stage['stage']} | - | {stage['status']}"
                         f"{': ' + stage['reason'] if stage.get('reason') else ''} | | | | | | |")
            continue
        if stage["status"] not in ("ok", "skipped"):
            lines.append(f"| {stage['stage']} | (stage) | {stage['status']} | | | | | | |")
        for case in stage["cases"]:
            notes = []
            if "tflops" in case:
                notes.append(f"{case['tflops']} TFLOP/s")
            if "tbs" in case:
                notes.append(f"{case['tbs']} TB/s")
            if "classes_ms" in case:
                notes.append(", ".join(f"{k} {v} ms" for k, v in case["classes_ms"].items()))
            if case.get("grad_error_vs_reference_case"):
                notes.append("grad err vs base " + ", ".join(
                    f"{k} {v:.1e}" for k, v in case["grad_error_vs_reference_case"].items() if v is not None))
            if case.get("live_blocks"):
                notes.append(f"backward work left {case['live_blocks']['backward_work_left']:.2f}, "
                             f"matmul steps dropped {case['live_blocks']['matmul_steps_dropped']:.2f}")
            if "wall_s" in case:
                notes.append(f"{case['wall_s']} s")
            if case.get("reason"):
                notes.append(case["reason"][:120])
            lines.append(f"| {stage['stage']} | {case['case']} | {case['status']} | {_f(case.get('median_ms'), '.1f')} "
                         f"| {_f(case.get('time_over_design_bound'), '.2f', 'x')} "
                         f"| {_f(case.get('time_over_materialized_floor'), '.2f', 'x')} "
                         f"| {_f(case.get('peak_extra_mib'), ',.0f')} | {_f(case.get('max_error'), '.1e')} "
                         f"| {'; '.join(notes)} |")
    return "\n".join(lines)


def _f(x, spec: str, suffix: str = "") -> str:
    return "-" if x is None else format(x, spec) + suffix


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.gpu_stages", description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=list(STAGES))
    ap.add_argument("result", help="JSON file the stage writes its cases to")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--limit", type=float, default=60.0, help="seconds this process is given")
    args = ap.parse_args(argv)
    name, stage = args.stage, STAGES[args.stage]
    ctx = Context(name, Path(args.result), args.smoke, args.limit)
    if stage.gpu_only and not ctx.cuda:
        ctx.data["skipped"] = "skipped: no CUDA"
        ctx.save()
        return 0
    ctx.log(f"shape {ctx.shape.label()} on {ctx.device}")
    stage.run(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
