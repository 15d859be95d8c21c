"""Data size as the fidelity of a search (`lab study create --target-size N`).

A trial trains its point on a ladder of nested fractions of the training split, smallest first:
fraction / 3^(rungs-1), ..., fraction / 3, fraction (each a subset of the next, lab.data.split).
After each size the point's error-vs-size curve is fitted (lab.scaling.predict) and its accuracy
predicted at N, with an interval. Successive halving runs over the ladder (lab.study.scheduler,
SizeASHA): from the second size on, a trial goes on to the next size when its optimistic bound
(the interval's upper end) is on a good enough Pareto front among the trials that reached that
size before it; the study ranks its points by the estimate. N may exceed the training split:
then every prediction is an extrapolation, `factor` times beyond the largest size trained.

The noise that sizes the intervals is pooled over the study's trials (lab.scaling.predict.Noise):
every trial with more sizes than the law has parameters adds its residuals.
"""

from __future__ import annotations

import math

from lab.errors import StudyError
from lab.scaling.curves import Curve
from lab.scaling.predict import Noise, Prediction, predict, study_noise

ETA = 3            # each size is ETA times the one before it (the halving's reduction factor)
GRACE = 2          # sizes every trial trains before the first decision: a law needs two
MIN_IMAGES = 20    # the smallest size of a ladder, at least


def ladder(fraction: float, rungs: int, n_train: int, eta: int = ETA) -> list[float]:
    """The nested training fractions a trial climbs, smallest first; StudyError when the smallest would
    hold fewer than MIN_IMAGES of the `n_train` training images."""
    fractions = [fraction / eta ** k for k in range(rungs - 1, -1, -1)]
    smallest = round(fractions[0] * n_train)
    if smallest < MIN_IMAGES:
        raise StudyError(f"--rungs {rungs}: the ladder's smallest size would be {smallest} images ({fractions[0]:.4g} of "
                         f"{n_train}); use fewer --rungs or a larger --fraction (at least {MIN_IMAGES} images)")
    return fractions


def curve_of(number: int, sizes: list[int], accuracies: list[float]) -> Curve:
    """One trial's error-vs-size curve."""
    return Curve.from_points(sizes, [1.0 - a for a in accuracies], name=f"trial {number}", key=str(number))


class SizeFidelity:
    """The study's target size and ladder, and every trial's sizes so far: the pooled noise and each
    trial's prediction at the target come from them."""

    def __init__(self, target: int, fractions: list[float], law: str = "power", level: float = 0.95):
        self.target, self.fractions, self.law, self.level = target, fractions, law, level
        self.curves: dict[int, Curve] = {}
        self._noise: Noise | None = None
        self._last: tuple[tuple, Prediction] | None = None   # the latest prediction and what it was of

    def observe(self, number: int, sizes: list[int], accuracies: list[float]) -> Prediction:
        """Record trial `number`'s sizes and accuracies so far; its prediction at the target."""
        if not sizes or len(sizes) != len(accuracies) or any(a is None or not math.isfinite(a) for a in accuracies):
            return Prediction(f"trial {number}", float(self.target), reason=f"trial {number}: no accuracy at its sizes")
        key = (number, tuple(sizes), tuple(accuracies))
        if self._last is not None and self._last[0] == key and self._noise is not None:
            return self._last[1]   # the scheduler asked, now the searcher settling the trial asks again
        curve = curve_of(number, sizes, accuracies)
        if number not in self.curves or len(self.curves[number].sizes) != len(curve.sizes):
            self._noise = None
        self.curves[number] = curve
        prediction = predict([curve], self.target, law=self.law, noise=self.noise(), level=self.level)[0]
        self._last = (key, prediction)
        return prediction

    def noise(self) -> Noise:
        """The log-error noise pooled over the trials seen (with the prior of lab.scaling.predict), and the
        law's drift measured on those that have a size to spare."""
        if self._noise is None:
            self._noise = study_noise(list(self.curves.values()), self.law, self.level)
        return self._noise

    def fraction_at(self, rung: int) -> float:
        return self.fractions[rung - 1]


def prediction_columns(p: Prediction, target: int) -> dict:
    """A trial row's prediction columns (TRIAL_SCHEMA's pred_*)."""
    if not p.ok:
        return {"target_size": target}
    lo, hi = p.accuracy_interval
    return {"target_size": target, "pred_top1": p.accuracy, "pred_top1_lo": lo, "pred_top1_hi": hi, "pred_law": p.law}
