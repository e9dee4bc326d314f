"""teacher_logprobs: both teacher views in one pass, each weight tile loaded once for both."""
from __future__ import annotations

import torch

from vaopd_kernels.backends._common import compute_dtype
from vaopd_kernels.backends.triton import kl_forward


@torch.no_grad()
def teacher_logprobs(th, tw, targets, th_degraded, *, vocab_size, options=None):  # no tunable option
    out_dtype = compute_dtype(th, tw, *(x for x in (th_degraded,) if x is not None))
    thk, twk, tdk = kl_forward.operands(th, tw, th_degraded)
    stats = kl_forward.row_stats(vocab_size=vocab_size, teacher=(thk, twk), degraded=tdk, targets=targets)
    lp = (stats.logit_t - stats.lse_t).to(out_dtype)
    lp_d = None if th_degraded is None else (stats.logit_d - stats.lse_d).to(out_dtype)
    return lp, lp_d
