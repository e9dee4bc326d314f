"""95% intervals over images for held-out accuracy, and paired before -> after gains."""
import random
import statistics

import pytest

from vaopd_trainer.intervals import mean_ci95, paired_gain_ci95


def _expected(scores):
    z = statistics.NormalDist().inv_cdf(0.975)
    return statistics.fmean(scores), z * statistics.stdev(scores) / len(scores) ** 0.5


def test_mean_interval_is_the_normal_interval_over_images():
    rng = random.Random(0)
    scores = [rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) for _ in range(300)]
    mean, half = mean_ci95(scores)
    assert (mean, half) == pytest.approx(_expected(scores), rel=1e-12)
    assert mean_ci95([1.0]) == (1.0, 0.0) and mean_ci95([0.0, 0.0, 0.0]) == (0.0, 0.0)


def test_paired_gain_removes_the_spread_between_images():
    rng = random.Random(1)
    before = [rng.random() for _ in range(256)]  # images of very different difficulty
    after = [b + 0.1 + rng.gauss(0, 0.01) for b in before]  # each one a little better
    gain, half = paired_gain_ci95(before, after)
    assert gain == pytest.approx(_expected([a - b for a, b in zip(after, before)])[0], rel=1e-12)
    assert half < 0.01 < mean_ci95(before)[1]  # unpaired intervals would be ~10x wider
    assert gain - half > 0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="scores"):
        mean_ci95([])
    with pytest.raises(ValueError, match="before / after"):
        paired_gain_ci95([0.0, 1.0], [1.0])
