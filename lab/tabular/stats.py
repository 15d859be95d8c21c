"""The statistics `lab bench proxies` and `lab bench search` print.

- `rank_correlation`: Spearman's rho and Kendall's tau of two columns (a zero-cost proxy against
  the trained accuracy), each with a percentile bootstrap interval;
- `mean_interval`: a mean over seeds with its Student-t interval;
- `anytime_hypervolume`: a study's hypervolume after its first N trained trials (what
  benchmarks/study.py prints).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.stats

from lab.pareto import hypervolume_2d

# the error of a trial its stopped driver settled as failed (lab.study.search.INTERRUPTED begins so:
# tests/test_tabular_stats.py checks it); such a trial does not count toward the budget
INTERRUPTED_PREFIX = "interrupted"


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]   # a resample with a constant column has no correlation
    if samples.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def rank_correlation(x: Sequence[Any], y: Sequence[Any], n_boot: int = 1000, level: float = 0.95,
                     seed: int = 0) -> dict[str, Any]:
    """Spearman and Kendall (tau-b) correlations of `x` and `y`, each as {"value", "lo", "hi"}: the
    point estimate and a percentile bootstrap interval (rows resampled with replacement, `n_boot`
    times); and n, the rows where both are numbers (the others are dropped). NaN where undefined
    (fewer than 3 rows, or a constant column)."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} values, y {len(y)}")
    keep = [i for i in range(len(x)) if _finite(x[i]) and _finite(y[i])]
    a = np.array([float(x[i]) for i in keep])
    b = np.array([float(y[i]) for i in keep])
    n = len(keep)
    out: dict[str, Any] = {"n": n, "level": level}
    if n < 3:
        return out | {k: {"value": math.nan, "lo": math.nan, "hi": math.nan} for k in ("spearman", "kendall")}
    with np.errstate(invalid="ignore", divide="ignore"):
        point = {"spearman": float(scipy.stats.spearmanr(a, b).statistic),
                 "kendall": float(scipy.stats.kendalltau(a, b).statistic)}
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        rho = _spearman_rows(a[idx], b[idx])   # the Pearson correlation of the ranks: all resamples at once
        tau = np.array([scipy.stats.kendalltau(a[i], b[i]).statistic for i in idx], dtype=float)
    for name, samples in (("spearman", rho), ("kendall", tau)):
        lo, hi = _interval(samples, level)
        out[name] = {"value": point[name], "lo": lo, "hi": hi}
    return out


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of `a` and `b` (resamples x n): the Pearson correlation of ranks."""
    ra, rb = scipy.stats.rankdata(a, axis=1), scipy.stats.rankdata(b, axis=1)
    ra, rb = ra - ra.mean(axis=1, keepdims=True), rb - rb.mean(axis=1, keepdims=True)
    return (ra * rb).sum(axis=1) / np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))


def paired_difference(x: Sequence[Any], baseline: Sequence[Any], y: Sequence[Any], n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Spearman(x, y) - Spearman(baseline, y) over the rows where all three are numbers, with a percentile
    bootstrap interval from the same resampled rows for both (a paired comparison: the two share
    every row's noise). {"value", "lo", "hi", "n"}; NaN where undefined."""
    keep = [i for i in range(len(y)) if _finite(x[i]) and _finite(baseline[i]) and _finite(y[i])]
    a, b, c = (np.array([float(v[i]) for i in keep]) for v in (x, baseline, y))
    n = len(keep)
    if n < 3:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan, "n": n}
    with np.errstate(invalid="ignore", divide="ignore"):
        value = float(scipy.stats.spearmanr(a, c).statistic - scipy.stats.spearmanr(b, c).statistic)
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        diffs = _spearman_rows(a[idx], c[idx]) - _spearman_rows(b[idx], c[idx])
    lo, hi = _interval(diffs, level)
    return {"value": value, "lo": lo, "hi": hi, "n": n}


def mean_interval(values: Iterable[Any], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of `values` (None and NaN dropped) and its Student-t interval at
    `level`. One value: lo = hi = mean; none: all NaN."""
    v = np.array([float(x) for x in values if _finite(x)])
    if v.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if v.size == 1:
        return mean, mean, mean
    half = float(scipy.stats.t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return mean, mean - half, mean + half


def trained(row: Mapping[str, Any]) -> bool:
    """A trial that counts toward the budget: complete, pruned, or failed while training (not a
    rejected point, not one interrupted by a stopped driver), as lab.study.search.counted."""
    if row.get("state") in ("complete", "pruned"):
        return True
    return row.get("state") == "failed" and not str(row.get("error") or "").startswith(INTERRUPTED_PREFIX)


def anytime_hypervolume(rows: Iterable[Mapping[str, Any]], at: Iterable[int], max_macs: float,
                        objectives: Sequence[tuple[str, str]] = (("val_top1", "max"), ("macs", "min"))
                        ) -> dict[int, float | None]:
    """For each N in `at`: the hypervolume of the complete trials among a study's first N trained
    trials (by trial number), of `objectives` (two (column, sense) pairs) with reference 0 for a
    maximized objective and `max_macs` for a minimized one, divided by `max_macs` (for the default
    objectives, the share of accuracy x MACs budget dominated). None where the study has fewer
    than N trained trials."""
    if len(objectives) != 2:
        raise ValueError(f"{len(objectives)} objectives: the hypervolume here is 2-D")
    columns, senses = [c for c, _ in objectives], [s for _, s in objectives]
    reference = [0.0 if s == "max" else float(max_macs) for s in senses]
    ordered = sorted((r for r in rows if trained(r)), key=lambda r: r["number"])
    out: dict[int, float | None] = {}
    for n in at:
        if len(ordered) < n:
            out[n] = None
            continue
        points = [[float(r[c]) for c in columns] for r in ordered[:n]
                  if r.get("state") == "complete" and all(_finite(r.get(c)) for c in columns)]
        out[n] = hypervolume_2d(np.array(points).reshape(-1, 2), senses, reference) / float(max_macs)
    return out
