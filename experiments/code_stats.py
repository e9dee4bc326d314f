"""The pre-registered analysis (docs/preregistration.md): a one-sided paired t-test and the decision
rules, as pure functions of per-seed numbers (no scipy: Student's t for integer degrees of freedom
has a closed form)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence

ALPHA = 0.05
MIN_EFFECT = 2.0  # points: falsified when the one-sided 95% upper bound of VA-OPD - OPD is below this
MAX_OPD_SD = 8.0  # points: above this seed-to-seed SD the comparison is declared underpowered
# The pre-registered arms, run by code_reproduce and reported by code_report:
# arm -> (trainer options, number of seeds); learning rates are multiples of --lr
ARMS = {
    "opd": (dict(method="opd"), 6),
    "va_opd": (dict(method="va_opd"), 6),
    "random_high": (dict(method="va_opd", high_selection="random"), 6),
    "va_opd_uniform": (dict(method="va_opd", rollout_weighting="uniform"), 3),
    "opd_lr2.5": (dict(method="opd", lr_scale=2.5), 3),
}


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with integer ``df`` >= 1 (Abramowitz & Stegun 26.7.3-4)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df: expected an integer >= 1, got {df!r}")
    theta = math.atan2(abs(t), math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd
        term, series = math.cos(theta), 0.0
        for k in range(1, (df - 1) // 2 + 1):
            series += term
            term *= c2 * (2 * k) / (2 * k + 1)
        central = (2 / math.pi) * (theta + s * series) if df > 1 else 2 * theta / math.pi
    else:
        term, series = 1.0, 0.0
        for k in range(1, df // 2 + 1):
            series += term
            term *= c2 * (2 * k - 1) / (2 * k)
        central = s * series
    return 0.5 + math.copysign(central / 2, t)


def t_quantile(p: float, df: int) -> float:
    """The t with ``t_cdf(t, df) == p`` (bisection; 0 < p < 1)."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def mean_sd(values: Sequence[float]) -> tuple:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, sd


@dataclass
class PairedTest:
    n: int
    mean: float  # mean of a - b (points)
    sd: float
    se: float
    t: float
    p_one_sided: float  # H1: mean > 0
    upper_95: float  # one-sided 95% upper bound of the mean difference
    lower_95: float  # one-sided 95% lower bound


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """One-sided paired t-test of a > b (same seeds in the same order)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a, b: need two equally long lists of >= 2 paired values, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    mean, sd = mean_sd(diffs)
    se = sd / math.sqrt(n)
    q = t_quantile(1 - ALPHA, n - 1)
    if se == 0:
        t, p = (math.copysign(math.inf, mean) if mean else 0.0), (0.0 if mean > 0 else 1.0 if mean < 0 else 0.5)
    else:
        t = mean / se
        p = 1 - t_cdf(t, n - 1)
    return PairedTest(n, mean, sd, se, t, p, mean + q * se, mean - q * se)


def decide(accuracy: Dict[str, List[float]], slot_speed: Dict[str, List[float]]) -> Dict[str, object]:
    """The decision rules, verbatim from the pre-registration. ``accuracy[arm]`` are final test
    accuracies in points by seed 0, 1, ...; ``slot_speed[arm]`` the mean sampled slot accuracy
    over training (higher = faster language learning). Arms: opd, va_opd, random_high, opd_lr2.5."""
    opd, va = accuracy["opd"], accuracy["va_opd"]
    main = paired_test(va, opd)
    vs_random = paired_test(va, accuracy["random_high"])
    bigger = accuracy["opd_lr2.5"]
    vs_bigger = paired_test(va[:len(bigger)], bigger)
    opd_sd = mean_sd(opd)[1]
    slot_va, slot_opd = mean_sd(slot_speed["va_opd"])[0], mean_sd(slot_speed["opd"])[0]
    checks = {
        "opd_sd": opd_sd,
        "main_significant": main.p_one_sided < ALPHA,
        "random_high_gap_at_least_half": vs_random.mean >= 0.5 * main.mean,
        "bigger_step_does_not_match": vs_bigger.mean >= 0.5 * main.mean,
        "upper_bound_below_min_effect": main.upper_95 < MIN_EFFECT,
        "random_high_at_least_va_opd": mean_sd(accuracy["random_high"])[0] >= mean_sd(va)[0],
        "va_slot_learning_not_slower": slot_va >= slot_opd,
    }
    # falsification is checked before support: a falsifying observation overrides a significant win
    if opd_sd > MAX_OPD_SD:
        outcome = "underpowered"
    elif checks["upper_bound_below_min_effect"] or checks["random_high_at_least_va_opd"] \
            or checks["va_slot_learning_not_slower"]:
        outcome = "falsifies"
    elif checks["main_significant"] and main.mean > 0 and checks["random_high_gap_at_least_half"] \
            and checks["bigger_step_does_not_match"]:
        outcome = "supports"
    else:
        outcome = "inconclusive"
    return {"outcome": outcome, "checks": checks, "main": asdict(main), "va_minus_random_high": asdict(vs_random),
            "va_minus_opd_lr2.5": asdict(vs_bigger)}
