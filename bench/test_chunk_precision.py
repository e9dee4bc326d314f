"""bench/chunk_precision.py's conclusions hold at a small vocabulary (the study runs at V = 151,936)."""
import torch

from bench import chunk_precision as cp


def test_chunk_buffer_precision_on_the_emulated_row_kernels():
    """bench/chunk_precision.py: bf16 chunk buffers against fp32 ones, on the row kernels' emulation,
    at a small vocabulary. Target shifting must help where the high-probability entries sit near
    the target (peaked rows), and the fp32 student buffer must carry the gradient on flat rows,
    as docs/backends.md ("Chunk buffer precision") says from the full-size run."""
    gen = torch.Generator().manual_seed(0)
    n, vocab = 32, 4096
    z_s = torch.randn(n, vocab, generator=gen, dtype=torch.float64) * 2.0
    z_t = 0.7 * z_s + 0.7 * torch.randn(n, vocab, generator=gen, dtype=torch.float64) * 2.0
    flat = cp.errors(cp.emulated_ops(), z_s, z_t, torch.randint(0, vocab, (n,), generator=gen))
    y = torch.randint(0, vocab, (n,), generator=gen)
    rows = torch.arange(n)
    z_s[rows, y] += 16.0
    z_t[rows, y] += 16.0
    peaked = cp.errors(cp.emulated_ops(), z_s, z_t, y)
    fp32, bf16, shifted, mixed = (f"{s} / {t}" for s, t in cp.PAIRS)
    for e in (flat, peaked):
        assert e[fp32]["grad_logits"] < 1e-5 and e[fp32]["teacher_logprob_abs"] < 1e-5, e[fp32]
        assert e[bf16]["grad_logits"] > 3e-3, e[bf16]           # bf16 rounding is visible
        assert e[shifted]["teacher_logprob_abs"] < e[bf16]["teacher_logprob_abs"], e
    assert peaked[shifted]["teacher_logprob_abs"] * 10 < peaked[bf16]["teacher_logprob_abs"], peaked
    assert peaked[shifted]["grad_logits"] * 5 < peaked[bf16]["grad_logits"], peaked
    # flat rows: the shift does not rescue the gradient; an fp32 student buffer does
    assert flat[shifted]["grad_logits"] > 0.5 * flat[bf16]["grad_logits"], flat
    assert flat[mixed]["grad_logits"] * 2 < flat[shifted]["grad_logits"], flat
