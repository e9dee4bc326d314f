"""One-shot GPU check of the "cuda" backend (csrc/ kernels + chunked cuBLAS GEMMs).

    python bench/gpu_check_cuda.py            # JSON to $OUT/gpu_check_cuda.json when $OUT is set

Steps (each caught and reported on its own, so one run gives as much information as it can):
  1. JIT-build the extension (build time; compiler output tail on failure).
  2. Op-level checks of every kernel mode against float64 torch math (aligned and unaligned V,
     packed bf16/fp16 in-place gradients).
  3. Contract-level matrix vs the float64 reference backend at small shapes (fp32/bf16/fp16/fp64).
  4. Large bf16 correctness (N=2048, Ds=2048, Dt=4096, V=151936) on a row slice.
  5. Timing of va_opd_loss forward+backward with the pixelated pass at N=8192 (median of CUDA-event
     timings, peak extra memory), a chunk-budget sweep, and the bare-GEMM floor on this card.
A compact table is printed last.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

REPORT = {"env": {}, "build": {}, "checks": [], "timings": [], "errors": []}
ROWS = []  # (section, case, status, detail)


def log(msg):
    print(msg, flush=True)


def record(section, case, ok, detail="", **extra):
    status = "ok" if ok is True else ("FAIL" if ok is False else str(ok))
    ROWS.append((section, case, status, detail))
    REPORT["checks"].append(dict(section=section, case=case, status=status, detail=detail, **extra))
    log(f"[{section}] {case}: {status} {detail}")


def guarded(section, case):
    def deco(fn):
        def run(*a, **k):
            try:
                return fn(*a, **k)
            except Exception as exc:  # report and continue
                tb = traceback.format_exc()
                record(section, case, False, f"{type(exc).__name__}: {str(exc)[:300]}")
                REPORT["errors"].append(dict(section=section, case=case, traceback=tb[-4000:]))
                log(tb[-4000:])
                try:
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
                except Exception as sync_exc:  # sticky CUDA error: later steps will fail too
                    log(f"CUDA state after failure: {sync_exc}")
                return None
        return run
    return deco


# ----------------------------------------------------------------------------- 0. environment
def environment():
    env = REPORT["env"]
    env.update(python=platform.python_version(), torch=torch.__version__, torch_cuda=torch.version.cuda,
               cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(device=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1))
    try:
        env["nvcc"] = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    except Exception as exc:
        env["nvcc"] = f"unavailable: {exc}"
    env["has_mm_out_dtype"] = hasattr(torch.ops.aten.mm, "dtype")
    log(f"environment: {json.dumps(env)}")


# ----------------------------------------------------------------------------- 1. build
def build(cb):
    t0 = time.perf_counter()
    try:
        cb._load_ops()
    except Exception as exc:
        msg = str(exc)
        cause = exc.__cause__
        full = f"{msg}\n{cause}" if cause is not None else msg
        REPORT["build"] = dict(ok=False, seconds=round(time.perf_counter() - t0, 1), error_tail=full[-8000:])
        record("build", "jit", False, f"after {time.perf_counter() - t0:.1f}s")
        log("=" * 30 + " BUILD FAILED: compiler output tail " + "=" * 30)
        log(full[-8000:])
        return False
    REPORT["build"] = dict(cb.BUILD_INFO, ok=True, load_seconds=round(time.perf_counter() - t0, 1))
    record("build", cb.BUILD_INFO.get("source", "?"), True, f"{time.perf_counter() - t0:.1f}s {cb.BUILD_INFO}")
    return True


# ----------------------------------------------------------------------------- 2. op-level
def op_checks(cb):
    from _cuda_emulation import EmulatedOps

    ops, emu = torch.ops.vaopd, EmulatedOps()
    g = torch.Generator(device="cpu").manual_seed(0)
    for vocab in (37, 1024, 151936):
        rows = 6 if vocab > 10000 else 9
        for dtype in (torch.float32, torch.float64):
            @guarded("ops", f"V={vocab} {dtype}")
            def one():
                zs = (3 * torch.randn(rows, vocab, generator=g, dtype=torch.float64)).to("cuda", dtype)
                zt = (zs.double() + torch.randn(rows, vocab, generator=g, dtype=torch.float64).cuda()).to(dtype)
                zt[0] = zs[0] + 1e-4 * torch.randn(vocab, generator=g, dtype=torch.float64).to("cuda", dtype)  # close row
                y = torch.randint(0, vocab, (rows,), generator=g).cuda()
                rg = torch.rand(rows, generator=g, dtype=torch.float64).to("cuda", dtype)
                worst = {}

                def err(name, a, b):
                    e = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
                    worst[name] = max(worst.get(name, 0.0), e)

                inv_t = 1 / 0.7
                got = ops.view_stats([zs, zt], y, inv_t, True)
                want = emu.view_stats([zs.double(), zt.double()], y, inv_t, True)
                for a, b in zip(got, want):
                    err("view_stats", a, b)
                formats = [0] + ([1, 2] if dtype == torch.float32 else [])
                for kind in (0, 1, 2):
                    for fmt in formats:
                        s1, s2 = zs.clone(), zs.double().clone()
                        got = ops.divergence(s1, zt, y, rg, kind, 0.3, inv_t, fmt)
                        want = emu.divergence(s2, zt.double(), y, rg.double(), kind, 0.3, inv_t, 0)
                        for a, b in zip(got, want):
                            err(f"div{kind}", a, b)
                        gg = s1 if fmt == 0 else s1.view({1: torch.bfloat16, 2: torch.float16}[fmt])[:, :vocab]
                        scale = float(s2.abs().max())
                        err(f"div{kind}_grad_fmt{fmt}_rel", gg.double() / scale, s2 / scale)
                    kl_only = ops.divergence(zs, zt, None, None, kind, 0.3, 1.0, 0)[0]
                    err(f"div{kind}_nograd", kl_only, emu.divergence(zs.double(), zt.double(), None, None, kind,
                                                                     0.3, 1.0, 0)[0])
                for fmt in formats:
                    lse = ops.view_stats([zs], None, inv_t, False)[0][0]
                    s1, s2 = zs.clone(), zs.double().clone()
                    ops.logprob_grad(s1, lse, y, rg, inv_t, fmt)
                    emu.logprob_grad(s2, lse.double(), y, rg.double(), inv_t, 0)
                    gg = s1 if fmt == 0 else s1.view({1: torch.bfloat16, 2: torch.float16}[fmt])[:, :vocab]
                    err(f"lpgrad_fmt{fmt}", gg, s2)
                torch.cuda.synchronize()
                tol = 1e-10 if dtype == torch.float64 else 2e-4
                bad = {k: v for k, v in worst.items() if v > (1e-2 if ("fmt1" in k or "fmt2" in k) else tol)}
                record("ops", f"V={vocab} {str(dtype)[6:]}", not bad,
                       "max err " + ", ".join(f"{k}={v:.1e}" for k, v in sorted(worst.items())), worst=worst)
            one()


# ----------------------------------------------------------------------------- 3. contract matrix
def _ensure_pytest_importable():
    """tests/test_cuda_backend.py imports pytest for its decorators; stub it where it is missing."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        import types

        class _Mark:
            def __getattr__(self, name):
                return lambda *a, **k: (a[0] if len(a) == 1 and callable(a[0]) and not k else (lambda f: f))

        stub = types.ModuleType("pytest")
        stub.mark = _Mark()
        stub.fixture = lambda f=None, **k: f if f is not None else (lambda g: g)
        sys.modules["pytest"] = stub


def contract_matrix(cb):
    _ensure_pytest_importable()
    import test_cuda_backend as T

    for shape in ("unaligned", "aligned-chunked"):
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            for name, options in T.CASES:
                label = f"{shape} {str(dtype)[6:]} {name} {options or ''}"

                @guarded("contract", label)
                def one():
                    saved = cb.get_chunk_budget()
                    try:
                        if shape == "unaligned":
                            x = T.make_inputs(dtype=dtype, device="cuda")
                        else:
                            x = T.make_inputs(n=40, ds=64, dt=96, vocab=1024, pad=8, dtype=dtype, device="cuda",
                                              seed=1)
                            cb.set_chunk_budget(16 * 1024 * 8)
                        T.compare(T.run_case(cb, name, options, x), T.oracle(name, options, x), dtype)
                    finally:
                        cb.set_chunk_budget(saved)
                    record("contract", label, True)
                one()
    for dtype in (torch.float32, torch.float64):
        @guarded("contract", f"close distributions {dtype}")
        def close():
            x = T.make_inputs(n=16, ds=64, vocab=2048, pad=0, close=True, dtype=dtype, device="cuda", seed=3)
            T.compare(T.run_case(cb, "va_kl", {}, x), T.oracle("va_kl", {}, x), dtype)
            record("contract", f"close distributions {dtype}", True)
        close()

    @guarded("contract", "torch.compile(fullgraph) of vaopd::divergence")
    def compiled():
        zs, zt = torch.randn(4, 64, device="cuda"), torch.randn(4, 64, device="cuda")

        def f(a, b):
            kl, *_ = torch.ops.vaopd.divergence(a.clone(), b, None, None, 0, 0.5, 1.0, 0)
            return kl * 2
        torch.testing.assert_close(torch.compile(f, fullgraph=True)(zs, zt), f(zs, zt))
        record("contract", "torch.compile(fullgraph) of vaopd::divergence", True)
    compiled()
    from vaopd_kernels.backends._gemm import GEMM_PATHS
    REPORT["gemm_paths"] = dict(GEMM_PATHS)
    log(f"GEMM routes: {GEMM_PATHS}")


# ----------------------------------------------------------------------------- shapes
def big_inputs(n, ds, dt, vocab, seed=0, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, device="cuda") * scale).to(dtype)  # noqa: E731
    sh, sw = r(n, ds), r(vocab, ds, scale=2.5 / math.sqrt(ds))
    th, tw = r(n, dt), r(vocab, dt, scale=2.5 / math.sqrt(dt))
    thd = (th.float() + 0.5 * torch.randn(n, dt, generator=g, device="cuda")).to(dtype)
    y = torch.randint(0, vocab, (n,), generator=g, device="cuda")
    return sh, sw, th, tw, thd, y


def rollouts(n, length=512, siblings=4):
    cu = torch.arange(0, n + 1, length, device="cuda")
    if int(cu[-1]) != n:
        cu = torch.cat([cu, torch.tensor([n], device="cuda")])
    num = cu.numel() - 1
    pid = torch.arange(num, device="cuda") // siblings
    return cu, pid


# ----------------------------------------------------------------------------- 4. large correctness
def large_correctness(cb):
    from vaopd_kernels.backends import reference as ref

    n, ds, dt, vocab, sl = 2048, 2048, 4096, 151936, 48
    sh, sw, th, tw, thd, y = big_inputs(n, ds, dt, vocab, seed=1)
    up = torch.randn(n, device="cuda")

    @guarded("large", "va_kl + linear_kl grads bf16")
    def va():
        shg = sh.clone().requires_grad_(True)
        r = cb.va_kl(shg, sw, th, tw, y, thd, vocab_size=vocab)
        (r.kl * up).sum().backward()
        s = slice(0, sl)
        shr = sh[s].double().requires_grad_(True)
        swr = sw.double()
        want = ref.va_kl(shr, swr, th[s].double(), tw.double(), y[s], thd[s].double(), vocab_size=vocab)
        (want.kl * up[s].double()).sum().backward()
        errs = {}
        for k in ("kl", "visual_advantage", "student_logprob", "teacher_logprob", "student_entropy"):
            a, b = getattr(r, k)[s].double(), getattr(want, k).double()
            errs[k] = float((a - b).abs().max())
        gh = shg.grad[s].double()
        errs["d_hidden_rel"] = float((gh - shr.grad).norm() / shr.grad.norm())
        ok = all(v < 2e-3 for k, v in errs.items() if k != "d_hidden_rel") and errs["d_hidden_rel"] < 2e-2
        record("large", f"va_kl N={n} rows[0:{sl}] vs fp64", ok,
               ", ".join(f"{k}={v:.1e}" for k, v in errs.items()), errors=errs,
               kl_mean=float(r.kl.mean()))
        del shr, swr, want
    va()

    @guarded("large", "weighted_kl grads bf16 (row slice)")
    def weighted():
        s = slice(0, sl)
        w = torch.rand(sl, device="cuda") + 0.1
        shg, swg = sh[s].clone().requires_grad_(True), sw.clone().requires_grad_(True)
        loss, stats = cb.weighted_kl(shg, swg, th[s], tw, y[s], None, lambda va: w, vocab_size=vocab)
        kl = stats.kl
        loss.backward()
        shr, swr = sh[s].double().requires_grad_(True), sw.double().requires_grad_(True)
        lref, ref_stats = ref.weighted_kl(shr, swr, th[s].double(), tw.double(), y[s], None, lambda va: w.double(),
                                          vocab_size=vocab)
        klr = ref_stats.kl
        lref.backward()
        errs = dict(loss=abs(float(loss) - float(lref)), kl=float((kl.double() - klr).abs().max()),
                    d_hidden_rel=float((shg.grad.double() - shr.grad).norm() / shr.grad.norm()),
                    d_weight_rel=float((swg.grad.double() - swr.grad).norm() / swr.grad.norm()))
        ok = errs["loss"] < 2e-3 * max(1.0, abs(float(lref))) and errs["kl"] < 2e-3 and \
            errs["d_hidden_rel"] < 2e-2 and errs["d_weight_rel"] < 2e-2
        record("large", f"weighted_kl rows={sl} vs fp64", ok, ", ".join(f"{k}={v:.1e}" for k, v in errs.items()),
               errors=errs)
        del shr, swr
    weighted()
    del sh, sw, th, tw, thd, y
    torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- 5. timing
def cuda_time(fn, reps=5, warmup=2):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times), times


def timing(cb):
    import vaopd_kernels as vk

    n, ds, dt, vocab = 8192, 2048, 4096, 151936
    sh, sw, th, tw, thd, y = big_inputs(n, ds, dt, vocab, seed=2)
    cu, pid = rollouts(n)
    shg, swg = sh.clone().requires_grad_(True), sw.clone().requires_grad_(True)

    def step():
        shg.grad = swg.grad = None
        r = vk.va_opd_loss(shg, swg, th, tw, y, cu, pid, teacher_hidden_degraded=thd, vocab_size=vocab,
                           backend="cuda")
        r.loss.backward()
        return r

    flops = 2 * n * vocab * (3 * ds + 3 * dt)
    floor_flops = 2 * n * vocab * (3 * ds + 2 * dt)
    budgets = [int(os.environ.get("VAOPD_CUDA_CHUNK_MB", "2048")), 1024, 4096]
    saved = cb.get_chunk_budget()
    results = {}
    variants = [(mb, "fp32") for mb in dict.fromkeys(budgets)] + [(1024, "native")]
    for mb, head_grad in variants:
        @guarded("timing", f"va_opd_loss fwd+bwd budget={mb}MiB head_grad={head_grad}")
        def one():
            cb.set_chunk_budget(mb * 2**20)
            cb.HEAD_GRAD_ACCUMULATION = head_grad
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            r = step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            finite = bool(torch.isfinite(r.loss)) and shg.grad is not None and bool(torch.isfinite(shg.grad).all())
            med, times = cuda_time(step)
            results[(mb, head_grad)] = med
            rows = cb._rows_per_chunk(n, vocab, 2, torch.float32)
            detail = (f"median {med:.1f} ms (runs {', '.join(f'{t:.1f}' for t in times)}), peak extra "
                      f"{peak / 2**30:.2f} GiB, {rows} rows/chunk (2 views), loss={float(r.loss):.4f}, "
                      f"{flops / med / 1e9:.0f} TFLOP/s on the exact-O(N) GEMM count")
            REPORT["timings"].append(dict(case="va_opd_loss fwd+bwd", n=n, ds=ds, dt=dt, vocab=vocab,
                                          chunk_mb=mb, head_grad=head_grad, median_ms=med, times_ms=times, peak_extra_bytes=peak,
                                          rows_per_chunk=rows, loss=float(r.loss)))
            record("timing", f"va_opd_loss budget={mb}MiB head_grad={head_grad}", finite, detail)
        one()
    cb.set_chunk_budget(saved)
    cb.HEAD_GRAD_ACCUMULATION = "fp32"

    @guarded("timing", "breakdown")
    def breakdown():
        with torch.no_grad():
            t_teacher, _ = cuda_time(lambda: cb.teacher_logprobs(th, tw, y, thd, vocab_size=vocab), reps=3)
        w = torch.full((n,), 1.0 / n, device="cuda")

        def wkl():
            shg.grad = swg.grad = None
            loss, _ = cb.weighted_kl(shg, swg, th, tw, y, None, lambda va: w, vocab_size=vocab)
            loss.backward()
        t_student, _ = cuda_time(wkl, reps=3)
        record("timing", "breakdown", True, f"teacher_logprobs (2 views) {t_teacher:.1f} ms, "
                                            f"weighted_kl fwd+bwd {t_student:.1f} ms")
        REPORT["timings"].append(dict(case="breakdown", teacher_logprobs_ms=t_teacher, weighted_kl_ms=t_student))
    breakdown()

    @guarded("timing", "GEMM floor")
    def floor():
        rows = 1024
        a_s, a_t = sh[:rows], th[:rows]
        out = torch.empty(rows, vocab, device="cuda", dtype=torch.bfloat16)
        t_s, _ = cuda_time(lambda: torch.mm(a_s, sw.T, out=out), reps=5)
        t_t, _ = cuda_time(lambda: torch.mm(a_t, tw.T, out=out), reps=5)
        rate = 2 * rows * vocab * (ds + dt) / ((t_s + t_t) / 1e3)
        floor_ms = floor_flops / rate * 1e3
        best = min(results.values()) if results else float("nan")
        record("timing", "GEMM floor", True, f"bf16 mm {rate / 1e12:.0f} TFLOP/s -> floor 2NV(3Ds+2Dt) "
                                             f"{floor_ms:.1f} ms; best va_opd_loss / floor = {best / floor_ms:.2f}x")
        REPORT["timings"].append(dict(case="gemm_floor", tflops=rate / 1e12, floor_ms=floor_ms,
                                      ratio=best / floor_ms))
    floor()


# ----------------------------------------------------------------------------- 6. objective kernels
def objective_checks(cb):
    """csrc/objective.cu against the torch objective on the GPU: random rollouts full of ties, then
    step-sized batches, with both timed."""
    from vaopd_kernels import objective

    options = dict(high_fraction=0.2, high_weight=0.5, temperature=1.0, eps=1e-6, num_prompts=None)
    gen = torch.Generator().manual_seed(0)
    cases = []
    for trial in range(40):
        lengths = torch.randint(1, 300 if trial % 4 else 5000, (int(torch.randint(1, 64, (1,), generator=gen)),),
                                generator=gen)
        values = torch.tensor([0.0, -0.0, 0.1, 0.25, 1.0, 3.5])
        va = values[torch.randint(0, 6, (int(lengths.sum()),), generator=gen)]
        if trial % 3 == 0:  # continuous values too
            va = torch.rand(va.shape, generator=gen, dtype=torch.float64).clamp_min(0.5) - 0.5
        pid = torch.randint(0, max(1, lengths.numel() // 4), (lengths.numel(),), generator=gen)
        cases.append((f"random {trial}", lengths, va.double(), pid))
    for num_rollouts in (16, 512):
        lengths = torch.full((num_rollouts,), 8192 // num_rollouts)
        va = torch.rand(8192, generator=gen, dtype=torch.float64).clamp_min(0.7) - 0.7
        cases.append((f"step N=8192 R={num_rollouts}", lengths, va, torch.arange(num_rollouts) // 8))
    for label, lengths, va, pid in cases:
        @guarded("objective", label)
        def one():
            cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).cuda()
            args = (va.cuda(), cu, pid.cuda())
            got, want = cb.va_opd_weights(*args, **options), objective.va_opd_weights(*args, **options)
            assert torch.equal(got.high_mask, want.high_mask), "high mask differs"
            # last-bit differences of the rollout means / eps in the z-score: ~1e-9 relative at most
            torch.testing.assert_close(got.token_weight, want.token_weight, rtol=1e-8, atol=0)
            torch.testing.assert_close(got.rollout_weight, want.rollout_weight, rtol=1e-8, atol=1e-300)
            extra = {}
            if label.startswith("step"):
                extra = {name: round(cuda_time(lambda f=f: f(*args, **options), reps=20)[0], 3)
                         for name, f in (("cuda_ms", cb.va_opd_weights), ("torch_ms", objective.va_opd_weights))}
            record("objective", label, True, " ".join(f"{k} {v}" for k, v in extra.items()), **extra)
        one()


# ----------------------------------------------------------------------------- main
STEPS = ("op_checks", "contract_matrix", "objective_checks", "large_correctness", "timing")


def main():
    import argparse

    parser = argparse.ArgumentParser(description="cuda backend GPU check")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {STEPS}")
    steps = [s for s in parser.parse_args().steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"--steps: unknown {sorted(unknown)}; expected a subset of {STEPS}")
    t_start = time.perf_counter()
    environment()
    if not torch.cuda.is_available():
        record("env", "cuda", False, "no CUDA device")
        return finish(t_start)
    from vaopd_kernels.backends import cuda as cb

    record("env", "unavailable_reason", True, str(cb.unavailable_reason()))
    if not build(cb):
        return finish(t_start)
    for step in (globals()[name] for name in steps):
        t0 = time.perf_counter()
        guarded("main", step.__name__)(step)(cb)
        log(f"--- {step.__name__} took {time.perf_counter() - t0:.1f}s")
    return finish(t_start)


def finish(t_start):
    REPORT["total_seconds"] = round(time.perf_counter() - t_start, 1)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_check_cuda.json").write_text(json.dumps(REPORT, indent=1, default=str))
    fails = [r for r in ROWS if r[2] != "ok"]
    log("\n" + "=" * 100)
    log(f"cuda backend GPU check on {REPORT['env'].get('device', '?')} "
        f"(torch {torch.__version__}), {REPORT['total_seconds']}s, {len(ROWS)} checks, {len(fails)} failed")
    contract = [r for r in ROWS if r[0] == "contract"]
    if contract:
        ok = sum(r[2] == "ok" for r in contract)
        log(f"{'contract':9} {'matrix':52} {ok}/{len(contract)} ok")
    for section, case, status, detail in ROWS:
        if section == "contract" and status == "ok":
            continue
        log(f"{section:9} {case[:52]:52} {status:5} {detail[:220]}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
