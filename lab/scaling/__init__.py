"""Scaling laws of error against training-set size: fits, bootstrap intervals, the extrapolation
check, crossovers between families, and the accuracy-per-compute frontier across studies.

    from lab.scaling import fit_curve
    fit = fit_curve(sizes, errors, name="resnet18")          # one (size, error) pair per run
    sat = fit.get("saturating"); sat.value("b"), sat.ci["b"], sat.extrapolation

Modules, one job each: `laws` (the forms), `fit` (vectorized least squares over a batch of
curves), `bootstrap` (resamples and percentile intervals), `extrapolate` (hold the largest size
out), `curves` (a curve's checks and every law's fit), `crossover` (where two fitted curves
cross). Pure numerics: studies' rows become curves and the fits table in lab.report.fits, the
frontier across studies in lab.report.frontier.
"""

from lab.errors import ScalingError
from lab.scaling.curves import DEFAULT_LAWS, Curve, CurveFit, LawFit, check, fit_curve, fit_curves
from lab.scaling.laws import BROKEN, LAWS, POWER, SATURATING, Law

__all__ = ["BROKEN", "DEFAULT_LAWS", "LAWS", "POWER", "SATURATING", "Curve", "CurveFit", "Law", "LawFit",
           "ScalingError", "check", "fit_curve", "fit_curves"]
