"""The pre-registered analysis: Student's t against tabulated values, the paired test, the rules."""
import pytest

from experiments.code_stats import decide, paired_test, t_cdf, t_quantile


@pytest.mark.parametrize("df, q95", [(1, 6.313752), (2, 2.919986), (5, 2.015048), (9, 1.833113)])
def test_t_quantiles_match_tables(df, q95):
    assert t_quantile(0.95, df) == pytest.approx(q95, abs=1e-6)
    assert t_cdf(q95, df) == pytest.approx(0.95, abs=1e-7)
    assert t_cdf(0.0, df) == 0.5 and t_cdf(-q95, df) == pytest.approx(0.05, abs=1e-7)


def test_paired_test_by_hand():
    res = paired_test([3.0, 5.0, 4.0], [1.0, 2.0, 2.0])  # diffs 2, 3, 2: mean 7/3, sd 0.57735
    assert res.mean == pytest.approx(7 / 3) and res.sd == pytest.approx(0.5773503)
    assert res.t == pytest.approx((7 / 3) / (0.5773503 / 3 ** 0.5))
    assert res.upper_95 == pytest.approx(7 / 3 + 2.919986 * 0.5773503 / 3 ** 0.5, rel=1e-6)
    with pytest.raises(ValueError, match="paired"):
        paired_test([1.0], [2.0])


def _arms(opd, va, rnd, big):
    return {"opd": opd, "va_opd": va, "random_high": rnd, "opd_lr2.5": big}


def test_rules_support_falsify_inconclusive_underpowered():
    opd = [50.0, 52.0, 48.0, 51.0, 49.0, 50.0]
    slow = {"opd": [0.5] * 6, "va_opd": [0.4] * 6}
    clear = [x + 10 + d for x, d in zip(opd, [0.5, -0.5, 1.0, 0.0, -1.0, 0.2])]
    assert decide(_arms(opd, clear, opd, opd[:3]), slow)["outcome"] == "supports"
    # random-high as good as VA-OPD: the choice of tokens did not matter
    assert decide(_arms(opd, clear, clear, opd[:3]), slow)["outcome"] == "falsifies"
    # a bigger step does as well: not supported, but not falsified either
    assert decide(_arms(opd, clear, opd, clear[:3]), slow)["outcome"] == "inconclusive"
    # no effect: upper bound below +2
    same = [x + d for x, d in zip(opd, [0.3, -0.3, 0.2, -0.2, 0.1, -0.1])]
    assert decide(_arms(opd, same, opd, opd[:3]), slow)["outcome"] == "falsifies"
    # slot learning not slower under VA-OPD
    assert decide(_arms(opd, clear, opd, opd[:3]), {"opd": [0.5] * 6, "va_opd": [0.5] * 6})["outcome"] == "falsifies"
    noisy = [30.0, 70.0, 40.0, 60.0, 35.0, 65.0]
    assert decide(_arms(noisy, [x + 10 for x in noisy], noisy, noisy[:3]), slow)["outcome"] == "underpowered"
