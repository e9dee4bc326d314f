"""The expected floor of each design: GEMM work and HBM bytes, and the time bound they give.

    python -m bench.floors                    # the markdown table for docs/benchmarks.md

A GPU number is read against its own design's bound, not only against the materialized floor:
a design that keeps no logits must do more GEMM work, one that materializes them must move more
bytes. For each design and task (``va_opd``: VA-OPD loss with the pixelated view, forward +
backward; ``kl``: mean reverse KL, forward + backward, through the design's scalar loss) this
counts

- GEMM work in units of 2NV (the sum of the hidden sizes of every [N, V] GEMM), and its FLOPs;
- HBM bytes, each term at its least: every GEMM launch reads its head once and its hidden rows
  once; logit/chunk buffers are counted per element of [N, V] (bytes written + read by every
  pass over them, counted from each design's code); accumulators (d head, d hidden) per update.

Bounds: ``compute_ms`` = FLOPs / matmul rate (the design's GEMM dtype), ``memory_ms`` = bytes /
bandwidth. ``bound_ms`` = the larger (perfect overlap); ``serial_ms`` = compute + the non-GEMM
traffic, what a design whose elementwise passes run between its GEMMs can approach at best.
The element counts of the PyTorch designs (naive, authors, torch chunked, TRL's torch path) are
counted from their kernels one pass at a time and are approximate; the fused kernels' are exact
structure counts. Workspaces small enough for L2 are still counted as HBM traffic.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List

from vaopd_kernels.testing import Shape

# Card rates (dense, datasheet-level, measured matmul rate close to these): bf16 tensor-core GEMM;
# plain fp32 GEMM (no TF32: torch's default) on the CUDA cores; HBM bandwidth.
BF16_TFLOPS = 760.0
FP32_TFLOPS = 67.0
BANDWIDTH_TBS = {"H200": 4.8, "H100": 3.35}

HEADLINE = Shape(8192, 2048, 4096, 151_936, "bfloat16")
TASKS = ("va_opd", "kl")


@dataclass
class Floor:
    design: str
    task: str
    shape: Shape
    student_gemms: int = 0              # [N, V] x Ds GEMMs (logits, d hidden, d head)
    teacher_gemms: int = 0              # [N, V] x Dt GEMMs
    gemm_dtype: str = "bf16"            # "bf16" | "fp32": which rate the GEMMs run at
    bytes: Dict[str, float] = field(default_factory=dict)  # HBM bytes by term
    notes: List[str] = field(default_factory=list)

    def add(self, term: str, num_bytes: float) -> None:
        self.bytes[term] = self.bytes.get(term, 0.0) + float(num_bytes)

    @property
    def gemm_dims(self) -> int:
        """The GEMM work in units of 2NV: the sum of the hidden sizes of every [N, V] GEMM."""
        return self.student_gemms * self.shape.student_dim + self.teacher_gemms * self.shape.teacher_dim

    def formula(self) -> str:
        return f"{self.student_gemms}Ds+{self.teacher_gemms}Dt"

    def flops(self) -> float:
        return 2.0 * self.shape.num_rows * self.shape.vocab * self.gemm_dims

    def total_bytes(self) -> float:
        return sum(self.bytes.values())

    def times_ms(self, card: str = "H200", bf16_tflops: float = BF16_TFLOPS,
                 bandwidth_tbs: float | None = None) -> Dict[str, float]:
        """The bounds on ``card``'s datasheet bandwidth, or on measured rates when given."""
        rate = (bf16_tflops if self.gemm_dtype == "bf16" else FP32_TFLOPS) * 1e12
        bandwidth = (bandwidth_tbs or BANDWIDTH_TBS[card]) * 1e12
        compute = self.flops() / rate * 1e3
        memory = self.total_bytes() / bandwidth * 1e3
        elementwise = self.bytes.get("logit buffers", 0.0) / bandwidth * 1e3
        return {"compute_ms": compute, "memory_ms": memory, "bound_ms": max(compute, memory),
                "serial_ms": compute + elementwise}


def _sizes(s: Shape):
    b = 2 if s.dtype in ("bfloat16", "float16") else 4 if s.dtype == "float32" else 8
    n, v, ds, dt = s.num_rows, s.vocab, s.student_dim, s.teacher_dim
    return b, n, v, ds, dt, n * v


def _gemms(f: Floor, launches: int, *heads: str, head_reads: int = None) -> None:
    """GEMMs over all N rows in ``launches`` row chunks, one per entry of ``heads`` ("s": a
    student-sized GEMM (logits, d hidden, d head), "t": a teacher-sized one). Each launch reads its
    head [V, D] once (``head_reads`` overrides the count: a kernel that multiplies one weight tile
    with several views reads it once); the N hidden rows are read once in all."""
    b, n, v, ds, dt, _ = _sizes(f.shape)
    for head in heads:
        dim = ds if head == "s" else dt
        f.student_gemms += head == "s"
        f.teacher_gemms += head == "t"
        f.add("hidden", n * dim * b)
        if head_reads is None:
            f.add("weights", launches * v * dim * b)
    if head_reads is not None:
        f.add("weights", head_reads)


def materialized(s: Shape, task: str) -> Floor:
    """naive: full [N, V] logits in the model dtype, upcast to fp32, log-softmax of every view
    (TRL's generalized_jsd_loss at beta = 1); autograd keeps them for backward."""
    b, n, v, ds, dt, nv = _sizes(s)
    f = Floor("materialized (naive)", task, s)
    _gemms(f, 1, "s", "t", "s", "s")        # logits of both models, d hidden, d head
    # per teacher view: GEMM write 2, upcast r2 w4, log_softmax r4 w4 = 16 B/elem
    # student: the same 16, KL terms r8 w4, row sum r4 = 32; backward: kl_div r8 w4,
    # log_softmax r8 w4, downcast r4 w2, the two GEMMs read dz r2 + r2 = 34
    per_elem = 16 + 32 + 34
    if task == "va_opd":
        _gemms(f, 1, "t")
        per_elem += 16
    f.add("logit buffers", per_elem * nv)
    f.add("d head write", v * ds * b)
    return f


def authors(s: Shape, task: str) -> Floor:
    """The paper's release: bf16 logits materialized, KL in fp32 chunks of 128 rows under
    activation checkpointing (the chunk's elementwise work runs twice)."""
    b, n, v, ds, dt, nv = _sizes(s)
    f = Floor("authors", task, s)
    _gemms(f, 1, "s", "t", "s", "s")
    # KL forward per chunk: GEMM write of student logits 2, upcast + log_softmax of both views
    # 2 x (r2 w4 r4 w4) = 28, exp r4 w4, difference r8 w4, product r8 w4, row sum r4 = 66;
    # backward: recompute 64 + product r8 w8, exp r8 w4, add r8 w4, log_softmax r8 w4, downcast
    # r4 w2, concatenation r2 w2, the two GEMMs r2 + r2 = 130; teacher logits written once 2.
    per_elem = 2 + 66 + 130
    if task == "va_opd":
        _gemms(f, 1, "t")
        per_elem += 2 * 10 + 2    # VA of both views: upcast r2 w4, logsumexp r4; the degraded GEMM's write 2
    f.add("logit buffers", per_elem * nv)
    f.add("d head write", v * ds * b)
    return f


def torch_chunked(s: Shape, task: str, budget_bytes: int = 512 << 20, vocab_tile: int = 16384) -> Floor:
    """Our torch backend: fp32 tiles (row block x vocabulary tile) of every view, no logits kept
    between its statistics pass and its gradient pass; the head tiles converted to fp32, so its
    GEMMs run at the fp32 rate."""
    b, n, v, ds, dt, nv = _sizes(s)
    f = Floor("torch chunked (ours)", task, s, gemm_dtype="fp32")
    rows = max(1, budget_bytes // (vocab_tile * 4 * 8))   # 8 live tile arrays (torch_chunked)
    blocks = math.ceil(n / rows)
    views = ("s", "t", "t") if task == "va_opd" else ("s", "t")
    _gemms(f, blocks, *views)                              # pass 1: statistics of every view
    _gemms(f, blocks, "s", "t", "s", "s")                  # pass 2: recompute + d hidden + d head
    # each head tile converted to fp32 per row block: written 4 and read 4 by its GEMM
    f.add("head tile conversions", blocks * v * 8 * (ds * 4 + dt * 2))
    f.add("d head accumulator", blocks * v * ds * 4 * 2)   # fp32 [V, Ds] read + written per row block
    # pass 1 per view: GEMM write 4, online max / exp-sum / products ~3 reads of 4 = 16;
    # pass 2: GEMM writes 8, dlogits r8 w4, the two GEMMs read dz 4 + 4 = 28
    f.add("logit buffers", (16 * len(views) + 28) * nv)
    f.notes.append(f"{blocks} row blocks of {rows} rows x {vocab_tile} columns (GPU defaults), GEMMs in fp32")
    return f


def cuda_chunked(s: Shape, task: str, budget_bytes: int = 2048 << 20, head_grad: str = "fp32",
                 stacked_teacher: bool = False, student_buffer_bytes: int = 4, teacher_buffer_bytes: int = 4) -> Floor:
    """Our cuda backend: cuBLAS GEMMs into one chunk buffer per view (fp32 today), one-pass row
    kernels, the logit gradient written in place (bf16), then the d hidden / d head GEMMs; the
    teacher's views scored in a pass of their own first (VA before any gradient). The buffer sizes
    and ``stacked_teacher`` (one GEMM of both teacher views' rows per chunk) model the variants of
    bench/chunk_precision.py."""
    b, n, v, ds, dt, nv = _sizes(s)
    f = Floor("cuda chunked (ours)", task, s)

    def chunks(bytes_per_column):
        rows = budget_bytes // (v * bytes_per_column)
        rows -= rows % 128 if rows >= 256 else 0
        return math.ceil(n / max(1, min(n, rows)))

    per_elem = 0
    if task == "va_opd":
        c1 = chunks(2 * teacher_buffer_bytes)
        # two GEMM launches per chunk (one per view), or one GEMM of both views' rows stacked
        _gemms(f, c1, "t", "t", head_reads=c1 * v * dt * b * (1 if stacked_teacher else 2))
        per_elem += 2 * teacher_buffer_bytes * 2             # both views written by the GEMMs, read once
    c2 = chunks(student_buffer_bytes + teacher_buffer_bytes)
    _gemms(f, c2, "s", "t", "s", "s")
    # both views written + read, dz written (bf16) and read by the 2 GEMMs
    per_elem += 2 * (student_buffer_bytes + teacher_buffer_bytes) + 2 + 2 * 2
    f.add("logit buffers", per_elem * nv)
    acc = 4 if head_grad == "fp32" else b
    f.add("d head accumulator", c2 * v * ds * acc * 2)       # read + written by each chunk's addmm
    f.notes.append(f"{c2} row chunks of the {budget_bytes >> 20} MiB budget; d head in {head_grad}")
    return f


def triton_on(s: Shape, task: str, fused_views: bool = False, workspace_bytes: int = 32 << 20) -> Floor:
    """Our triton backend: statistics kernels keep only O(N) row statistics (each teacher weight
    tile multiplies both teacher views); backward recomputes logit tiles per vocabulary chunk into
    a bf16 dlogits workspace consumed by the two matmuls."""
    b, n, v, ds, dt, nv = _sizes(s)
    f = Floor("triton O(N) (ours)" + (", fused views" if fused_views else ""), task, s)
    if task == "va_opd" and fused_views:
        _gemms(f, 1, "s", "t", "t", head_reads=v * (ds + dt) * b)   # all three views in one pass
    else:
        if task == "va_opd":
            _gemms(f, 1, "t", "t", head_reads=v * dt * b)            # teacher views first
        _gemms(f, 1, "s", "t")                                      # student + teacher statistics
    _gemms(f, 1, "s", "t", "s", "s")                                # backward: recompute + matmuls
    cols = max(1, workspace_bytes // (n * b))
    vchunks = math.ceil(v / cols)
    f.add("logit buffers", (2 + 2 * 2) * nv)                # dz written once, read by both matmuls
    f.add("d hidden accumulator", vchunks * n * ds * 4 * 2)  # fp32 [N, Ds], read + written per chunk
    f.add("d head write", v * ds * b)
    f.notes.append(f"{vchunks} vocabulary chunks of {cols} columns ({workspace_bytes >> 20} MiB workspace)")
    return f


def liger(s: Shape, task: str, chunk_rows: int = 1024) -> Floor:
    """Liger-Kernel LigerFusedLinearJSDLoss(beta=1): row chunks, student and teacher logits of a
    chunk in the model dtype, a torch.compile'd loss whose gradient is formed in the forward."""
    if task != "kl":
        raise ValueError("liger: offers the kl task only")
    b, n, v, ds, dt, nv = _sizes(s)
    f = Floor("Liger-Kernel (chunked JSD, beta=1)", task, s)
    c = math.ceil(n / chunk_rows)
    _gemms(f, c, "s", "t", "s", "s")
    f.add("logit buffers", (2 * 2 + 2 * 2 + 2 + 2 * 2) * nv)  # both views w + r, dz written, read twice
    f.add("d head accumulator", c * v * ds * b * 2)
    f.notes.append(f"{c} row chunks of {chunk_rows} rows (assumed default chunk size)")
    return f


def trl_chunked(s: Shape, task: str, token_rows: int = 4096, vocab_cols: int = 32768) -> Floor:
    """TRL's chunked divergence (trl.kernels.chunked_divergence, beta=1): fp32 tiles of 4096 x
    32768 per view; a per-token output, so backward recomputes both views' tiles."""
    if task != "kl":
        raise ValueError("trl: offers the kl task only")
    b, n, v, ds, dt, nv = _sizes(s)
    f = Floor("TRL chunked divergence (beta=1)", task, s)
    c = math.ceil(n / token_rows)
    _gemms(f, c, "s", "t")                                   # forward statistics
    _gemms(f, c, "s", "t", "s", "s")                         # backward: recompute + d hidden + d head
    # forward: both fp32 tiles written + read = 16; backward: the same 16, dz written 4 and read
    # by both GEMMs 8 (fp32)
    f.add("logit buffers", (16 + 16 + 12) * nv)
    f.add("d head accumulator", c * v * ds * 4 * 2)
    f.notes.append(f"{c} token chunks x {math.ceil(v / vocab_cols)} vocabulary tiles, fp32")
    return f


def _named(f: Floor, design: str) -> Floor:
    f.design = design
    return f


DESIGNS: Dict[str, Callable[[Shape, str], Floor]] = {
    "materialized": materialized,
    "authors": authors,
    "torch": torch_chunked,
    "cuda": cuda_chunked,
    # what bench/chunk_precision.py allows: the student's buffer stays fp32 (its gradient), the
    # teacher views' buffers hold target-shifted bf16, both teacher views in one GEMM per chunk
    "cuda-teacher-bf16": lambda s, t: _named(
        cuda_chunked(s, t, stacked_teacher=True, teacher_buffer_bytes=2),
        "cuda chunked, fp32 student + bf16 target-shifted teacher buffers, stacked teacher GEMM"),
    "triton": triton_on,
    "triton-fused": lambda s, t: triton_on(s, t, fused_views=True),
    "liger": liger,
    "trl": trl_chunked,
}


def floors(shape: Shape = HEADLINE) -> List[Floor]:
    out = []
    for task in TASKS:
        for name, design in DESIGNS.items():
            if task == "va_opd" and name in ("liger", "trl"):
                continue
            if task == "kl" and name == "triton-fused":
                continue
            out.append(design(shape, task))
    return out


def markdown(shape: Shape = HEADLINE) -> str:
    unit = 2.0 * shape.num_rows * shape.vocab
    materialized_work = {t: materialized(shape, t).gemm_dims for t in TASKS}
    lines = [f"Floors at {shape.label()}; GEMM unit 2NV = {unit:.3g} FLOP; bf16 {BF16_TFLOPS:.0f} TFLOP/s, "
             f"fp32 {FP32_TFLOPS:.0f} TFLOP/s; H200 {BANDWIDTH_TBS['H200']} TB/s, H100 {BANDWIDTH_TBS['H100']} TB/s "
             "(`python -m bench.floors`).", "",
             "| task | design | GEMM work (x 2NV) | vs materialized | TFLOP | HBM GB (weights / hidden / logits / other) "
             "| compute ms | memory ms H200 / H100 | bound ms H200 / H100 | serial ms H200 / H100 | notes |",
             "|---|---|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for f in floors(shape):
        h200, h100 = f.times_ms("H200"), f.times_ms("H100")
        g = {k: f.bytes.get(k, 0.0) / 1e9 for k in ("weights", "hidden", "logit buffers")}
        acc = sum(v for k, v in f.bytes.items() if k not in g) / 1e9
        lines.append(
            f"| {f.task} | {f.design} | {f.formula()} "
            f"| {f.gemm_dims / materialized_work[f.task]:.2f}x | {f.flops() / 1e12:.1f}"
            f"{' (fp32)' if f.gemm_dtype == 'fp32' else ''} "
            f"| {f.total_bytes() / 1e9:.1f} ({g['weights']:.1f} / {g['hidden']:.2f} / {g['logit buffers']:.1f} / {acc:.1f}) "
            f"| {h200['compute_ms']:.1f} | {h200['memory_ms']:.1f} / {h100['memory_ms']:.1f} "
            f"| {h200['bound_ms']:.1f} / {h100['bound_ms']:.1f} | {h200['serial_ms']:.1f} / {h100['serial_ms']:.1f} "
            f"| {'; '.join(f.notes)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.floors", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=HEADLINE.num_rows)
    ap.add_argument("--vocab", type=int, default=HEADLINE.vocab)
    args = ap.parse_args(argv)
    print(markdown(Shape(args.rows, HEADLINE.student_dim, HEADLINE.teacher_dim, args.vocab, "bfloat16")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
