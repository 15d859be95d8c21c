"""Scaling curves and their fits: one architecture's runs (error against training-set size, one
run per seed), checked for what makes a fit meaningless, fitted with every law at once over a
batch of curves, with bootstrap intervals, the extrapolation check and the preferred law.

    from lab.scaling import Curve, fit_curves
    fit = fit_curves([Curve.from_points(sizes, errors, name="resnet18")])[0]
    fit.get("saturating").value("b"), fit.get("saturating").ci["b"]
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from lab.errors import ScalingError
from lab.scaling import bootstrap as boot
from lab.scaling.extrapolate import holdout_largest
from lab.scaling.fit import B_MAX, fit_batch
from lab.scaling.laws import Law, get_law

DEFAULT_LAWS = ("power", "saturating", "broken")
Z_RISE = 3.0            # a rise between consecutive sizes beyond this many standard errors is not noise
RISE_NO_SEEDS = 0.10    # with one run per size (no noise estimate): a rise beyond 10% is not noise
GROUP_FITS = 65536      # curves x bootstrap samples fitted per batch
# lower bounds of the parameters, by law (a > 0; exponents and c >= 0; the break > 0)
LOWER = {"power": np.array([0.0, 0.0]), "saturating": np.zeros(3), "broken": np.zeros(4)}
# the fits' upper bounds: exponents <= B_MAX, an error floor c <= 1 (widening must not pass them)
UPPER = {"power": np.array([np.inf, B_MAX]), "saturating": np.array([np.inf, B_MAX, 1.0]),
         "broken": np.array([np.inf, B_MAX, B_MAX, np.inf])}


@dataclass
class Curve:
    """One architecture's runs: `sizes` (P,) the distinct training-set sizes, ascending, and
    `runs[j]` the errors of the runs (seeds) at sizes[j]."""

    name: str
    sizes: np.ndarray
    runs: list[np.ndarray]
    arch_id: str = ""
    family: str = ""
    metric: str = "error"
    key: str = ""                 # what the runs have in common: an arch_id, or a scaling study's arm
    info: dict = field(default_factory=dict)

    @classmethod
    def from_points(cls, sizes, errors, name: str = "curve", **kw) -> Curve:
        """A curve from one (size, error) pair per run; runs at the same size are seeds."""
        d = np.asarray(sizes, dtype=float).ravel()
        e = np.asarray(errors, dtype=float).ravel()
        if d.shape != e.shape:
            raise ScalingError(f"{name}: {d.size} sizes for {e.size} errors")
        distinct = np.unique(d)
        return cls(name, distinct, [e[d == s] for s in distinct], **kw)

    @property
    def means(self) -> np.ndarray:
        return np.array([r.mean() if len(r) else np.nan for r in self.runs])

    @property
    def counts(self) -> np.ndarray:
        return np.array([len(r) for r in self.runs], dtype=int)

    @property
    def n_points(self) -> int:
        return int(self.counts.sum())


def check(curve: Curve) -> str | None:
    """Why no law can be fitted to `curve` (None when one can): no runs, a size or error that is
    not a positive number, one size only, an error of zero (its log is undefined), or an error
    that does not fall with data or rises between two sizes beyond the seeds' noise."""
    name, what = curve.name, curve.metric.replace("_", " ")
    if not len(curve.sizes) or curve.n_points == 0:
        return f"{name}: no runs with a {what}"
    if not np.all(np.isfinite(curve.sizes)) or np.any(curve.sizes <= 0):
        return f"{name}: training-set sizes must be positive numbers (got {', '.join(f'{s:g}' for s in curve.sizes)})"
    allruns = np.concatenate(curve.runs)
    if not np.all(np.isfinite(allruns)):
        return f"{name}: a run has no finite error"
    if np.any(allruns < 0):
        return f"{name}: negative error {allruns.min():g} (an accuracy above 1?)"
    means, counts = curve.means, curve.counts
    zero = np.flatnonzero(means <= 0)
    if len(zero):
        return (f"{name}: zero error at D={curve.sizes[zero[0]]:g} (every run perfect): log E is undefined, so no "
                f"power law fits it (a harder test set, or leave that size out)")
    if len(curve.sizes) < 2:
        return (f"{name}: one training-set size (D={curve.sizes[0]:g}): a scaling law needs 2 sizes at least "
                f"(3 for the saturating law)")
    x, y = np.log(curve.sizes), np.log(means)
    slope = np.polyfit(x, y, 1)[0]
    if slope >= 0:
        return (f"{name}: error does not fall with data (log-log slope {slope:+.3f} over D={curve.sizes[0]:g}.."
                f"{curve.sizes[-1]:g}): no decreasing law fits it")
    sd = np.array([r.std(ddof=1) if len(r) > 1 else np.nan for r in curve.runs])
    replicated = counts > 1
    if replicated.any():
        rel = math.sqrt(np.mean((sd[replicated] / means[replicated]) ** 2))   # pooled relative spread
        se = np.where(replicated, sd, rel * means) / np.sqrt(counts)
        for j in range(len(means) - 1):
            rise = means[j + 1] - means[j]
            spread = math.hypot(se[j], se[j + 1])
            if rise > 0.01 * means[j] and rise > Z_RISE * spread:
                z = rise / spread if spread > 0 else math.inf
                return (f"{name}: error rises from {means[j]:.2%} at D={curve.sizes[j]:g} to {means[j + 1]:.2%} at "
                        f"D={curve.sizes[j + 1]:g}, beyond the seeds' noise ({z:.1f} standard errors): not a "
                        f"learning curve, no law fitted")
    else:
        for j in range(len(means) - 1):
            if means[j + 1] > (1 + RISE_NO_SEEDS) * means[j]:
                return (f"{name}: error rises from {means[j]:.2%} at D={curve.sizes[j]:g} to {means[j + 1]:.2%} at "
                        f"D={curve.sizes[j + 1]:g} (more than {RISE_NO_SEEDS:.0%}, with one run per size): not a "
                        f"learning curve, no law fitted")
    return None


@dataclass
class LawFit:
    """One law fitted to one curve: the point estimate, its bootstrap samples and intervals, the
    fit's log-space residual, AICc, and the extrapolation check; or the reason there is none."""

    law: Law
    params: np.ndarray | None = None          # (k,) in law.params order
    boot: np.ndarray | None = None            # (B, k) bootstrap estimates (NaN rows: a failed resample)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    ssr: float = math.nan                     # sum of squared log-space residuals (over the sizes)
    n_sizes: int = 0
    aicc: float = math.nan
    widen: float = 1.0                        # t_df / z: how far the percentile intervals are widened
    extrapolation: dict | None = None         # {size, predicted, observed, rel_error} or {reason}
    reason: str | None = None
    preferred: bool = False

    @property
    def ok(self) -> bool:
        return self.reason is None and self.params is not None

    def value(self, name: str) -> float:
        if not self.ok:
            raise ScalingError(self.reason or f"{self.law.name} law not fitted")
        assert self.params is not None  # ok
        return float(self.params[self.law.params.index(name)])

    @property
    def rmse(self) -> float:
        """Root-mean-square log-space residual: 0.05 is about a 5% miss per size."""
        return math.sqrt(self.ssr / self.n_sizes) if self.n_sizes else math.nan

    def predict(self, d: ArrayLike) -> np.ndarray:
        """The fitted error at sizes `d`."""
        if not self.ok:
            raise ScalingError(self.reason or f"{self.law.name} law not fitted")
        assert self.params is not None  # ok
        return self.law(self.params, np.asarray(d, dtype=float))

    def band(self, d: ArrayLike, level: float = 0.95) -> tuple[np.ndarray, np.ndarray] | None:
        """Pointwise band of the bootstrap curves at sizes `d`: percentiles of log E, widened
        about the fitted curve as the parameters' intervals are (None without samples)."""
        if self.boot is None or not np.isfinite(self.boot).all(-1).any():
            return None
        samples = self.boot[np.isfinite(self.boot).all(-1)]
        assert self.params is not None  # bootstrap samples come with the point estimate
        log_d = np.log(np.asarray(d, dtype=float))
        lo, hi = boot.interval(self.law.log_error(self.params, log_d), self.law.log_error(samples, log_d[None, :]),
                               level, self.widen if math.isfinite(self.widen) else 1.0, axis=0)
        return np.exp(lo), np.exp(hi)


@dataclass
class CurveFit:
    """Every law fitted to one curve; `reason` says why none could be (then `laws` is empty)."""

    curve: Curve
    laws: dict[str, LawFit]
    scheme: str = "none"          # the bootstrap's scheme: seeds, residuals, or none
    n_boot: int = 0
    level: float = 0.95
    reason: str | None = None

    @property
    def preferred(self) -> LawFit | None:
        return next((f for f in self.laws.values() if f.preferred), None)

    def get(self, law: str) -> LawFit:
        """The fit of `law`; a ScalingError with the reason when there is none."""
        if self.reason:
            raise ScalingError(self.reason)
        get_law(law)
        fit = self.laws.get(law)
        if fit is None:
            raise ScalingError(f"{self.curve.name}: the {law} law was not asked for")
        if not fit.ok:
            raise ScalingError(fit.reason or f"{self.curve.name}: no {law} fit")
        return fit


def aicc(ssr: float, n: int, k: int) -> float:
    """Small-sample AIC of a least-squares fit of k parameters to n points (log-space residuals):
    n ln(SSR/n) + 2k + 2k(k+1)/(n-k-1); NaN where it is undefined (n < k + 2)."""
    if n - k - 1 <= 0:
        return math.nan
    return n * math.log(max(ssr, n * 1e-12) / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def _rng(seed: int, key: str) -> np.random.Generator:
    """A curve's own stream: its intervals do not change when other curves join the table."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def pad(curves: list[Curve]) -> tuple[np.ndarray, ...]:
    """log D (N, P), mean errors (N, P), mask (N, P), runs (N, P, S), counts (N, P)."""
    p = max(len(c.sizes) for c in curves)
    s = max(int(c.counts.max()) for c in curves)
    n = len(curves)
    x, mean, runs = np.zeros((n, p)), np.ones((n, p)), np.full((n, p, s), np.nan)
    mask, counts = np.zeros((n, p), dtype=bool), np.zeros((n, p), dtype=int)
    for i, c in enumerate(curves):
        k = len(c.sizes)
        x[i, :k], mean[i, :k], mask[i, :k], counts[i, :k] = np.log(c.sizes), c.means, True, c.counts
        for j, r in enumerate(c.runs):
            runs[i, j, :len(r)] = r
    return x, mean, mask, runs, counts


def fit_curves(curves: list[Curve], laws: tuple[str, ...] | list[str] = DEFAULT_LAWS, n_boot: int = 1000,
               seed: int = 0, level: float = 0.95, extrapolate: bool = True) -> list[CurveFit]:
    """Fit every law in `laws` to every curve: the point fit on the mean error per size, `n_boot`
    bootstrap refits (see lab.scaling.bootstrap for what is resampled), percentile intervals at
    `level`, the extrapolation check, AICc and the preferred law. A degenerate curve gets its
    reason (no numbers); so does a law the curve has too few sizes for. Never raises for data."""
    law_objs = [get_law(name) for name in laws]
    if n_boot < 0:
        raise ScalingError(f"bootstrap samples: {n_boot}; expected 0 or more")
    if not 0 < level < 1:
        raise ScalingError(f"confidence level {level}: expected a number in (0, 1)")
    out = [CurveFit(c, {}, n_boot=n_boot, level=level, reason=check(c)) for c in curves]
    live = [i for i, f in enumerate(out) if f.reason is None]
    if not live:
        return out
    x, mean, mask, runs, counts = pad([curves[i] for i in live])
    y = np.log(mean)
    n_sizes = mask.sum(-1)
    schemes = [boot.scheme_of(counts[j]) if n_boot else "none" for j in range(len(live))]
    for j, i in enumerate(live):
        out[i].scheme = schemes[j]

    point: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for law in law_objs:
        point[law.name] = fit_batch(law, x, y, mask)
    samples = _bootstrap(law_objs, curves, live, x, y, mask, runs, counts, point, schemes, n_boot, seed)
    sizes = np.where(mask, 0.0, 1.0)
    for j, i in enumerate(live):
        sizes[j, :len(curves[i].sizes)] = curves[i].sizes
    held = {law.name: holdout_largest(law, x, mean, mask, sizes) for law in law_objs} if extrapolate else {}

    for j, i in enumerate(live):
        name = curves[i].name
        for law in law_objs:
            n = int(n_sizes[j])
            if n < law.min_sizes:
                out[i].laws[law.name] = LawFit(law, n_sizes=n, reason=(
                    f"{name}: the {law.name} law needs {law.min_sizes} training-set sizes, the curve has {n}"))
                continue
            params, ssr = point[law.name][0][j], float(point[law.name][1][j])
            if not np.all(np.isfinite(params)):
                out[i].laws[law.name] = LawFit(law, n_sizes=n, reason=f"{name}: the {law.name} fit did not converge")
                continue
            fit = LawFit(law, params=params, ssr=ssr, n_sizes=n, aicc=aicc(ssr, n, law.k))
            s = samples.get(law.name)
            if s is not None and np.isfinite(s[j]).all(-1).any():
                fit.boot = s[j]
                df = float((counts[j] - 1).clip(min=0).sum()) if schemes[j] == "seeds" else float(n - law.k)
                fit.widen = boot.widen(df, level)
                lo, hi = boot.interval(params, s[j], level, fit.widen)
                lo = np.maximum(lo, LOWER[law.name])           # b, c, b2 >= 0, as the fits are bounded
                hi = np.minimum(hi, UPPER[law.name])
                fit.ci = {p: (float(lo[q]), float(hi[q])) for q, p in enumerate(law.params)}
            if extrapolate:
                fit.extrapolation = held[law.name][j]
            out[i].laws[law.name] = fit
        _prefer(out[i])
    return out


def _bootstrap(law_objs, curves, live, x, y, mask, runs, counts, point, schemes, n_boot, seed):
    """Bootstrap estimates {law: (N, B, k)} of the live curves, fitted in groups of curves."""
    if n_boot == 0:
        return {}
    out = {law.name: np.full((len(live), n_boot, law.k), np.nan) for law in law_objs}
    rngs = [_rng(seed, curves[i].arch_id or curves[i].name) for i in live]   # residuals: one stream per law
    step = max(1, GROUP_FITS // n_boot)
    seeds = [j for j in range(len(live)) if schemes[j] == "seeds"]
    resid = [j for j in range(len(live)) if schemes[j] == "residuals"]
    for s in range(0, len(seeds), step):
        g = np.array(seeds[s:s + step])
        ys = np.log(boot.resample_seeds(runs[g], counts[g], n_boot, [rngs[j] for j in g]))   # (G, B, P)
        xs, ms = np.broadcast_to(x[g, None, :], ys.shape), np.broadcast_to(mask[g, None, :], ys.shape)
        for law in law_objs:
            out[law.name][g] = fit_batch(law, xs, ys, ms)[0]
    for s in range(0, len(resid), step):
        g = np.array(resid[s:s + step])
        for law in law_objs:
            params = point[law.name][0][g]
            fitted = law.log_error(params, x[g])
            streams = [_rng(seed, f"{curves[live[j]].arch_id or curves[live[j]].name}/{law.name}") for j in g]
            ys = boot.resample_residuals(fitted, y[g] - fitted, mask[g], law.k, n_boot, streams)
            xs, ms = np.broadcast_to(x[g, None, :], ys.shape), np.broadcast_to(mask[g, None, :], ys.shape)
            out[law.name][g] = fit_batch(law, xs, np.where(ms, ys, 0.0), ms)[0]
    return out


def _prefer(fit: CurveFit) -> None:
    """Mark the preferred law: the lowest AICc among the laws that have one (n >= k + 2 sizes);
    when none has, the power law (the simplest) if it was fitted."""
    ok = [f for f in fit.laws.values() if f.ok]
    scored = [f for f in ok if math.isfinite(f.aicc)]
    if scored:
        best: LawFit | None = min(scored, key=lambda f: (f.aicc, f.law.k))
    else:
        best = next((f for f in ok if f.law.name == "power"), ok[0] if ok else None)
    if best is not None:
        best.preferred = True


def fit_curve(sizes, errors, name: str = "curve", laws: tuple[str, ...] | list[str] = DEFAULT_LAWS,
              n_boot: int = 1000, seed: int = 0, level: float = 0.95, **kw) -> CurveFit:
    """Fit one curve given one (size, error) pair per run; a ScalingError with the reason when the
    data admit no law at all (one size, a zero error, an error rising with data)."""
    curve = Curve.from_points(sizes, errors, name=name, **kw)
    fit = fit_curves([curve], laws, n_boot=n_boot, seed=seed, level=level)[0]
    if fit.reason:
        raise ScalingError(fit.reason)
    return fit


__all__ = ["DEFAULT_LAWS", "Curve", "CurveFit", "LawFit", "aicc", "check", "fit_curve", "fit_curves", "pad"]
