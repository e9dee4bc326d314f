"""backend="triton" against the float64 reference backend.

Without CUDA this runs under Triton's CPU interpreter (TRITON_INTERPRET=1, set before the
backend is imported) at small shapes; kernel outputs are poisoned with NaN before launch so any
element a kernel fails to write shows up.
"""
import os
import warnings
from functools import partial

import pytest
import torch

from vaopd_kernels import testing

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import vaopd_kernels as vk  # noqa: E402
from vaopd_kernels import ops  # noqa: E402
from vaopd_kernels.results import Coefficients  # noqa: E402
from vaopd_kernels.backends import backend_unavailable_reason  # noqa: E402
from vaopd_kernels.backends.base import Divergence  # noqa: E402

_REASON = backend_unavailable_reason("triton")
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=f"triton backend unavailable: {_REASON}"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]

if _REASON is None:
    from vaopd_kernels.backends.triton import _config, experimental_filter, matmul
    from vaopd_kernels.backends.triton import stats as kernel_stats
else:  # pragma: no cover
    _config = experimental_filter = matmul = kernel_stats = None

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(autouse=True)
def _poison_and_splits():
    old = (_config.POISON, _config.FORCE_SPLITS)
    _config.POISON = True
    yield
    _config.POISON, _config.FORCE_SPLITS = old


# Largest absolute error relative to the largest reference value; inf = a non-finite value
# (unwritten or poisoned memory?).
rel_err = partial(testing.rel_err, norm="max", floor=1e-12)


def close(got, want, dtype, name=""):
    err = rel_err(got, want)
    assert err <= TOL[dtype], f"{name}: rel err {err:.3g} > {TOL[dtype]}"


def make(n, ds, dt, vocab, dtype, *, extra_rows=(5, 3), seed=0, near=False):
    """The shared problem (vaopd_kernels.testing) in ``dtype`` on DEVICE, plus float64 copies of the same
    rounded values; ``near``: teacher = student + tiny perturbation (KL ~ 1e-4)."""
    shape = testing.Shape(n, ds, dt, vocab, dtype=str(dtype).removeprefix("torch."), seed=seed)
    p = testing.make_inputs(shape, DEVICE, logit_std=1.5, head_padding=extra_rows, degraded_noise=0.7)
    if near:
        p = testing.near_teacher(p, degraded_noise=0.7)
    low = [t.detach() for t in (p.student_hidden, p.student_weight, p.teacher_hidden, p.teacher_weight,
                                p.teacher_hidden_degraded)]
    ref = [t.double() for t in low]
    for pair in (low, ref):
        pair[0].requires_grad_(True)
        pair[1].requires_grad_(True)
    return low, ref, p.targets


def grads(value, inputs, seed=1):
    w = torch.randn(value.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.autograd.grad((value * w.to(value.device, value.dtype)).sum(), inputs)


# ----------------------------------------------------------------------------- linear_kl
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("divergence", ["reverse", "forward", "jsd"])
def test_linear_kl(divergence, dtype):
    low, ref, _ = make(21, 40, 56, 203, dtype)  # odd V, not a tile multiple, V < head rows
    opts = dict(divergence=divergence, beta=0.3, temperature=1.7, vocab_size=203)
    got = vk.linear_kl(*low[:4], backend="triton", **opts)
    want = vk.linear_kl(*ref[:4], backend="reference", **opts)
    assert got.dtype == torch.float32 and got.shape == (21,)
    close(got, want, dtype, "kl")
    for name, a, b in zip(("d hidden", "d weight"), grads(got, low[:2]), grads(want, ref[:2])):
        assert a.dtype == dtype
        close(a, b, dtype, name)
    assert low[1].shape[0] == 208


@pytest.mark.parametrize("splits", [2, 5])
@pytest.mark.parametrize("divergence", ["reverse", "forward"])
def test_vocab_splits_merge(divergence, splits):
    _config.FORCE_SPLITS = splits
    low, ref, _ = make(17, 33, 40, 300, torch.float32, seed=3)
    got = vk.linear_kl(*low[:4], divergence=divergence, vocab_size=300, backend="triton")
    want = vk.linear_kl(*ref[:4], divergence=divergence, vocab_size=300, backend="reference")
    close(got, want, torch.float32, "kl")
    for a, b in zip(grads(got, low[:2]), grads(want, ref[:2])):
        close(a, b, torch.float32, "grad")


def test_single_row_and_more_splits_than_tiles():
    _config.FORCE_SPLITS = 20  # more splits than vocabulary tiles: empty splits must merge as zeros
    low, ref, _ = make(1, 24, 16, 77, torch.float32, seed=4)
    got = vk.linear_kl(*low[:4], temperature=0.6, vocab_size=77, backend="triton")
    want = vk.linear_kl(*ref[:4], temperature=0.6, vocab_size=77, backend="reference")
    close(got, want, torch.float32, "kl")
    for a, b in zip(grads(got, low[:2]), grads(want, ref[:2])):
        close(a, b, torch.float32, "grad")


def test_reverse_kl_accurate_when_student_near_teacher():
    low, ref, _ = make(9, 32, 32, 150, torch.float32, extra_rows=(0, 0), near=True, seed=5)
    got = vk.linear_kl(*low[:4], vocab_size=150, backend="triton")
    want = vk.linear_kl(*ref[:4], vocab_size=150, backend="reference")
    assert want.abs().max() < 1e-2
    assert (got.double().cpu() - want.cpu()).abs().max() < 1e-7
    assert rel_err(got, want) < 2e-3  # the torch backend reaches ~8e-3 here


def test_mixed_dtypes_and_float64_inputs():
    low, ref, _ = make(6, 16, 24, 50, torch.float32, seed=6)
    sh, sw, th, tw = low[0], low[1].detach().bfloat16().requires_grad_(), low[2], low[3]
    got = vk.linear_kl(sh, sw, th, tw, vocab_size=50, backend="triton")
    want = vk.linear_kl(ref[0], sw.detach().double().requires_grad_(), ref[2], ref[3], vocab_size=50,
                        backend="reference")
    close(got, want, torch.float32, "mixed")
    assert grads(got, [sw])[0].dtype == torch.bfloat16
    out64 = vk.linear_kl(*ref[:4], vocab_size=50, backend="triton")
    assert out64.dtype == torch.float64
    close(out64, vk.linear_kl(*ref[:4], vocab_size=50, backend="reference"), torch.float32, "float64 in")


# ----------------------------------------------------------------------------- log-probs
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_linear_logprob(dtype):
    low, ref, y = make(33, 64, 8, 257, dtype, seed=7)
    got = vk.linear_logprob(low[0], low[1], y, temperature=1.3, vocab_size=257, backend="triton")
    want = vk.linear_logprob(ref[0], ref[1], y, temperature=1.3, vocab_size=257, backend="reference")
    close(got, want, dtype, "logprob")
    for name, a, b in zip(("d hidden", "d weight"), grads(got, low[:2]), grads(want, ref[:2])):
        close(a, b, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_teacher_logprobs_and_visual_advantage(dtype):
    low, ref, y = make(13, 8, 48, 129, dtype, seed=8)
    th, tw, td = (t.detach() for t in (low[2], low[3], low[4]))
    got = vk.visual_advantage(th, td, tw, y, vocab_size=129, clamp=False, backend="triton")
    want = vk.visual_advantage(ref[2], ref[4], ref[3], y, vocab_size=129, clamp=False, backend="reference")
    close(got, want, dtype, "signed VA")
    from vaopd_kernels.backends import triton as tb
    lp, lp_none = ops.teacher_logprobs(tb, th, tw, y, None, vocab_size=129, options=vk.KernelOptions())
    assert lp_none is None
    close(lp, vk.linear_logprob(ref[2], ref[3], y, vocab_size=129, backend="reference"), dtype, "teacher lp")


# ----------------------------------------------------------------------------- va_kl / weighted_kl
@pytest.mark.parametrize("degraded", [True, False], ids=["pixelated", "no-degraded"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_va_kl(dtype, degraded):
    low, ref, y = make(19, 40, 48, 211, dtype, seed=9)
    got = vk.va_kl(*low[:4], y, teacher_hidden_degraded=low[4] if degraded else None, vocab_size=211,
                   backend="triton")
    want = vk.va_kl(*ref[:4], y, teacher_hidden_degraded=ref[4] if degraded else None, vocab_size=211,
                    backend="reference")
    for name in ("kl", "student_logprob", "teacher_logprob", "student_entropy"):
        close(getattr(got, name), getattr(want, name), dtype, name)
    if degraded:
        assert want.visual_advantage.abs().max() > 0
        err = (got.visual_advantage.double().cpu() - want.visual_advantage.cpu()).abs().max()
        assert err <= TOL[dtype] * want.visual_advantage.abs().max()
    else:
        assert got.visual_advantage is None
    for name, a, b in zip(("d hidden", "d weight"), grads(got.kl, low[:2]), grads(want.kl, ref[:2])):
        close(a, b, dtype, name)


@pytest.mark.parametrize("backward_gemm", ["triton", "cublas"])
@pytest.mark.parametrize("fused_views", [False, True], ids=["teacher-first", "fused-views"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_va_opd_loss_weighted_kl(dtype, fused_views, backward_gemm):
    options = vk.KernelOptions(fused_views=fused_views, backward_gemm=backward_gemm)
    low, ref, y = make(23, 32, 40, 190, dtype, seed=10)
    cu = torch.tensor([0, 4, 9, 10, 17, 23], device=DEVICE)
    pid = torch.tensor([0, 0, 1, 1, 1], device=DEVICE)
    got = vk.va_opd_loss(*low[:4], y, cu, pid, teacher_hidden_degraded=low[4], vocab_size=190, backend="triton",
                         options=options)
    want = vk.va_opd_loss(*ref[:4], y, cu, pid, teacher_hidden_degraded=ref[4], vocab_size=190,
                          backend="reference")
    for name in ("loss", "kl", "visual_advantage", "student_logprob", "teacher_logprob", "student_entropy",
                 "token_weight"):
        close(getattr(got, name), getattr(want, name), dtype, name)
    for name, a, b in zip(("d hidden", "d weight"), torch.autograd.grad(got.loss * 2.5, low[:2]),
                          torch.autograd.grad(want.loss * 2.5, ref[:2])):
        close(a, b, dtype, name)


def test_weighted_kl_without_grad():
    low, ref, y = make(5, 16, 16, 40, torch.float32, seed=11)
    from vaopd_kernels.backends import triton as tb
    w = torch.rand(5, device=DEVICE)
    sh, sw = low[0].detach(), low[1].detach()
    loss, _, _ = ops.va_opd_loss(tb, sh, sw, low[2], low[3], y, None, lambda va: Coefficients(w, None, None, None),
                                 vocab_size=40, options=vk.KernelOptions())
    assert not loss.requires_grad
    close(loss, (w.double().cpu() * vk.linear_kl(*ref[:4], vocab_size=40, backend="reference").detach().cpu()).sum(),
          torch.float32, "loss")


# ----------------------------------------------------------------------------- gradient filtering
def same_as_unfiltered(filtered, unfiltered):
    """Gradients with nothing filtered out: d hidden bit for bit; d head up to the order in which
    its rows are summed (the filter visits rows grouped by confidence)."""
    assert torch.equal(filtered[0], unfiltered[0])
    assert (filtered[1] - unfiltered[1]).abs().max() <= 1e-6 * unfiltered[1].abs().max()
    assert not torch.equal(filtered[1], torch.zeros_like(filtered[1]))


@pytest.mark.parametrize("mode", ["reverse", "logprob"])
def test_gradient_filtering(mode):
    """eps = 0 keeps every block (the unfiltered gradients exactly); a huge eps drops all of them
    (zero gradients: the skip path really skips); near-uniform rows lose nothing (the threshold is
    relative to the row's largest probability); peaked rows drop blocks at 2^-12, and each
    gradient entry moves by at most what the dropped entries (|d q / d z| < eps) can carry."""
    n, vocab = 40, 300
    low, _, y = make(n, 32, 32, vocab, torch.float32, seed=12)

    def run(eps):
        options = vk.KernelOptions(gradient_filter_eps=eps)
        if mode == "logprob":
            value = vk.linear_logprob(low[0], low[1], y, vocab_size=vocab, backend="triton", options=options)
        else:
            value = vk.linear_kl(*low[:4], vocab_size=vocab, backend="triton", options=options)
        return [g.double() for g in torch.autograd.grad((value * upstream.float()).sum(), low[:2])]

    upstream = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # logits ~ N(0, 0.3^2 * 32): near-uniform rows (p_s ~ 1/300); an absolute threshold of 0.05
    # drops some blocks; relative to the row's largest p_s (~0.1) it drops none
    same_as_unfiltered(run(0.05), run(None))
    with torch.no_grad():  # peaked softmax, as in a trained LM: z = 30 cos(h, w_target) + noise
        for hidden, weight in ((low[0], low[1]), (low[2], low[3])):
            weight /= weight.norm(dim=1, keepdim=True)
            hidden.copy_(30.0 * weight[y] + 3.0 * torch.randn(hidden.shape, generator=torch.Generator().manual_seed(3)))

    unfiltered = run(None)
    same_as_unfiltered(run(0.0), unfiltered)
    for dropped in run(1e9):
        assert torch.count_nonzero(dropped) == 0
    eps = 2.0 ** -12
    d_hidden, d_weight = run(eps)
    assert not torch.equal(d_hidden, unfiltered[0]), "nothing was filtered"
    g = upstream.abs()
    h_max, w_max = low[0].detach().abs().max().double(), low[1].detach().abs().max().double()
    # d h_n = sum_v g_n dq_nv w_v and d w_v = sum_n g_n dq_nv h_n, with |dq| < eps wherever dropped
    assert ((d_hidden - unfiltered[0]).abs() <= vocab * eps * w_max * g[:, None] * 1.01 + 1e-6).all()
    assert ((d_weight - unfiltered[1]).abs() <= n * eps * h_max * g.max() * 1.01 + 1e-6).all()


@pytest.mark.parametrize("splits", [1, 3])
def test_teacher_skip_threshold_is_sound(splits):
    """Reverse KL's teacher skip: wherever p_s <= tau (from the kernel's row statistics), the exact
    float64 |d KL / d z_s| is at most eps * max p_s, on rows from flat to very peaked, student and
    teacher agreeing or not, for any eps; the teacher's smallest logit matches float64."""
    _config.FORCE_SPLITS = splits
    gen = torch.Generator().manual_seed(21)
    n, dim, vocab = 64, 16, 300
    skippable = 0
    for _ in range(3):
        # per-row sharpness from log-uniform [0.05, 20], drawn independently for student and teacher
        sharp = [torch.exp(torch.empty(n, 1).uniform_(-3.0, 3.0, generator=gen)) for _ in range(2)]
        sh, th = (torch.randn(n, dim, generator=gen) * s for s in sharp)
        sw, tw = (torch.randn(vocab + 3, dim, generator=gen) / dim ** 0.5 for _ in range(2))
        _, rows = kernel_stats.row_stats(vocab_size=vocab, student=(sh.to(DEVICE), sw.to(DEVICE)),
                                         teacher=(th.to(DEVICE), tw.to(DEVICE)), cross=int(Divergence.REVERSE),
                                         teacher_min=True)
        z_s, z_t = sh.double() @ sw.double()[:vocab].T, th.double() @ tw.double()[:vocab].T
        min_t = rows[kernel_stats.SavedRow.MIN_T].double().cpu()
        assert torch.allclose(min_t, z_t.min(1).values, rtol=1e-5, atol=1e-5)
        logp_s, logp_t = z_s.log_softmax(1), z_t.log_softmax(1)
        p_s = logp_s.exp()
        dz = p_s * (logp_s - logp_t - (p_s * (logp_s - logp_t)).sum(1, keepdim=True))
        for eps in (0.0, 2.0 ** -12, 2.0 ** -4, 0.5, 1e9):
            tau = experimental_filter.teacher_skip_threshold(rows, eps).double().cpu()
            below = p_s <= tau[:, None]
            bound = eps * p_s.max(1, keepdim=True).values * (1 + 1e-4)
            assert (dz.abs() <= bound)[below].all(), f"eps={eps}: an entry the skip drops exceeds the threshold"
            skippable += int(below.sum()) if 0 < eps < 1 else 0
    assert skippable > 0.2 * 3 * 3 * n * vocab, "the bound skips almost nothing: too loose to be useful"


# Written into teacher weights after the forward pass: a teacher tile the backward computes from
# them gives huge gradient entries, which the filter keeps (NaN would compare as negligible).
POISON = 1e30


def point_at_targets(low, y):
    """Peaked rows for targets in columns [0, 32): student margin 16 with every other head row
    shrunk (its other probabilities ~ 1e-7), teacher margin 60."""
    with torch.no_grad():
        for hidden, weight, margin in ((low[0], low[1], 16.0), (low[2], low[3], 60.0)):
            weight /= weight.norm(dim=1, keepdim=True)
            hidden.copy_(margin * weight[y])
        low[1][32:] *= 0.1


def kl_grads(low, vocab, eps, poison):
    """d sum(reverse KL) / d (student hidden, head) from the triton backend with filter ``eps``;
    with ``poison``, the teacher head's rows from 128 on (outside any tile of up to 128 columns
    that holds a target) hold POISON from the end of the forward pass."""
    tw = low[3].detach().clone()
    kl = vk.linear_kl(low[0], low[1], low[2], tw, vocab_size=vocab, backend="triton",
                      options=vk.KernelOptions(gradient_filter_eps=eps))
    if poison:
        tw.data[128:] = POISON  # .data: behind autograd's version check, to see what backward reads
    return torch.autograd.grad(kl.sum(), low[:2])


def test_gradient_filter_skips_dead_teacher_tiles():
    """With the filter on, reverse KL never reads teacher columns where no row's student has any
    non-negligible probability: huge values written there after the forward pass leave the
    gradients exactly as they were (without the filter, they reach them). The teacher's logits
    carry an offset of 10^4 (its softmax is unchanged), so a skipped tile that still formed a
    gradient from the missing teacher tile would be far off the unfiltered gradient."""
    n, dim, vocab = 8, 32, 300
    low, _, _ = make(n, dim, dim, vocab, torch.float32, seed=5)
    y = torch.randint(0, 32, (n,), generator=torch.Generator().manual_seed(6)).to(DEVICE)
    point_at_targets(low, y)
    with torch.no_grad():
        low[2][:, -1], low[3][:, -1] = 1e4, 1.0

    def run(eps, poison):
        return kl_grads(low, vocab, eps, poison)

    eps = 2.0 ** -12
    clean, exact = run(eps, poison=False), run(None, poison=False)
    for a, b in zip(run(eps, poison=True), clean):
        assert torch.equal(a, b)
    assert not torch.equal(run(None, poison=True)[0], exact[0]), "the poisoned columns never mattered"
    w_max, h_max = low[1].detach().abs().max(), low[0].detach().abs().max()
    assert ((clean[0] - exact[0]).abs() <= vocab * eps * w_max * 1.01 + 1e-6).all()
    assert ((clean[1] - exact[1]).abs() <= n * eps * h_max * 1.01 + 1e-6).all()


def test_gradient_filter_groups_rows_by_confidence():
    """Certain and uncertain rows interleaved: the filter visits rows grouped by confidence, so the
    certain rows' tiles still skip the teacher where only the uncertain rows need it. Huge values
    written into those teacher columns after the forward pass reach the uncertain rows' d hidden, but
    the certain rows' stays exactly as without it. (Row tiles of 16 to 128 rows each hold one kind.)"""
    n, dim, vocab = 256, 32, 300
    low, _, _ = make(n, dim, dim, vocab, torch.float32, seed=8)
    gen = torch.Generator().manual_seed(9)
    y = torch.randint(0, 32, (n,), generator=gen).to(DEVICE)
    certain = torch.arange(n, device=DEVICE) % 2 == 0
    point_at_targets(low, y)
    with torch.no_grad():
        low[0][~certain] = 0.3 * torch.randn(n // 2, dim, generator=gen).to(DEVICE)  # near-uniform rows

    clean, poisoned = (kl_grads(low, vocab, 2.0 ** -12, poison)[0] for poison in (False, True))
    assert torch.equal(poisoned[certain], clean[certain])
    assert (poisoned[~certain] != clean[~certain]).all(dim=1).all(), "the uncertain rows never read the poison"


@pytest.mark.parametrize("ordered", ["", "b", "c"])
@pytest.mark.parametrize("accumulate", [False, True])
def test_filtered_matmul_runs_exactly_the_flagged_steps(ordered, accumulate):
    """The backward's matmul with a flag map computes c (+)= a @ b over exactly the K steps whose
    [BLOCK_M, BLOCK_K] block of a holds some flag, whole steps at a time (their list is built in the
    kernel: K spans several of its 64-step scans; the map is a transposed view, as for d head)."""
    tile = matmul._matmul_kernel.configs[0].kwargs
    block_m, block_k, fb = tile["BLOCK_M"], tile["BLOCK_K"], _config.FLAG_BLOCK
    m, k, n = 3 * block_m - 5, 130 * block_k + 7, 40
    gen = torch.Generator().manual_seed(21)
    a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    flags = (torch.rand(-(-k // fb), -(-m // fb), generator=gen) < 0.02).to(torch.int8)
    flags[:, -(-m // fb) - 1] = 0  # one block of rows with no live step at all
    order = torch.randperm(max(m, k), generator=gen)[:k if ordered == "b" else m].argsort().to(torch.int32)
    start = torch.randn(m, n, generator=gen)
    c = start.clone() if accumulate else torch.full((m, n), float("nan"))
    matmul.matmul(a, b, c, accumulate=accumulate, precision="ieee", flags=flags.t(), order=order, ordered=ordered)

    fm, fk = flags.t().shape
    steps = torch.nn.functional.pad(flags.t(), (0, -fk % (block_k // fb), 0, -fm % (block_m // fb)))
    live = steps.view(-(-m // block_m), block_m // fb, -1, block_k // fb).amax((1, 3)) > 0
    assert 0 < int(live.sum()) < live.numel() and int(live.any(1).sum()) < live.shape[0]
    mask = live.repeat_interleave(block_m, 0).repeat_interleave(block_k, 1)[:m, :k]
    b_rows = b[order.long()] if ordered == "b" else b
    want = (a.double() * mask) @ b_rows.double()
    if ordered == "c":
        want = torch.empty_like(want).index_copy_(0, order.long(), want)
    if accumulate:
        want += start.double()
    close(c, want, torch.float32, "c")


@pytest.mark.parametrize("call", ["linear_kl", "weighted_kl"])
def test_changing_the_teacher_before_backward_raises(call):
    """The backward recomputes teacher logits: a teacher head changed in place after the forward
    pass makes it raise (as torch's own operations do), not return gradients of another teacher."""
    from vaopd_kernels.backends import triton as tb
    low, _, y = make(9, 16, 16, 50, torch.float32)
    if call == "linear_kl":
        out = vk.linear_kl(*low[:4], vocab_size=50, backend="triton").sum()
    else:
        ones = lambda va: Coefficients(torch.ones_like(va), None, None, None)  # noqa: E731
        out, _, _ = ops.va_opd_loss(tb, *low[:4], y, low[4], ones, vocab_size=50, options=vk.KernelOptions())
    with torch.no_grad():
        low[3].mul_(1.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


# ----------------------------------------------------------------------------- transformed LM heads
@pytest.mark.parametrize("divergence", ["reverse", "jsd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_strided_bias_and_soft_cap(dtype, divergence):
    """Heads with a non-contiguous bias (a column of a [V_head, 2] tensor), a logit scale and a
    soft-cap that bends most logits, over two vocabulary splits and several backward chunks: the
    divergence, entropy and gradients (the bias's too, in its dtype) match the float64 reference."""
    _config.FORCE_SPLITS = 2
    low, ref, _ = make(13, 24, 32, 150, dtype, seed=13)
    g = torch.Generator().manual_seed(14)
    biases = [torch.randn(w.shape[0], 2, generator=g).to(DEVICE, dtype)[:, 1] for w in (low[1], low[3])]
    opts = dict(divergence=divergence, beta=0.3, temperature=1.3, vocab_size=150, return_entropy=True)

    def run(tensors, bias_dtype, backend, options=None):
        sb, tb = (b.detach().to(bias_dtype) for b in biases)  # the triton run's stay strided
        assert sb.is_contiguous() == (bias_dtype != dtype)
        sb.requires_grad_()
        kl, entropy = vk.linear_kl(tensors[0], vk.LMHead(tensors[1], sb, 1.7, 4.0), tensors[2],
                                   vk.LMHead(tensors[3], tb, 0.6, 2.5), backend=backend, options=options, **opts)
        return kl, entropy, grads(kl, [tensors[0], tensors[1], sb])

    got = run(low, dtype, "triton", vk.KernelOptions(triton_workspace_bytes=1))
    want = run(ref, torch.float64, "reference")
    assert got[2][2].dtype == dtype and got[2][2].shape == (low[1].shape[0],)
    for name, a, b in zip(("kl", "entropy", "d hidden", "d weight", "d bias"), got[:2] + got[2], want[:2] + want[2]):
        close(a, b, dtype, name)


def test_gradient_filter_refuses_transformed_heads():
    low, _, _ = make(5, 16, 16, 40, torch.float32)
    head = vk.LMHead(low[1], logit_scale=2.0)
    with pytest.raises(ValueError, match="gradient_filter_eps"):
        vk.linear_kl(low[0], head, low[2], low[3], vocab_size=40, backend="triton",
                     options=vk.KernelOptions(gradient_filter_eps=1e-3))


# ----------------------------------------------------------------------------- GPU only
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (large shapes)")
def test_large_bf16_gpu():
    n, ds, dt, vocab = 512, 1024, 1536, 32000
    low, ref, y = make(n, ds, dt, vocab, torch.bfloat16, extra_rows=(64, 64), seed=12)
    got = vk.va_kl(*low[:4], y, teacher_hidden_degraded=low[4], vocab_size=vocab, backend="triton")
    want = vk.va_kl(*ref[:4], y, teacher_hidden_degraded=ref[4], vocab_size=vocab, backend="reference")
    close(got.kl, want.kl, torch.bfloat16, "kl")
    for a, b in zip(grads(got.kl, low[:2]), grads(want.kl, ref[:2])):
        close(a, b, torch.bfloat16, "grad")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (host-sync debug mode)")
def test_va_opd_loss_waits_for_the_gpu_only_at_its_reads():
    """va_opd_loss (triton) synchronises with the GPU at most at its four reads of device values
    (test_validation.py counts them on the CPU), and its backward never."""
    low, _, y = make(64, 32, 48, 300, torch.bfloat16)
    cu = torch.tensor([0, 20, 41, 64], device=DEVICE)
    pid = torch.tensor([0, 0, 1], device=DEVICE)

    def run():
        return vk.va_opd_loss(*low[:4], y, cu, pid, teacher_hidden_degraded=low[4], vocab_size=300,
                              backend="triton")
    run().loss.backward()  # compile (and autotune) first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run()
            forward = [str(w.message)[:80] for w in caught]
            result.loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(forward) <= 4, forward
    assert len(caught) == len(forward), [str(w.message)[:80] for w in caught[len(forward):]]
