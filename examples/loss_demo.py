"""VA-OPD loss and gradient at the real Qwen3-VL vocabulary, torch backend vs the reference.

Each backend runs in its own process so peak memory (RSS growth above the inputs) is measured
cleanly. Run: ``python examples/loss_demo.py`` (about a minute on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

import vaopd_kernels as vk

VOCAB = 151_936  # Qwen3-VL text vocabulary


def make_batch(num_prompts: int, rollouts: int, max_len: int, ds: int, dt: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max_len // 4, max_len + 1, (num_prompts * rollouts,), generator=g)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    n = int(cu[-1])
    # In-place scaling: a temporary head-sized copy would raise the process's peak RSS before the
    # baseline and hide the backends' own growth.
    teacher_weight = torch.randn(VOCAB, dt, generator=g).mul_(4 / dt ** 0.5)
    teacher_hidden = torch.randn(n, dt, generator=g)
    # The pixelated view: a perturbed copy, so VA is positive on some tokens only.
    degraded = teacher_hidden + torch.randn(n, dt, generator=g) * (torch.rand(n, 1, generator=g) > 0.7)
    return dict(
        student_hidden=torch.randn(n, ds, generator=g).requires_grad_(),
        student_weight=torch.randn(VOCAB, ds, generator=g).mul_(4 / ds ** 0.5).requires_grad_(),
        teacher_hidden=teacher_hidden, teacher_weight=teacher_weight, teacher_hidden_degraded=degraded,
        targets=torch.randint(0, VOCAB, (n,), generator=g), cu_seqlens=cu,
        prompt_ids=torch.arange(num_prompts).repeat_interleave(rollouts),
    )


def run_backend(backend: str, args) -> dict:
    batch = make_batch(args.prompts, args.rollouts, args.max_len, args.ds, args.dt)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = vk.va_opd_loss(**batch, backend=backend)
    result.loss.backward()
    seconds = time.perf_counter() - start
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return dict(backend=backend, seconds=seconds, peak_mb=peak_mb, loss=result.loss.item(),
                grad_hidden_norm=batch["student_hidden"].grad.norm().item(),
                grad_weight_norm=batch["student_weight"].grad.norm().item(),
                rows=batch["targets"].numel(), metrics=result.metrics,
                kl=result.kl[:8].tolist(), va=result.visual_advantage[:8].tolist(),
                high=result.high_mask[:8].tolist(), token_weight=result.token_weight[:8].tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--ds", type=int, default=256)
    parser.add_argument("--dt", type=int, default=512)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_backend(args.child, args)))
        return

    runs = {}
    for backend in ("torch", "reference"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", backend],
                             capture_output=True, text=True, check=True)
        runs[backend] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, ref = runs["torch"], runs["reference"]
    print(f"VA-OPD loss at V={VOCAB:,}: {ours['rows']} response tokens, {args.prompts} prompts x "
          f"{args.rollouts} rollouts, Ds={args.ds}, Dt={args.dt}, fp32, CPU\n")
    print("first tokens (torch backend):")
    print(f"{'token':>5} {'KL':>10} {'VA':>8} {'high':>5} {'weight':>9}")
    for i, (kl, va, hi, w) in enumerate(zip(ours["kl"], ours["va"], ours["high"], ours["token_weight"])):
        print(f"{i:>5} {kl:>10.4f} {va:>8.4f} {str(hi):>5} {w:>9.5f}")
    print("\nmetrics:", ", ".join(f"{k}={v:.4g}" for k, v in ours["metrics"].items()))
    print(f"\n{'backend':<10} {'loss':>12} {'|dL/dh|':>10} {'|dL/dW|':>10} {'time s':>8} {'peak extra MiB':>15}")
    for r in (ours, ref):
        print(f"{r['backend']:<10} {r['loss']:>12.6f} {r['grad_hidden_norm']:>10.4g} {r['grad_weight_norm']:>10.4g} "
              f"{r['seconds']:>8.2f} {r['peak_mb']:>15.0f}")
    # Both run in fp32; the chunked backend's careful sums are the more accurate of the two
    # (checked against float64 in tests/), so agreement is judged at fp32-over-V tolerance.
    rel = abs(ours["loss"] - ref["loss"]) / abs(ref["loss"])
    agree = rel <= 1e-4
    print(f"\nrelative loss difference torch vs reference: {rel:.1e} (agree: {agree}); torch backend peak "
          f"extra memory {ours['peak_mb'] / max(ref['peak_mb'], 1):.1%} of the reference's")
    if not agree:
        sys.exit(1)


if __name__ == "__main__":
    main()
