"""linear_logprob: target log-probabilities of one head (one forward pass, recomputing backward)."""
from __future__ import annotations

import torch

from vaopd_kernels.backends._common import compute_dtype
from vaopd_kernels.backends._autograd import attach
from vaopd_kernels.backends.triton import kl_backward, kl_forward


def linear_logprob(h, w, targets, *, temperature, vocab_size, options):
    out_dtype = compute_dtype(h, w)
    hk, wk = kl_forward.operands(h, w)
    with torch.no_grad():
        stats = kl_forward.row_stats(vocab_size=vocab_size, student=(hk, wk), targets=targets,
                                     temperature=temperature)
        lp = stats.logit_s - stats.lse_s
    rows = kl_backward.saved_rows(stats)

    def backward_fn(row_grad):
        return kl_backward.student_grads(mode="logprob", sh=hk, sw=wk, rows=rows, row_grad=row_grad,
                                         vocab_size=vocab_size, temperature=temperature, targets=targets, options=options,
                                         precision=kl_forward.dot_precision(hk, wk))

    return attach(lp.to(out_dtype), h, w, backward_fn)
