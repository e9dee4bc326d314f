"""The visual-signal comparison's analysis (docs/preregistration-visual-signal.md): paired 95%
t-intervals and the decision rules, on constructed per-seed numbers."""
import statistics

import pytest

from experiments.visual_signal import DELTA, decide, interval

T_975_DF5 = 2.5705818366147395  # Student's t, 97.5% quantile, 5 degrees of freedom


def test_interval_is_the_paired_t_interval():
    a, b = [0.70, 0.66, 0.72, 0.64, 0.69, 0.71], [0.60, 0.62, 0.65, 0.61, 0.58, 0.66]
    diffs = [x - y for x, y in zip(a, b)]
    got = interval(a, b)
    half = T_975_DF5 * statistics.stdev(diffs) / len(diffs) ** 0.5
    assert got["mean"] == pytest.approx(statistics.fmean(diffs))
    assert (got["low"], got["high"]) == pytest.approx((got["mean"] - half, got["mean"] + half), rel=1e-6)


def _tests(blind_ds, blind_do, sighted_ds):
    def t(mean, half):
        return {"mean": mean, "low": mean - half, "high": mean + half, "half": half, "n": 6}
    return {"blind": {"divergence-sampled": t(*blind_ds), "divergence-opd": t(*blind_do), "sampled-opd": t(0, 0.01)},
            "sighted": {"divergence-sampled": t(*sighted_ds), "divergence-opd": t(0, 0.01), "sampled-opd": t(0, 0.01)}}


@pytest.mark.parametrize("blind_ds, blind_do, sighted_ds, outcome", [
    ((0.10, 0.05), (0.00, 0.02), (0.00, 0.02), "supports"),
    ((0.10, 0.05), (-0.05, 0.01), (0.00, 0.02), "inconclusive"),  # beats sampled, but may lose to OPD by > delta
    ((0.00, 0.02), (0.00, 0.02), (-0.01, 0.02), "falsifies"),
    ((0.02, 0.10), (0.00, 0.02), (0.00, 0.02), "underpowered"),
    ((0.01, 0.02), (0.00, 0.02), (0.00, 0.02), "inconclusive"),  # neither above 0 nor below delta
])
def test_decision_rules(blind_ds, blind_do, sighted_ds, outcome):
    assert DELTA == 0.03
    assert decide(_tests(blind_ds, blind_do, sighted_ds)) == outcome


def test_seeds_needed_is_the_smallest_count_that_reaches_the_target():
    from experiments.code_stats import t_quantile
    from experiments.visual_signal import seeds_needed

    sd = 0.18
    half = t_quantile(0.975, 5) * sd / 6 ** 0.5
    m = seeds_needed(half, 6, 0.06)

    def half_at(k):
        return t_quantile(0.975, k - 1) * sd / k ** 0.5
    assert half_at(m) <= 0.06 < half_at(m - 1)
