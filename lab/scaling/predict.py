"""Predictions at a training-set size not trained: each curve's law, fitted on the sizes it was
measured at, evaluated at a target size D*, with a prediction interval for one run trained there.

    from lab.scaling.predict import predict
    (p,) = predict([curve], 40_000)              # p.error, p.lo, p.hi, p.accuracy, p.factor

The noise: one run's log error scatters about its curve with a standard deviation sigma shared by
the curves of one study (the same data, recipe and seeds). A curve of 3 sizes leaves one degree of
freedom to estimate it, so sigma is pooled over the curves (`Noise.pool`), with a weak prior
(PRIOR_SD, worth PRIOR_DOF degrees of freedom) so that a study's first curves get an interval too:
sigma^2 = (PRIOR_DOF * PRIOR_SD^2 + sum SSR) / (PRIOR_DOF + sum (n - k)), the conjugate update of a
scaled inverse-chi-square prior. The interval is a parametric bootstrap: the fitted curve plus
noise at the measured sizes (sigma / sqrt(runs) for a mean of several seeds), refitted and
evaluated at D*, plus one run's own noise there; its percentile interval is widened by t_df / z
(df the pooled degrees of freedom).

Noise covers the training noise and the fit's uncertainty, not a law that bends beyond the sizes
measured. For that, `drift`: the log-error standard deviation, per unit of log size beyond the
largest size measured, of the misses the law makes on the curves' own data: each curve with a
size to spare is fitted without its largest size and predicts it; the misses beyond what the noise
explains give drift^2 = max(0, sum(miss^2 - s^2) / sum(d^2)), d the log distance predicted over,
s the noise's predictive sd (`calibrate`). A prediction d* beyond its largest size adds drift * d*
of spread. It is measured on the sizes the study has (no full-data result goes into it);
`lab scale extrapolate` measures how often the intervals cover.

Which law: "power" (E = a D^-b; from 2 sizes) by default. "auto" picks, per curve, the law that
best predicts the curve's largest size from its smaller ones (the extrapolation check, in the
spirit of Alabdulmohsin et al. 2022, who score laws by how they extrapolate), among the laws
the curve has enough sizes for; without enough sizes for the check, the power law.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from lab.errors import ScalingError
from lab.scaling import bootstrap as boot
from lab.scaling.curves import Curve, pad
from lab.scaling.extrapolate import holdout_largest
from lab.scaling.fit import fit_batch
from lab.scaling.laws import LAWS, get_law

PRIOR_SD = 0.10      # a run's log-error noise before a study has residuals (10%: MNIST-scale seed-to-seed spread)
PRIOR_DOF = 2.0      # what the prior weighs, in degrees of freedom
ERROR_FLOOR = 1e-3   # a perfect run (error 0) counts as this error: log E needs a positive error
N_BOOT = 400
LAW_CHOICES = ("power", "saturating", "broken", "auto")


@dataclass(frozen=True)
class Noise:
    """The log-space standard deviation of one run about its curve, its degrees of freedom, and the
    drift: the extra log-space spread per unit of log size a prediction lies beyond its data."""

    sd: float = PRIOR_SD
    dof: float = PRIOR_DOF
    drift: float = 0.0

    @classmethod
    def pool(cls, ssr: list[float] | np.ndarray, dof: list[float] | np.ndarray, prior_sd: float = PRIOR_SD,
             prior_dof: float = PRIOR_DOF) -> Noise:
        """The prior updated with curves' residual sums of squares and their degrees of freedom."""
        s, d = np.asarray(ssr, float), np.asarray(dof, float)
        keep = np.isfinite(s) & (d > 0)
        total_dof = prior_dof + float(d[keep].sum())
        return cls(math.sqrt((prior_dof * prior_sd**2 + float(s[keep].sum())) / total_dof), total_dof)


@dataclass
class Prediction:
    """A curve's predicted error at `size` (one run trained there) and its interval; `reason` when
    there is none. `sizes` are the sizes the fit rests on."""

    name: str
    size: float
    error: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    law: str | None = None
    sizes: tuple[float, ...] = ()
    level: float = 0.95
    noise: Noise = field(default_factory=Noise)
    log_sd: float = math.nan          # the spread of the prediction's bootstrap samples, in log error
    accelerating: bool = False        # the curve still takes off (see `accelerating`): the law under-predicts
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def accuracy(self) -> float:
        return 1.0 - self.error

    @property
    def accuracy_interval(self) -> tuple[float, float]:
        return 1.0 - self.hi, 1.0 - self.lo

    @property
    def d_max(self) -> float:
        return max(self.sizes) if self.sizes else math.nan

    @property
    def factor(self) -> float:
        """How far the target lies beyond the largest size measured (1: inside the measured range)."""
        return max(1.0, self.size / self.d_max) if self.sizes else math.nan


def residuals(curves: list[Curve], law: str = "power") -> tuple[np.ndarray, np.ndarray]:
    """Each curve's log-space residual sum of squares under `law` (on its means, each size weighted
    by its runs, so it estimates one run's noise) and its degrees of freedom (points - parameters);
    NaN and 0 for a curve that cannot be fitted."""
    ssr, dof = np.full(len(curves), np.nan), np.zeros(len(curves))
    fit_law = get_law(law)
    live = [i for i, c in enumerate(curves) if usable(c) is None and len(c.sizes) >= fit_law.min_sizes]
    if not live:
        return ssr, dof
    x, y, mask, counts = _arrays([curves[i] for i in live])
    params, _ = fit_batch(fit_law, x, y, mask)
    fitted = fit_law.log_error(params, x)
    r = np.where(mask, (y - fitted) ** 2 * counts, 0.0)
    for j, i in enumerate(live):
        n = int(mask[j].sum())
        if n > fit_law.k and np.isfinite(params[j]).all():
            ssr[i], dof[i] = float(r[j].sum()), float(n - fit_law.k)
    return ssr, dof


def study_noise(curves: list[Curve], law: str = "power", level: float = 0.95, seed: int = 0) -> Noise:
    """The noise pooled over `curves` (`law`'s residuals; power for "auto") with its drift calibrated on them."""
    fit_law = "power" if law == "auto" else law
    return calibrate(curves, Noise.pool(*residuals(curves, fit_law)), fit_law, level, seed)


def calibrate(curves: list[Curve], noise: Noise, law: str = "power", level: float = 0.95, seed: int = 0) -> Noise:
    """`noise` with its drift estimated from the curves' own extrapolations (see the module docstring):
    each curve with more sizes than `law` needs predicts its largest size from the others. No such
    curve: drift 0."""
    need = get_law(law).min_sizes + 1
    held = [c for c in curves if usable(c) is None and len(c.sizes) >= need]
    if not held:
        return Noise(noise.sd, noise.dof)
    smaller = [Curve(c.name, c.sizes[:-1], c.runs[:-1], key=c.key) for c in held]
    quiet = Noise(noise.sd, noise.dof)
    predictions = predict(smaller, [float(c.sizes[-1]) for c in held], law=law, noise=quiet, level=level, seed=seed)
    excess, spread = 0.0, 0.0
    for c, p in zip(held, predictions):
        if not p.ok or not math.isfinite(p.log_sd):
            continue
        miss = math.log(p.error) - math.log(max(float(c.means[-1]), ERROR_FLOOR))
        excess += miss**2 - p.log_sd**2
        spread += math.log(c.sizes[-1] / c.sizes[-2]) ** 2
    drift = math.sqrt(max(0.0, excess) / spread) if spread > 0 else 0.0
    return Noise(noise.sd, noise.dof, drift)


def predict(curves: list[Curve], size: float | list[float], law: str = "power", noise: Noise | None = None,
            level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> list[Prediction]:
    """Every curve's prediction at `size` (one target, or one per curve). `noise`: the study's pooled
    noise; None pools it over these curves. Never raises for data: a curve that cannot be fitted gets
    its reason."""
    if law not in LAW_CHOICES:
        raise ScalingError(f"law {law!r}: expected one of {', '.join(LAW_CHOICES)}")
    if not 0 < level < 1:
        raise ScalingError(f"confidence level {level}: expected a number in (0, 1)")
    targets = [float(size)] * len(curves) if isinstance(size, (int, float)) else [float(s) for s in size]
    if len(targets) != len(curves) or any(not t > 0 for t in targets):
        raise ScalingError(f"target sizes {size!r}: expected one positive size, or one per curve")
    if noise is None:
        noise = study_noise(curves, law, level, seed)
    laws = [_choose(c, law) for c in curves]
    out = [Prediction(c.name, t, sizes=tuple(float(s) for s in c.sizes), level=level, noise=noise, law=lw,
                      accelerating=accelerating(c)) for c, t, lw in zip(curves, targets, laws)]
    for i, c in enumerate(curves):
        reason = usable(c)
        if reason is None and len(c.sizes) < get_law(laws[i]).min_sizes:
            reason = f"{c.name}: the {laws[i]} law needs {get_law(laws[i]).min_sizes} sizes, the curve has {len(c.sizes)}"
        out[i].reason = reason
    for name in sorted({lw for lw, p in zip(laws, out) if p.ok}):
        idx = [i for i, p in enumerate(out) if p.ok and laws[i] == name]
        _predict_group(LAWS[name], [curves[i] for i in idx], [out[i] for i in idx], noise, level, n_boot, seed)
    return out


def usable(curve: Curve) -> str | None:
    """Why `curve` cannot be extrapolated (None when it can): no runs, or a size or error that is not
    a number in range. Unlike a scaling fit (lab.scaling.curves.check), a curve whose error does not
    fall is kept: its power law is flat (b = 0), which predicts no gain from more data."""
    if not len(curve.sizes) or curve.n_points == 0:
        return f"{curve.name}: no runs"
    if not np.all(np.isfinite(curve.sizes)) or np.any(curve.sizes <= 0):
        return f"{curve.name}: training-set sizes must be positive numbers"
    errors = np.concatenate(curve.runs)
    if not np.all(np.isfinite(errors)) or np.any(errors < 0) or np.any(errors > 1):
        return f"{curve.name}: errors must be numbers in [0, 1]"
    return None


ACCELERATION = 1.5   # the last pair of sizes' log-log slope this many times the first pair's: still taking off


def accelerating(curve: Curve) -> bool:
    """Whether the curve's error falls faster between its two largest sizes than between its two
    smallest (by ACCELERATION x in log-log slope): a curve still taking off (small runs near chance, or
    too few steps), before the region where a power law holds. A power law fitted to it under-predicts
    the gain from more data. False with fewer than 3 sizes."""
    if len(curve.sizes) < 3 or usable(curve) is not None:
        return False
    x, y = np.log(curve.sizes), np.log(np.maximum(curve.means, ERROR_FLOOR))
    first, last = (y[1] - y[0]) / (x[1] - x[0]), (y[-1] - y[-2]) / (x[-1] - x[-2])
    return bool(last < 0 and last < ACCELERATION * min(first, 0.0) - 1e-12)


def _choose(curve: Curve, law: str) -> str:
    """The law to predict with: `law`, or for "auto" the one that best predicts the curve's largest
    size from its smaller ones (only laws with enough sizes for that check compete)."""
    if law != "auto":
        return law
    if usable(curve) is not None:
        return "power"
    x, y, mask, _ = _arrays([curve])
    best, best_miss = "power", math.inf
    for candidate in LAWS.values():
        if len(curve.sizes) < candidate.min_sizes + 1:
            continue
        held = holdout_largest(candidate, x, np.exp(y), mask)[0]
        miss = abs(math.log1p(held["rel_error"])) if "rel_error" in held else math.inf
        if miss < best_miss - 1e-12:
            best, best_miss = candidate.name, miss
    return best


def _arrays(curves: list[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """log D, log mean error (floored at ERROR_FLOOR), mask and runs per size, each (N, P), padded."""
    x, mean, mask, _, counts = pad(curves)
    return x, np.log(np.maximum(mean, ERROR_FLOOR)), mask, counts.astype(float)


def _predict_group(law, curves: list[Curve], out: list[Prediction], noise: Noise, level: float, n_boot: int,
                   seed: int) -> None:
    x, y, mask, counts = _arrays(curves)
    params, _ = fit_batch(law, x, y, mask)
    target = np.log(np.array([p.size for p in out]))[:, None]
    point = law.log_error(params, target)[:, 0]                       # (N,)
    # each curve its own stream: its interval does not depend on the other curves of the batch
    rngs = [np.random.default_rng([seed, zlib.crc32(c.name.encode()), len(c.sizes)]) for c in curves]
    eps = np.stack([g.standard_normal((n_boot, x.shape[1] + 2)) for g in rngs])   # (N, B, P + 2)
    fitted = law.log_error(params, x)                                  # (N, P)
    scale = noise.sd / np.sqrt(np.maximum(counts, 1))
    ys = fitted[:, None, :] + scale[:, None, :] * eps[..., :-2]
    ms = np.broadcast_to(mask[:, None, :], ys.shape)
    bp, _ = fit_batch(law, np.broadcast_to(x[:, None, :], ys.shape), np.where(ms, ys, 0.0), ms)   # (N, B, k)
    samples = law.log_error(bp, np.broadcast_to(target[:, None, :], (*bp.shape[:2], 1)))[..., 0]
    samples = samples + noise.sd * eps[..., -2]                        # one run's own noise at the target
    beyond = np.maximum(target[:, 0] - np.where(mask, x, -np.inf).max(1), 0.0)   # log distance past the data
    samples = samples + noise.drift * beyond[:, None] * eps[..., -1]   # the law's drift that far out
    lo, hi = boot.interval(point, samples, level, boot.widen(noise.dof, level), axis=1)
    with np.errstate(invalid="ignore"):
        spread = np.nanstd(samples, axis=1)
    for i, p in enumerate(out):
        if not np.isfinite(point[i]):
            p.reason = f"{p.name}: the {law.name} fit failed"
            continue
        p.error = float(min(math.exp(point[i]), 1.0))
        p.lo, p.hi = float(min(math.exp(lo[i]), 1.0)), float(min(math.exp(hi[i]), 1.0))
        p.log_sd = float(spread[i])


__all__ = ["ACCELERATION", "ERROR_FLOOR", "LAW_CHOICES", "N_BOOT", "PRIOR_DOF", "PRIOR_SD", "Noise", "Prediction", "accelerating",
           "calibrate", "predict", "residuals", "study_noise", "usable"]
