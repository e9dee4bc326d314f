"""What the cuda backend's chunk buffers cost in accuracy: fp32, bf16, and target-shifted bf16.

The cuda backend writes each view's logits for a chunk of rows into a buffer that its row kernels
then read (statistics, KL, target log-probs) and overwrite with d loss / d logits. fp32 buffers
double the bytes of bf16 ones (docs/benchmarks.md, the floors). bf16 rounds each logit to 8
significant bits, an error that grows with the logit's magnitude; storing ``z - z[y]`` (the row's
target logit subtracted, e.g. in the GEMM's epilogue as ``addmm(-z[y], h, W^T)``, before the
rounding) keeps the large-probability entries of a confident row, which sit near its target,
close to zero, where bf16 is fine-grained. The softmax, KL and gradients do not change under a
per-row shift.

This script measures it without a GPU: rows of logits at the real vocabulary size (flat, peaked,
near certain, and peaked at a larger logit scale) are drawn in float64, rounded as each buffer
would hold them (the GEMM's fp32 result, then the buffer's dtype), and fed to the row kernels'
emulation (tests/kernels/_cuda_emulation.py: the same in-place contract, fp32 math, as the CUDA kernels,
which read a bf16 buffer into fp32 registers). Errors against float64 on the same logits:
norm-wise relative (vaopd_kernels.testing.rel_err) for the per-token KL and d loss / d z_s, max absolute
for the target log-probs (VA is their difference).

    python -m bench.chunk_precision [--rows 128]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List

import torch

from bench.filter_reach import draw_rows
from vaopd_kernels.testing import rel_err

BUFFERS = ("fp32", "bf16", "bf16 target-shifted")
# (student buffer, teacher buffer): the student pass holds both; the teacher-only pass (VA) two teachers
PAIRS = (("fp32", "fp32"), ("bf16", "bf16"), ("bf16 target-shifted", "bf16 target-shifted"),
         ("fp32", "bf16 target-shifted"))
# (label, competitor logit std, ((target margin, share of rows), ...), logit scale)
FAMILIES = [("flat (std 2, no margin)", 2.0, ((0.0, 1.0),), 1.0),
            ("peaked (std 1.4, margin 16, p_target ~ 0.95)", 1.4, ((16.0, 1.0),), 1.0),
            ("near certain (std 2.5, margin 28)", 2.5, ((28.0, 1.0),), 1.0),
            ("peaked, 2x logit scale (std 2.8, margin 32)", 1.4, ((16.0, 1.0),), 2.0)]


def buffer(z32: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """What a chunk buffer holds for the fp32 GEMM result ``z32``, read back as fp32."""
    if kind == "fp32":
        return z32.clone()
    if kind == "bf16":
        return z32.to(torch.bfloat16).float()
    if kind == "bf16 target-shifted":
        return (z32 - z32.gather(1, targets[:, None])).to(torch.bfloat16).float()
    raise ValueError(f"kind: expected one of {BUFFERS}, got {kind!r}")


def errors(ops, z_s: torch.Tensor, z_t: torch.Tensor, targets: torch.Tensor) -> Dict[str, Dict[str, float]]:
    """Each buffer kind's error against float64 on the same logits (reverse KL, T = 1)."""
    n = z_s.shape[0]
    row_grad = torch.full((n,), 1.0 / n, dtype=torch.float64)
    want_s = z_s.double().clone()
    kl64, _, lp_s64, _, lp_t64 = ops.divergence(want_s, z_t.double(), targets, row_grad, 0, 0.5, 1.0, 0)
    out = {}
    for s_kind, t_kind in PAIRS:
        s_buf = buffer(z_s.float(), targets, s_kind)
        t_buf = buffer(z_t.float(), targets, t_kind)
        kl, _, lp_s, _, lp_t = ops.divergence(s_buf, t_buf, targets, row_grad.float(), 0, 0.5, 1.0, 0)
        out[f"{s_kind} / {t_kind}"] = {
                     "kl": rel_err(kl, kl64), "kl_abs": float((kl.double() - kl64).abs().max()),
                     "grad_logits": rel_err(s_buf, want_s),
                     "student_logprob_abs": float((lp_s.double() - lp_s64).abs().max()),
                     "teacher_logprob_abs": float((lp_t.double() - lp_t64).abs().max())}
    return out


def study(ops, rows: int = 64, seed: int = 0) -> List[Dict]:
    gen = torch.Generator().manual_seed(seed)
    results = []
    for label, sigma, margins, scale in FAMILIES:
        z_s, z_t = draw_rows(rows, sigma, margins, gen)
        targets = z_s.argmax(1) if margins[0][0] > 0 else \
            torch.randint(0, z_s.shape[1], (rows,), generator=gen)
        z_s, z_t = z_s.double() * scale, z_t.double() * scale
        p_max = torch.softmax(z_s, 1).amax(1).median()
        results.append({"rows": label, "median_max_p_s": float(p_max), "errors": errors(ops, z_s, z_t, targets)})
    return results


def markdown(results: List[Dict], rows: int) -> str:
    lines = [f"Chunk buffer precision (`python -m bench.chunk_precision`, {rows} rows per family, V = 151,936, "
             "reverse KL; errors against float64 on the same logits: KL and d loss / d z_s norm-wise relative, "
             "target log-probs max absolute):", "",
             "| rows | median max p_s | buffers (student / teacher) | KL (relative) | KL (max abs) | d loss / d z_s "
             "| student log-prob | teacher log-prob |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in results:
        for kind, e in r["errors"].items():
            lines.append(f"| {r['rows']} | {r['median_max_p_s']:.3f} | {kind} | {e['kl']:.1e} | {e['kl_abs']:.1e} "
                         f"| {e['grad_logits']:.1e} "
                         f"| {e['student_logprob_abs']:.1e} | {e['teacher_logprob_abs']:.1e} |")
    return "\n".join(lines)


def emulated_ops():
    """The row kernels' CPU emulation, which lives with the kernel tests (tests/kernels/_cuda_emulation.py)."""
    tests = str(Path(__file__).resolve().parents[1] / "tests" / "kernels")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from _cuda_emulation import EmulatedOps
    return EmulatedOps()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.chunk_precision", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    args = ap.parse_args(argv)
    print(markdown(study(emulated_ops(), rows=args.rows), args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
