"""Crossovers: the training-set size where one fitted curve overtakes another (the lecture's "a
ViT needs more data": below the size a ConvNet has the lower error, above it the ViT).

The search range is from the smaller of the two curves' smallest sizes to SPAN times the larger
of their largest sizes: a crossing further out is an extrapolation too far to report. The point
estimate is where the fitted curves cross first in that range; its interval comes from the same
bootstrap samples (sample i of one curve against sample i of the other, independent curves): a
sample whose overtaker is already ahead at the range's start counts as a crossing below it (0),
one whose leader is still ahead at its end as beyond it (inf), so the interval is honest about
samples that do not cross; `p_cross` is the share of samples crossing inside the range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lab.scaling.curves import CurveFit, LawFit

SPAN = 10.0        # the search range reaches SPAN x the largest measured size
GRID = 400         # log-spaced sizes the curves are compared at


@dataclass
class Crossover:
    """`overtaker` has the higher error below `size` and the lower one above it (up to the range's end)."""

    leader: CurveFit
    overtaker: CurveFit
    size: float
    lo: float           # interval of the size: 0 = below the range, inf = beyond it
    hi: float
    p_cross: float      # share of bootstrap samples that cross inside the range
    error: float        # the fitted error where they cross
    d_range: tuple[float, float]
    level: float


def _first_crossing(diff: np.ndarray, log_d: np.ndarray, sign0: float) -> np.ndarray:
    """log D where rows of `diff` (S, M) first change from sign0 to -sign0; -inf when a row starts
    on the other side already, +inf when it never changes (linear interpolation between points)."""
    flipped = np.sign(diff) == -sign0
    first = flipped.argmax(-1)
    out = np.full(len(diff), np.inf)
    out[flipped[:, 0]] = -np.inf
    inside = flipped.any(-1) & ~flipped[:, 0]
    i = first[inside]
    rows = np.flatnonzero(inside)
    d0, d1 = diff[rows, i - 1], diff[rows, i]
    t = d0 / (d0 - d1)
    out[inside] = log_d[i - 1] + t * (log_d[i] - log_d[i - 1])
    return out


def crossing(a: LawFit, b: LawFit, d_lo: float, d_hi: float, level: float = 0.95,
             grid: int = GRID) -> tuple[float, float, float, float, bool] | None:
    """Where fitted curve `b` overtakes `a` or `a` overtakes `b` in [d_lo, d_hi]: (size, lo, hi,
    p_cross, a_leads), `a_leads` True when `a` has the lower error below the crossing; None when
    the fitted curves do not cross in the range."""
    assert a.params is not None and b.params is not None  # fitted laws
    log_d = np.linspace(math.log(d_lo), math.log(d_hi), grid)
    diff = a.law.log_error(a.params, log_d) - b.law.log_error(b.params, log_d)
    start = np.sign(diff[0])
    if start == 0:
        return None
    (x,) = _first_crossing(diff[None], log_d, start)
    if not math.isfinite(x):
        return None
    lo = hi = math.nan
    p = math.nan
    if a.boot is not None and b.boot is not None:
        n = min(len(a.boot), len(b.boot))
        ok = np.isfinite(a.boot[:n]).all(-1) & np.isfinite(b.boot[:n]).all(-1)
        if ok.any():
            da = a.law.log_error(a.boot[:n][ok], log_d)              # (S, M)
            db = b.law.log_error(b.boot[:n][ok], log_d)
            samples = _first_crossing(da - db, log_d, start)
            p = float(np.mean(np.isfinite(samples)))
            q = np.quantile(np.exp(samples), [(1 - level) / 2, (1 + level) / 2], method="nearest")
            lo, hi = float(q[0]), float(q[1])
    return float(math.exp(x)), lo, hi, p, bool(start < 0)


def crossovers(fits: list[CurveFit], span: float = SPAN, level: float = 0.95) -> list[Crossover]:
    """Every crossing of two architectures' preferred fits from different families, in the range
    their sizes span (up to `span` x the largest), ordered by size."""
    out = []
    live = [f for f in fits if f.preferred is not None]
    for i, fa in enumerate(live):
        for fb in live[i + 1:]:
            if not fa.curve.family or fa.curve.family == fb.curve.family:
                continue
            d_lo = float(min(fa.curve.sizes[0], fb.curve.sizes[0]))
            d_hi = float(span * max(fa.curve.sizes[-1], fb.curve.sizes[-1]))
            pa, pb = fa.preferred, fb.preferred
            assert pa is not None and pb is not None  # `live` holds the fits that have one
            found = crossing(pa, pb, d_lo, d_hi, level)
            if found is None:
                continue
            size, lo, hi, p, a_leads = found
            leader, overtaker = (fa, fb) if a_leads else (fb, fa)
            error = float((pa if a_leads else pb).predict([size])[0])
            out.append(Crossover(leader, overtaker, size, lo, hi, p, error, (d_lo, d_hi), level))
    return sorted(out, key=lambda c: c.size)
