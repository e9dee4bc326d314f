"""How much backward work the Triton gradient filter can skip, by row distribution (no GPU needed).

The filter (``KernelOptions.gradient_filter_eps``) saves work in two places, both decided per block of
rows, which it visits grouped by confidence (log of the largest p_s):
- both backward matmuls skip steps whose 64 x 64 blocks of d KL / d z_s all lie below
  eps x (row's largest p_s), measured after the teacher tile is recomputed;
- the teacher's recompute itself is skipped for a dlogits tile (64 or 128 rows x 128 columns)
  whose every p_s is at most ``experimental_filter.teacher_skip_threshold`` (a provable bound).
Whether either fires depends only on the rows' probabilities, so this script draws synthetic
reverse-KL rows at the real vocabulary size (Gaussian competitor logits plus a target margin,
the teacher correlated with the student) and counts, with the package's own threshold, the
fraction of each kind of block that would be skipped, and the backward GEMM work left at the
headline shape (student recompute Ds + teacher recompute Dt + two matmuls 2 Ds per column), also
for the rows in their given order (what the grouping buys).

    python -m bench.filter_reach [--rows 512] [--out bench/results/filter-reach]

Block timing is for a GPU run (``python -m bench.gpu_run``, its filter stage); this measures reach, not speed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os

import torch

from vaopd_kernels.backends.triton.experimental_filter import teacher_skip_threshold  # no kernel runs here
from vaopd_kernels.backends.triton.stats import SavedRow

V, DS, DT = 151_936, 2048, 4096
EPS = 2.0 ** -12
FLAG = 64            # filter map granularity on a GPU (_config.FLAG_BLOCK)
MATMUL_M = 128       # the matmuls' BLOCK_M: a K step is skipped only if 2 flag blocks are clear
TILES = ((128, 128), (64, 128))  # dlogits tiles of the autotune list (rows x columns)
# (label, competitor logit std, target margin per row share): mixtures are shuffled row orders
FAMILIES = [(f"sigma {s}, margin {m}", s, ((m, 1.0),)) for s in (1.4, 2.5) for m in (12, 16, 20, 24, 28)]
FAMILIES += [("sigma 2.5, 70% margin 28 + 30% margin 16", 2.5, ((28, 0.7), (16, 0.3))),
             ("sigma 2.5, 90% margin 28 + 10% margin 20", 2.5, ((28, 0.9), (20, 0.1)))]


def draw_rows(n, sigma, margins, gen):
    """Student and teacher logits [n, V]: N(0, sigma^2) competitors, corr 0.7, target + margin."""
    z_s = torch.randn(n, V, generator=gen) * sigma
    z_t = 0.7 * z_s + (1 - 0.7 ** 2) ** 0.5 * sigma * torch.randn(n, V, generator=gen)
    counts = [round(share * n) for _, share in margins]
    counts[-1] = n - sum(counts[:-1])
    margin = torch.cat([torch.full((c,), float(m)) for (m, _), c in zip(margins, counts)])
    margin = margin[torch.randperm(n, generator=gen)]
    y = torch.randint(0, V, (n,), generator=gen)
    rows = torch.arange(n)
    z_s[rows, y] += margin
    z_t[rows, y] += margin
    return z_s, z_t


def block_any(mask, rows, cols):
    n, v = mask.shape
    v = v // cols * cols
    return mask[:, :v].reshape(n // rows, rows, v // cols, cols).any(3).any(1)


def reach(z_s, z_t, eps=EPS, ds=DS, dt=DT):
    lse_s, lse_t = z_s.logsumexp(1), z_t.logsumexp(1)
    logp_s, logp_t = z_s - lse_s[:, None], z_t - lse_t[:, None]
    p_s = logp_s.exp()
    kl = (p_s * (logp_s - logp_t)).sum(1)
    rows = torch.zeros(len(SavedRow), z_s.shape[0])
    rows[SavedRow.LSE_S], rows[SavedRow.LSE_T], rows[SavedRow.GAP] = lse_s, lse_t, lse_t - lse_s
    rows[SavedRow.AUX], rows[SavedRow.MAX_S], rows[SavedRow.MIN_T] = kl, z_s.amax(1), z_t.amin(1)
    tau = teacher_skip_threshold(rows, eps)
    kept = (p_s * (logp_s - logp_t - kl[:, None])).abs() >= eps * p_s.amax(1, keepdim=True)
    flags = block_any(kept, FLAG, FLAG)
    out = {"p_target_median": float(p_s.amax(1).median()),
           "filter_blocks_dropped": 1.0 - float(flags.float().mean()),
           # a matmul K step covers MATMUL_M / FLAG flag blocks along its rows (either matmul)
           "matmul_steps_dropped": 1.0 - float(block_any(flags, MATMUL_M // FLAG, 1).float().mean())}
    for rows, cols in TILES:
        out[f"teacher_tiles_skipped_{rows}x{cols}"] = 1.0 - float(block_any(p_s > tau[:, None], rows, cols)
                                                                  .float().mean())
    # backward GEMM work left, relative to no filter: (Ds + Dt live + 2 Ds kept) / (3 Ds + Dt)
    live_t = 1.0 - out["teacher_tiles_skipped_128x128"]
    out["backward_work_left"] = (ds + dt * live_t + 2 * ds * (1.0 - out["matmul_steps_dropped"])) / (3 * ds + dt)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=512, help="rows per family (a multiple of 128)")
    ap.add_argument("--out", default="bench/results/filter-reach")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    results = []
    for label, sigma, margins in FAMILIES:
        z_s, z_t = draw_rows(args.rows, sigma, margins, gen)
        # the backward visits rows grouped by confidence (log of the largest p_s): blocks as it sees them
        order = torch.argsort(z_s.amax(1) - z_s.logsumexp(1))
        r = reach(z_s[order], z_t[order])
        r["backward_work_left_given_order"] = reach(z_s, z_t)["backward_work_left"]
        r["family"] = label
        results.append(r)
        print(label, {k: round(v, 4) for k, v in r.items() if isinstance(v, float)}, flush=True)
    header = (f"# Gradient filter reach (eps = 2^-12, V = {V:,}, {args.rows} rows per family, "
              f"{datetime.date.today()})\n\n`python -m bench.filter_reach`. Fractions of blocks the filter would skip "
              "with the rows grouped by confidence, as the backward visits them; backward work = (Ds + Dt x "
              "teacher tiles kept + 2 Ds x matmul steps kept) / (3 Ds + Dt) at "
              f"Ds = {DS}, Dt = {DT}, 128 x 128 dlogits tiles; the last column without the grouping.\n\n"
              "| rows | median max p_s | 64x64 blocks dropped | matmul steps dropped | teacher tiles skipped "
              "128x128 / 64x128 | backward GEMM work left | same, rows in the given order |\n"
              "|---|---:|---:|---:|---:|---:|---:|\n")
    lines = [f"| {r['family']} | {r['p_target_median']:.3f} | {r['filter_blocks_dropped']:.3f} | "
             f"{r['matmul_steps_dropped']:.3f} | {r['teacher_tiles_skipped_128x128']:.3f} / "
             f"{r['teacher_tiles_skipped_64x128']:.3f} | {r['backward_work_left']:.2f} | "
             f"{r['backward_work_left_given_order']:.2f} |" for r in results]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "filter-reach.json"), "w") as f:
        json.dump({"eps": EPS, "vocab": V, "rows": args.rows, "date": str(datetime.date.today()),
                   "results": results}, f, indent=2)
    with open(os.path.join(args.out, "filter-reach.md"), "w") as f:
        f.write(header + "\n".join(lines) + "\n")
    print(header + "\n".join(lines))


if __name__ == "__main__":
    main()
