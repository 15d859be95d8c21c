"""How long the scaling fits take: 1,000 curves x 1,000 bootstrap samples, every law.

Synthetic curves (7 training-set sizes x 3 seeds, saturating truths with random a, b, c and 3%
multiplicative noise) are fitted by `lab.scaling.fit_curves` (power, saturating and broken laws:
point fits, 1,000 bootstrap refits each, percentile intervals, the extrapolation check) after a
small warm-up; the median of `--rounds` runs is reported with the split by law. The reference,
in the same run, is scipy's bounded least squares (`least_squares`, one start per fit) on a
sample of the same bootstrap problems, extrapolated to the full count.

    python benchmarks/scaling.py [--curves 1000] [--boot 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from lab.scaling import Curve, fit_curves
from lab.scaling.laws import SATURATING

SIZES = np.array([100, 200, 400, 800, 1600, 3200, 6400.0])


def curves(n: int, seeds: int = 3, noise: float = 0.03, seed: int = 0) -> tuple[list[Curve], np.ndarray]:
    rng = np.random.default_rng(seed)
    truths = np.column_stack([rng.uniform(1, 3, n), rng.uniform(0.3, 0.7, n), rng.uniform(0.01, 0.1, n)])
    d = np.repeat(SIZES, seeds)
    out = [Curve.from_points(d, SATURATING(t, d) * np.exp(rng.normal(0, noise, d.size)), name=f"c{i}", arch_id=f"c{i}")
           for i, t in enumerate(truths)]
    return out, truths


def scipy_per_fit(curve: Curve, n: int = 200) -> float:
    """Seconds per saturating fit with scipy.optimize.least_squares (one start) on resampled means."""
    from scipy.optimize import least_squares

    rng = np.random.default_rng(1)
    x = np.log(curve.sizes)
    t0 = time.perf_counter()
    for _ in range(n):
        y = np.log([rng.choice(r, len(r)).mean() for r in curve.runs])
        cap = 0.999 * np.exp(y).min()
        least_squares(lambda t: y - np.log(np.exp(t[0] - t[1] * x) + t[2]), [y[0] + 0.5 * x[0], 0.5, 0.5 * cap],
                      bounds=([-60, 0, 0], [60, 3, cap]))
    return (time.perf_counter() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--curves", type=int, default=1000)
    p.add_argument("--boot", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    batch, truths = curves(a.curves)
    fit_curves(batch[:20], n_boot=50)                                       # warm-up (imports, caches)
    times = {}
    for laws in (("power",), ("saturating",), ("broken",), ("power", "saturating", "broken")):
        runs = []
        for _ in range(a.rounds if len(laws) == 3 else 1):
            t0 = time.perf_counter()
            fits = fit_curves(batch, laws=laws, n_boot=a.boot, seed=0)
            runs.append(time.perf_counter() - t0)
        times["+".join(laws)] = (statistics.median(runs), runs)
    total, runs = times["power+saturating+broken"]
    n_fits = a.curves * (a.boot + 1)
    print(f"{a.curves} curves x {a.boot} bootstrap samples ({len(SIZES)} sizes x 3 seeds): "
          f"{n_fits:,} fits per law, plus the extrapolation fits")
    for name, (t, _) in times.items():
        print(f"  {name:26s} {t:6.2f} s   {t / n_fits * 1e6:6.2f} us per curve x sample")
    print(f"  all three laws, {a.rounds} rounds: {', '.join(f'{r:.2f}' for r in runs)} s (median {total:.2f} s)")
    sat = [f.laws["saturating"] for f in fits]
    cover_b = np.mean([s.ci["b"][0] <= t[1] <= s.ci["b"][1] for s, t in zip(sat, truths)])
    cover_c = np.mean([s.ci["c"][0] <= t[2] <= s.ci["c"][1] for s, t in zip(sat, truths)])
    print(f"  95% intervals of the saturating law cover the true b in {cover_b:.1%}, c in {cover_c:.1%} of the curves")
    per = scipy_per_fit(batch[0])
    sat_t = times["saturating"][0]
    print(f"reference: scipy least_squares, one start, {per * 1e6:.0f} us per saturating fit -> "
          f"{per * n_fits:.0f} s for the saturating law's {n_fits:,} fits; lab.scaling: {sat_t:.2f} s "
          f"({per * n_fits / sat_t:.0f}x faster)")


if __name__ == "__main__":
    main()
