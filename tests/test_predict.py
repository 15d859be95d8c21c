"""Predictions at a size not trained (lab.scaling.predict), against closed forms and the model that
generated the data."""

import math

import numpy as np
import pytest

from lab.errors import ScalingError
from lab.scaling.curves import Curve
from lab.scaling.predict import PRIOR_DOF, PRIOR_SD, Noise, calibrate, predict, residuals

SIZES = np.array([150.0, 450.0, 1350.0])


def power_curve(a: float, b: float, sizes=SIZES, noise=None, name="c") -> Curve:
    e = a * sizes ** -b
    if noise is not None:
        e = e * np.exp(noise)
    return Curve.from_points(sizes, e, name=name)


def test_the_estimate_is_the_least_squares_line_in_log_log_space():
    rng = np.random.default_rng(1)
    curve = power_curve(3.0, 0.5, noise=rng.normal(0, 0.1, 3))
    (p,) = predict([curve], 12_000)
    slope, intercept = np.polyfit(np.log(SIZES), np.log(curve.means), 1)   # the independent reference
    assert p.error == pytest.approx(math.exp(intercept + slope * math.log(12_000)), rel=1e-9)
    assert p.lo < p.error < p.hi and p.law == "power" and p.factor == pytest.approx(12_000 / 1350)
    assert p.accuracy == pytest.approx(1 - p.error) and p.accuracy_interval == (1 - p.hi, 1 - p.lo)


def test_noise_pools_the_prior_with_the_residuals_in_closed_form():
    rng = np.random.default_rng(2)
    curves = [power_curve(2.0, 0.4, noise=rng.normal(0, 0.05, 3), name=f"c{i}") for i in range(4)]
    ssr, dof = residuals(curves)
    own = [float(np.sum((np.log(c.means) - np.polyval(np.polyfit(np.log(SIZES), np.log(c.means), 1), np.log(SIZES))) ** 2))
           for c in curves]
    assert ssr == pytest.approx(own) and list(dof) == [1.0] * 4
    noise = Noise.pool(ssr, dof)
    assert noise.dof == PRIOR_DOF + 4
    assert noise.sd == pytest.approx(math.sqrt((PRIOR_DOF * PRIOR_SD**2 + sum(own)) / (PRIOR_DOF + 4)))


def test_intervals_cover_new_runs_as_often_as_their_level_when_the_law_holds():
    # the data's own model: power-law curves with log-normal run noise of sd 0.1, one run per size
    rng = np.random.default_rng(3)
    n, target, sd = 300, 4050.0, 0.1
    a, b = rng.uniform(0.5, 3, n), rng.uniform(0.2, 0.8, n)
    curves = [power_curve(a[i], b[i], noise=rng.normal(0, sd, 3), name=f"c{i}") for i in range(n)]
    predictions = predict(curves, target)
    measured = a * target ** -b * np.exp(rng.normal(0, sd, n))
    covered = np.mean([p.lo <= m <= p.hi for p, m in zip(predictions, measured)])
    assert 0.91 <= covered <= 0.99
    assert predictions[0].noise.sd == pytest.approx(sd, rel=0.15)


def test_auto_prefers_the_law_that_predicts_the_largest_size():
    sizes = np.array([100.0, 300, 900, 2700, 8100])
    saturating = Curve.from_points(sizes, 2.0 * sizes ** -0.7 + 0.02, name="sat")
    (p,) = predict([saturating], 30_000, law="auto")
    assert p.law == "saturating"
    assert p.error == pytest.approx(2.0 * 30_000 ** -0.7 + 0.02, rel=0.02)
    (few,) = predict([power_curve(2, 0.5)], 30_000, law="auto")   # too few sizes to check a 3-parameter law
    assert few.law == "power"


def test_a_curve_that_does_not_fall_predicts_no_gain():
    flat = Curve.from_points(SIZES, [0.30, 0.34, 0.32], name="flat")
    (p,) = predict([flat], 40_000)
    assert p.error == pytest.approx(math.exp(np.mean(np.log([0.30, 0.34, 0.32]))))


def test_reasons_instead_of_numbers():
    one = Curve.from_points([100.0], [0.4], name="one")
    bad = Curve.from_points([100.0, 300.0], [0.4, 1.5], name="bad")
    p_one, p_bad = predict([one, bad], 1000)
    assert not p_one.ok and "needs 2 sizes" in p_one.reason
    assert not p_bad.ok and "[0, 1]" in p_bad.reason
    with pytest.raises(ScalingError, match="target sizes"):
        predict([one], 0)
    with pytest.raises(ScalingError, match="law 'cubic'"):
        predict([one], 10, law="cubic")


def test_drift_is_the_excess_of_the_curves_own_extrapolation_misses():
    # saturating curves (E = a D^-b + c) bend away from any power law: fitted without their largest
    # size, the power law misses it by more than the noise explains
    sizes = np.array([100.0, 300.0, 900.0])
    rng = np.random.default_rng(4)
    curves = [Curve.from_points(sizes, (a * sizes ** -0.6 + c) * np.exp(rng.normal(0, 0.01, 3)), name=f"s{i}")
              for i, (a, c) in enumerate(zip(rng.uniform(2, 4, 12), rng.uniform(0.06, 0.1, 12)))]
    noise = Noise(0.01, 1000.0)    # the run noise the curves were drawn with
    calibrated = calibrate(curves, noise)
    two = [Curve(c.name, c.sizes[:2], c.runs[:2]) for c in curves]
    held = predict(two, 900.0, noise=Noise(noise.sd, noise.dof))
    misses = [np.polyval(np.polyfit(np.log(sizes[:2]), np.log(c.means[:2]), 1), np.log(900)) - np.log(c.means[2])
              for c in curves]    # the independent reference: the line through the two smaller sizes
    excess = sum(m**2 for m in misses) - sum(p.log_sd**2 for p in held)
    assert calibrated.drift == pytest.approx(math.sqrt(max(excess, 0) / (12 * math.log(3) ** 2)), rel=1e-6)
    assert calibrated.drift > 0 and (calibrated.sd, calibrated.dof) == (noise.sd, noise.dof)
    near, far = (predict([curves[0]], n, noise=calibrated)[0] for n in (900.0, 30_000.0))
    plain = predict([curves[0]], 30_000.0, noise=noise)[0]
    assert near.log_sd < far.log_sd and plain.log_sd < far.log_sd   # drift spreads far predictions only
    assert far.error == pytest.approx(plain.error)                    # and leaves the estimate alone


def test_no_drift_without_a_size_to_spare():
    curves = [power_curve(2, 0.5, sizes=np.array([100.0, 300.0]), name=f"c{i}") for i in range(3)]
    assert calibrate(curves, Noise()).drift == 0.0


def test_a_curve_still_taking_off_is_flagged():
    # near chance at the small sizes, then falling fast (the synthetic task at 4 epochs): log-log slopes
    # -0.13 then -0.25 between the sizes; a power law fitted there under-predicts the gain
    taking_off = Curve.from_points([1180.0, 3200.0, 9600.0], [0.89, 0.781, 0.592], name="up")
    settling = Curve.from_points([150.0, 400.0, 1200.0], [0.278, 0.086, 0.044], name="down")
    straight = power_curve(2.0, 0.5)
    p_up, p_down, p_straight = predict([taking_off, settling, straight], 32_000)
    assert p_up.accelerating and not p_down.accelerating and not p_straight.accelerating
    assert not predict([power_curve(2.0, 0.5, sizes=SIZES[:2])], 10_000)[0].accelerating   # two sizes: no shape
