"""lab.tabular.stats: rank correlations with bootstrap intervals, t intervals, anytime hypervolume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from lab.study.search import INTERRUPTED
from lab.tabular.stats import INTERRUPTED_PREFIX, anytime_hypervolume, mean_interval, rank_correlation


def test_rank_correlation_matches_scipy_and_drops_missing_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    y = x + rng.normal(size=60)
    xs, ys = list(x) + [None, 1.0, float("nan")], list(y) + [2.0, None, 3.0]   # three rows dropped
    r = rank_correlation(xs, ys, n_boot=500, seed=1)
    assert r["n"] == 60 and r["level"] == 0.95
    assert r["spearman"]["value"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert r["kendall"]["value"] == pytest.approx(scipy.stats.kendalltau(x, y).statistic)
    for name in ("spearman", "kendall"):
        assert r[name]["lo"] < r[name]["value"] < r[name]["hi"]
        assert 0.05 < r[name]["hi"] - r[name]["lo"] < 0.6                        # n = 60: neither a point nor everything
    assert rank_correlation(xs, ys, n_boot=500, seed=1) == r                        # seeded


def test_rank_correlation_bootstrap_is_the_percentile_interval():
    """The interval is the percentiles of scipy's statistics over rows resampled with the same generator."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=25), rng.normal(size=25)
    r = rank_correlation(x, y, n_boot=200, level=0.9, seed=7)
    idx = np.random.default_rng(7).integers(0, 25, size=(200, 25))
    rho = [scipy.stats.spearmanr(x[i], y[i]).statistic for i in idx]
    tau = [scipy.stats.kendalltau(x[i], y[i]).statistic for i in idx]
    assert [r["spearman"]["lo"], r["spearman"]["hi"]] == pytest.approx(np.percentile(rho, [5, 95]))
    assert [r["kendall"]["lo"], r["kendall"]["hi"]] == pytest.approx(np.percentile(tau, [5, 95]))


def test_rank_correlation_degenerate():
    r = rank_correlation([1, 2, 3, 4, 5, 6], [10, 20, 30, 40, 50, 60], n_boot=200)
    # every resample with two distinct values correlates perfectly; constant resamples are dropped
    assert r["spearman"] == {"value": 1.0, "lo": 1.0, "hi": 1.0}
    assert r["kendall"]["value"] == pytest.approx(1.0) and r["kendall"]["lo"] == pytest.approx(1.0)
    few = rank_correlation([1.0, 2.0, None], [1.0, 2.0, 3.0])
    assert few["n"] == 2 and math.isnan(few["spearman"]["value"]) and math.isnan(few["kendall"]["hi"])
    with pytest.raises(ValueError, match="x has 2 values, y 3"):
        rank_correlation([1, 2], [1, 2, 3])


def test_mean_interval_is_students_t():
    values = [0.61, 0.64, 0.58, 0.66, 0.63]
    mean, lo, hi = mean_interval(values + [None, float("nan")], level=0.9)
    ref = scipy.stats.t.interval(0.9, len(values) - 1, loc=np.mean(values), scale=scipy.stats.sem(values))
    assert mean == pytest.approx(np.mean(values)) and (lo, hi) == pytest.approx(ref)
    assert mean_interval([0.5]) == (0.5, 0.5, 0.5)
    assert all(math.isnan(v) for v in mean_interval([None]))


def _row(number: int, state: str, acc: float | None = None, macs: float | None = None, error: str | None = None) -> dict:
    return {"number": number, "state": state, "val_top1": acc, "macs": macs, "error": error}


def test_anytime_hypervolume_three_points_by_hand():
    max_macs = 40e6
    rows = [  # out of order: the budget counts trained trials by number
        _row(5, "complete", 0.5, 20e6),            # dominated by trial 2
        _row(0, "complete", 0.9, 30e6),
        _row(1, "rejected", 0.99, 1e6),            # not trained: neither budget nor front
        _row(2, "complete", 0.8, 10e6),
        _row(3, "pruned"),                         # trained: counts toward the budget, not on the front
        _row(4, "failed", error=INTERRUPTED),      # settled by a stopped driver: not trained
        _row(6, "failed", error="TrainError: loss is NaN"),
        _row(7, "complete", 0.95, 39e6),
    ]
    hv = anytime_hypervolume(rows, at=[1, 2, 3, 4, 5, 6], max_macs=max_macs)
    # trained by number: 0, 2, 3, 5, 6, 7. Boxes up to (0 accuracy, 40M MACs):
    # {0}: 0.9 x 10M; {0, 2}: 0.8 x 20M + 0.9 x 10M = 25M (trial 5 and the pruned 3 add nothing)
    # {0, 2, 3, 5, 6, 7}: + 0.95 x 1M (above 0.9 between 39M and 40M) -> 25M + 0.05 x 1M
    assert hv == pytest.approx({1: 9 / 40, 2: 25 / 40, 3: 25 / 40, 4: 25 / 40, 5: 25 / 40, 6: 25.05 / 40})
    assert anytime_hypervolume(rows, at=[7], max_macs=max_macs) == {7: None}
    assert anytime_hypervolume([], at=[0], max_macs=max_macs) == {0: 0.0}


def test_interrupted_prefix_matches_the_study():
    assert INTERRUPTED.startswith(INTERRUPTED_PREFIX)
