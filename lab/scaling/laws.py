"""The scaling-law forms: error E against training-set size D.

    power       E = a * D^-b                      (a straight line on log-log axes)
    saturating  E = a * D^-b + c                  (Hestness et al. 2017; the form of Zhai et al. 2022:
                                                   c is the irreducible error the curve levels off at)
    broken      E = a * D^-b            for D <= d_break,
                E = a * d_break^(b2-b) * D^-b2  beyond      (two slopes joined at d_break)

Parameters travel as arrays whose last axis holds them in `Law.params` order, so one call
evaluates a batch of curves (or of bootstrap samples) at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lab.errors import ScalingError


@dataclass(frozen=True)
class Law:
    """A law's name, its parameters (in array order), its formula, and the distinct training-set
    sizes a fit needs (one more than that is needed for the extrapolation check)."""

    name: str
    params: tuple[str, ...]
    formula: str
    min_sizes: int

    @property
    def k(self) -> int:
        return len(self.params)

    def log_error(self, params: np.ndarray, log_d: np.ndarray) -> np.ndarray:
        """log E at log D. `params` (..., k) broadcasts against `log_d` (..., M) over the leading axes."""
        p = np.asarray(params, dtype=float)
        x = np.asarray(log_d, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):     # NaN parameters (no fit) give NaN
            log_a, b = np.log(p[..., 0:1]), p[..., 1:2]
            if self.name == "power":
                return log_a - b * x
            if self.name == "saturating":
                return np.logaddexp(log_a - b * x, np.log(np.maximum(p[..., 2:3], 1e-300)))
            b2, xb = p[..., 2:3], np.log(p[..., 3:4])
            return log_a - b * x - (b2 - b) * np.maximum(x - xb, 0.0)

    def __call__(self, params: np.ndarray, d: np.ndarray | float) -> np.ndarray:
        """E at D (see `log_error` for the shapes)."""
        return np.exp(self.log_error(params, np.log(np.asarray(d, dtype=float))))


POWER = Law("power", ("a", "b"), "E = a*D^-b", 2)
SATURATING = Law("saturating", ("a", "b", "c"), "E = a*D^-b + c", 3)
BROKEN = Law("broken", ("a", "b", "b2", "d_break"), "E = a*D^-b, slope -b2 beyond d_break", 4)
LAWS: dict[str, Law] = {law.name: law for law in (POWER, SATURATING, BROKEN)}


def get_law(name: str) -> Law:
    try:
        return LAWS[name]
    except KeyError:
        raise ScalingError(f"unknown law {name!r}: expected one of {', '.join(LAWS)}") from None
