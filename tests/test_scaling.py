"""Scaling-law fits: known parameters come back from noisy synthetic curves, the bootstrap
intervals cover the truth at about their nominal rate, degenerate data give a message instead of
a number, the vectorized fitter matches a multi-start scipy fit, and `lab scale fit|frontier` and
the dashboard's scaling view work on synthetic study folders."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from page_json import figures_of, traces, values

from lab.cli.main import main
from lab.dashboard.synthetic import (
    SCALING_LAWS,
    write_scaling_study,
    write_synthetic_study,
)
from lab.errors import ScalingError
from lab.pareto import pareto_mask
from lab.report.fits import CROSSOVER_SCHEMA, FIT_SCHEMA
from lab.report.frontier import frontier
from lab.scaling import Curve, fit_curve, fit_curves
from lab.scaling.crossover import crossing, crossovers
from lab.scaling.fit import fit_batch
from lab.scaling.laws import BROKEN, POWER, SATURATING
from lab.study.tables import read_studies

SIZES = 100 * 2.0 ** np.arange(8)          # 100 .. 12,800 training images
BADNET = "badnet"      # a made-up point of the synthetic scaling study: named as the study's --archs named it


def draws(law, params, seeds: int, noise: float, rng: np.random.Generator,
          sizes=SIZES) -> tuple[np.ndarray, np.ndarray]:
    """One run per (size, seed): the law's error times exp(N(0, noise))."""
    d = np.repeat(sizes, seeds)
    return d, law(np.asarray(params), d) * np.exp(rng.normal(0, noise, d.size))


# --- recovering known parameters -------------------------------------------------------------

def test_power_law_recovers_its_parameters():
    rng = np.random.default_rng(0)
    d, e = draws(POWER, [3.0, 0.4], seeds=3, noise=0.03, rng=rng)
    fit = fit_curve(d, e, name="p", laws=("power",), n_boot=500)
    power = fit.get("power")
    assert fit.scheme == "seeds"
    assert abs(power.value("b") / 0.4 - 1) < 0.05 and abs(power.value("a") / 3.0 - 1) < 0.15
    lo, hi = power.ci["b"]
    assert lo < 0.4 < hi and hi - lo < 0.1
    exact = fit_curve(SIZES, POWER(np.array([3.0, 0.4]), SIZES), laws=("power",), n_boot=0).get("power")
    assert exact.value("b") == pytest.approx(0.4, abs=1e-12) and exact.ssr < 1e-20


def test_saturating_law_recovers_b_within_5pct_and_c_inside_its_interval():
    rng = np.random.default_rng(1)
    truth = {"a": 2.0, "b": 0.5, "c": 0.05}
    d, e = draws(SATURATING, list(truth.values()), seeds=5, noise=0.015, rng=rng)
    fit = fit_curve(d, e, name="sat", n_boot=1000)
    sat = fit.get("saturating")
    assert abs(sat.value("b") / truth["b"] - 1) < 0.05
    assert sat.ci["c"][0] <= truth["c"] <= sat.ci["c"][1]
    assert sat.ci["b"][0] <= truth["b"] <= sat.ci["b"][1]
    assert sat.preferred and not fit.get("power").preferred          # 8 sizes: AICc sees the plateau
    # the extrapolation check: the saturating law predicts the held-out largest size, the power law overshoots
    assert abs(sat.extrapolation["rel_error"]) < 0.05
    assert fit.get("power").extrapolation["rel_error"] < -0.05
    assert sat.extrapolation["size"] == SIZES[-1]
    exact = fit_curve(SIZES, SATURATING(np.array([2.0, 0.5, 0.05]), SIZES), n_boot=0).get("saturating")
    assert np.allclose([exact.value(p) for p in "abc"], [2.0, 0.5, 0.05], rtol=1e-6)


def test_broken_law_finds_its_break():
    params = np.array([3.0, 0.3, 0.8, 1000.0])
    sizes = 100 * 1.5 ** np.arange(10)
    exact = fit_curve(sizes, BROKEN(params, sizes), n_boot=0).get("broken")
    assert exact.value("b") == pytest.approx(0.3, abs=0.01) and exact.value("b2") == pytest.approx(0.8, abs=0.02)
    assert exact.value("d_break") == pytest.approx(1000, rel=0.1) and exact.rmse < 0.01


@pytest.mark.parametrize("seeds, sizes", [(4, SIZES), (1, SIZES)])
def test_intervals_cover_the_truth_at_about_their_nominal_rate(seeds, sizes):
    """200 independent noisy curves fitted as one batch: the 95% intervals of b and c cover the
    truth in 85-99% of them (seeds: resampled within sizes; one run per size: residuals)."""
    rng = np.random.default_rng(7)
    truth = np.array([2.0, 0.5, 0.05])
    curves = [Curve.from_points(*draws(SATURATING, truth, seeds, 0.02, rng, sizes), name=f"c{i}")
              for i in range(200)]
    fits = fit_curves(curves, laws=("saturating",), n_boot=400, seed=3)
    assert {f.scheme for f in fits} == {"seeds" if seeds > 1 else "residuals"}
    sat = [f.laws["saturating"] for f in fits]
    assert all(s.ok for s in sat)
    for k, p in ((1, "b"), (2, "c")):
        cover = np.mean([s.ci[p][0] <= truth[k] <= s.ci[p][1] for s in sat])
        assert 0.85 <= cover <= 0.99, (p, cover)


def test_a_batch_of_padded_curves_fits_each_as_alone():
    rng = np.random.default_rng(2)
    long = Curve.from_points(*draws(SATURATING, [2.0, 0.5, 0.05], 3, 0.02, rng), name="long")
    short = Curve.from_points(*draws(SATURATING, [1.0, 0.3, 0.02], 2, 0.02, rng, SIZES[:5]), name="short")
    together = fit_curves([long, short], n_boot=100, seed=5)
    for curve, fit in zip([long, short], together):
        alone = fit_curves([curve], n_boot=100, seed=5)[0]
        for law in ("power", "saturating", "broken"):
            assert np.allclose(fit.laws[law].params, alone.laws[law].params)
            assert np.allclose(fit.laws[law].boot, alone.laws[law].boot, equal_nan=True)   # per-curve streams


def test_the_vectorized_saturating_fit_matches_a_multistart_scipy_fit():
    """The profile + Levenberg-Marquardt fit reaches the residual of scipy's bounded least squares
    from 18 starts (or a lower one) on varied curves."""
    from scipy.optimize import least_squares

    rng = np.random.default_rng(11)
    d = np.array([100, 300, 1000, 3000, 10000, 30000.0])
    x = np.log(d)
    ys = np.array([np.log(SATURATING(np.array([rng.uniform(0.5, 5), rng.uniform(0.2, 1.2), rng.uniform(0, 0.1)]), d)
                          * np.exp(rng.normal(0, 0.03, d.size))) for _ in range(24)])
    _, ssr = fit_batch(SATURATING, x, ys)
    for y, ours in zip(ys, ssr):
        cap = 0.999 * np.exp(y).min()
        best = math.inf
        for c0 in np.linspace(0, 0.98 * cap, 6):
            for b0 in (0.1, 0.5, 1.5):
                r = least_squares(lambda t: y - np.log(np.exp(t[0] - t[1] * x) + t[2]),
                                  [y[0] + b0 * x[0], b0, c0], bounds=([-60, 0, 0], [60, 3, cap]))
                best = min(best, 2 * r.cost)
        assert ours <= best * (1 + 1e-4) + 1e-12


# --- degenerate input: a message, not a number -----------------------------------------------

@pytest.mark.parametrize("sizes, errors, says", [
    ([1000], [0.1], "one training-set size (D=1000)"),
    ([1000, 1000, 1000], [0.1, 0.12, 0.11], "one training-set size"),
    ([100, 1000, 10000], [0.3, 0.1, 0.0], "zero error at D=10000"),
    ([100, 1000, 10000], [0.1, 0.2, 0.3], "error does not fall with data"),
    ([100, 100, 1000, 1000, 10000, 10000], [0.30, 0.31, 0.10, 0.101, 0.20, 0.202], "error rises from 10.05% at D=1000"),
    ([100, 1000, 10000], [0.3, 0.1, 0.15], "error rises from 10.00% at D=1000 to 15.00%"),
    ([100, 1000], [0.3, -0.1], "negative error"),
])
def test_degenerate_curves_say_what_is_wrong(sizes, errors, says):
    with pytest.raises(ScalingError, match=re.escape(says)) as e:
        fit_curve(sizes, errors, name="vit_tiny", n_boot=50)
    assert str(e.value).startswith("vit_tiny: ")


def test_noise_within_the_seeds_spread_is_not_a_rise_and_too_few_sizes_name_the_law():
    # a 1% rise at the plateau, well inside the seeds' spread: fitted, not refused
    fit = fit_curve([100, 100, 1000, 1000, 10000, 10000], [0.30, 0.33, 0.10, 0.12, 0.101, 0.121], name="flat",
                    n_boot=50)
    assert fit.get("power").value("b") > 0
    two = fit_curve([100, 1000], [0.3, 0.1], name="two", n_boot=0)
    assert two.get("power").value("b") == pytest.approx(math.log10(3))
    with pytest.raises(ScalingError, match="two: the saturating law needs 3 training-set sizes, the curve has 2"):
        two.get("saturating")
    assert two.get("power").preferred and two.get("power").extrapolation["reason"].startswith("the power law needs 3")
    with pytest.raises(ScalingError, match="unknown law 'cubic'"):
        fit_curves([Curve.from_points([1, 2], [0.2, 0.1])], laws=("cubic",))


# --- crossovers ------------------------------------------------------------------------------

def test_crossover_size_and_interval_and_none_when_parallel():
    rng = np.random.default_rng(4)
    conv = Curve.from_points(*draws(POWER, [1.2, 0.35], 4, 0.02, rng), name="resnet", family="resnet")
    vit = Curve.from_points(*draws(POWER, [6.0, 0.6], 4, 0.02, rng), name="vit", family="vit")
    twin = Curve.from_points(*draws(POWER, [2.4, 0.35], 4, 0.02, rng), name="resnet-b", family="resnet2")
    fits = fit_curves([conv, vit, twin], laws=("power",), n_boot=400)
    found = {(c.leader.curve.name, c.overtaker.curve.name): c for c in crossovers(fits)}
    c = found[("resnet", "vit")]
    truth = 5 ** 4                                          # 1.2 n^-0.35 = 6 n^-0.6 at n = 625
    assert c.lo <= truth <= c.hi and abs(c.size / truth - 1) < 0.2 and c.p_cross > 0.9
    assert c.error == pytest.approx(POWER(np.array([1.2, 0.35]), c.size), rel=0.05)
    assert ("resnet", "resnet-b") not in found and ("resnet-b", "resnet") not in found   # parallel: no crossing
    # a crossing beyond SPAN x the largest size is not reported
    assert crossing(fits[0].get("power"), fits[1].get("power"), 2000, 50000) is None


# --- the CLI and the study table -------------------------------------------------------------

@pytest.fixture(scope="module")
def scaling_root(tmp_path_factory):
    """A synthetic scaling study (resnet18 and swin_t at 6 fractions x 3 seeds) plus a made-up
    architecture whose error rises with data."""
    root = tmp_path_factory.mktemp("scale") / "studies"
    laws = {**SCALING_LAWS, "badnet": (0.05, -0.2, 0.0)}
    write_scaling_study(root / "sc", laws=laws, seeds=3, seed=0)
    return root


def test_scale_fit_prints_the_table_and_writes_it(scaling_root, capsys):
    assert main(["scale", "fit", "sc", "--root", str(scaling_root), "--bootstrap", "300"]) == 0
    out = capsys.readouterr().out
    assert "test top-1 error against n_train, 300 bootstrap samples (seeds), 95% intervals" in out
    for arch in ("resnet18@28px,w=0.25", "swin_t@28px,w=0.25"):
        assert arch in out
    assert re.search(rf"^{BADNET}\s.*\s-\s+error does not fall with data", out, re.M)    # its row, with the reason
    assert re.search(r"resnet18@28px,w=0\.25 \(resnet\)\s+swin_t@28px,w=0\.25 \(swin\)\s+\d", out)   # a crossover

    table = pq.read_table(scaling_root / "sc" / "scaling_fits.parquet")
    assert table.schema.equals(FIT_SCHEMA)
    rows = table.to_pandas()
    bad = rows[rows["arch"] == BADNET]
    assert len(bad) == 1 and bad["law"].isna().all() and bad["b"].isna().all()
    assert bad["reason"].iloc[0].startswith(f"{BADNET}: error does not fall with data (log-log slope +0.1")
    good = rows[rows["arch"] != BADNET]
    assert set(good["law"]) == {"power", "saturating", "broken"}
    assert (good.groupby("arch")["preferred"].sum() == 1).all()
    sat = good[good["law"] == "saturating"].set_index("arch")
    for arch, (a, b, c) in SCALING_LAWS.items():
        r = sat.loc[arch]
        assert r.b_lo <= r.b <= r.b_hi and r.c_lo <= r.c <= r.c_hi
        assert r.n_sizes == 6 and r.n_points == 18 and r.extrap_size == 4500 and r.bootstrap == "seeds"
        assert r.extrap_rel_error == pytest.approx(r.extrap_predicted / r.extrap_observed - 1)
    cross = pq.read_table(scaling_root / "sc" / "scaling_crossovers.parquet")
    assert cross.schema.equals(CROSSOVER_SCHEMA) and cross.num_rows == 1
    c = cross.to_pylist()[0]
    assert c["leader"].startswith("resnet18") and c["overtaker"].startswith("swin_t") and c["d_lo"] < 625 * 1.3

    assert main(["scale", "fit", "sc", "--root", str(scaling_root), "--bootstrap", "0", "--json", "--no-write",
                 "--metric", "val_top1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["metric"] == "val_top1" and data["written"] is None
    assert {r["arch"] for r in data["fits"]} == {"resnet18@28px,w=0.25", "swin_t@28px,w=0.25", BADNET}
    assert all(r["b_lo"] is None for r in data["fits"])             # no bootstrap, no intervals


@pytest.mark.parametrize("argv, says", [
    (["scale", "fit", "nope"], "no study 'nope'"),
    (["scale", "fit", "sc", "--bootstrap", "-5"], "--bootstrap: '-5': expected a whole number >= 0"),
    (["scale", "fit", "sc", "--level", "1.5"], "--level: '1.5': expected a confidence level in (0, 1)"),
    (["scale", "fit", "sc", "--metric", "top9"], "argument --metric: invalid choice"),
    (["scale", "frontier", "sc", "--cost", "joules"], "argument --cost: invalid choice"),
    (["scale", "fit", "sc", "sc"], "study 'sc' is given twice"),
])
def test_scale_errors_are_one_line_and_exit_2(scaling_root, capsys, argv, says):
    with pytest.raises(SystemExit) as e:
        code = main(argv + ["--root", str(scaling_root)])
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


def test_frontier_is_the_pareto_set_over_every_study_by_family(tmp_path, capsys):
    root = tmp_path / "studies"
    write_synthetic_study(root / "f1", 60, fractions=[0.3], seed=1)
    write_synthetic_study(root / "f2", 60, fractions=[1.0], seed=2)
    rows = read_studies(["f1", "f2"], root).trials
    front = frontier(rows, "macs", "val_top1")
    done = rows[(rows["state"] == "complete")]
    expected = done[pareto_mask(done[["val_top1", "macs"]].to_numpy(float), ["max", "min"])]
    assert sorted(zip(front["study"], front["number"])) == sorted(zip(expected["study"], expected["number"]))
    assert set(front["study"]) == {"f1", "f2"} and front["family"].notna().all()
    assert main(["scale", "frontier", "f1", "f2", "--root", str(root), "--metric", "val_top1"]) == 0
    out = capsys.readouterr().out
    assert f"{len(front)} of {len(done)} complete trials are on it" in out and "by family:" in out
    assert main(["scale", "frontier", "f1", "f2", "--root", str(root), "--cost", "train_macs", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cost"] == "train_macs" and all(r["train_macs"] > 0 for r in data["frontier"])


# --- the dashboard's scaling view ------------------------------------------------------------

def test_dashboard_draws_fitted_curves_bands_and_the_crossover(scaling_root, tmp_path):
    from lab.dashboard import render

    page = render(["sc"], root=scaling_root, out=tmp_path / "sc.html")
    fig = figures_of(page)["scaling"]
    fits = {t["meta"]["arch"]: t for t in traces(fig, "fit")}
    assert set(fits) == {"resnet18@28px,w=0.25", "swin_t@28px,w=0.25"}
    for t in fits.values():
        law = {"power": POWER, "saturating": SATURATING, "broken": BROKEN}[t["meta"]["law"]]
        params = np.array([t["meta"]["params"][p] for p in law.params])
        assert np.allclose(values(t["y"]), law(params, values(t["x"])))           # the fitted curve itself
    bands = {t["meta"]["arch"]: t for t in traces(fig, "fit_band")}
    assert set(bands) == set(fits)
    for arch, band in bands.items():
        assert band["fill"] == "toself" and band["meta"]["level"] == 0.95
        x, y = values(band["x"]), values(band["y"])
        n = len(x) // 2
        hi, lo, fitted = y[:n], y[n:][::-1], values(fits[arch]["y"])
        assert np.all(lo <= hi) and np.mean((lo <= fitted) & (fitted <= hi)) > 0.9     # the curve inside its band
    (cross,) = traces(fig, "crossover")
    assert cross["meta"]["leader"].startswith("resnet18") and cross["meta"]["lo"] <= cross["meta"]["size"] \
        <= cross["meta"]["hi"]
    bad = [t for t in traces(fig, "arch") if t["meta"]["arch"] == BADNET]
    assert bad and "error does not fall with data" in bad[0]["meta"]["fit"]
    assert fig["layout"]["yaxis"]["title"]["text"].startswith("validation top-1 error")
    # a scaling study: each trial is drawn in its architecture's colour, the colour of its fitted line
    colour = {t["meta"]["curve"]: t["line"]["color"] for t in traces(fig, "fit")}
    points = traces(fig, "points")
    for t in points:
        if t["legendgroup"].removeprefix("arch-") in colour:
            assert t["marker"]["color"] == colour[t["legendgroup"].removeprefix("arch-")]
    assert {t["legendgroup"].removeprefix("arch-") for t in points} >= set(colour)


def test_the_readme_documents_the_tables_columns():
    from pathlib import Path

    from lab.report.fits import CROSSOVER_FIELDS, FIT_FIELDS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Scaling"):readme.index("## Search spaces")]
    for name, type_, meaning in FIT_FIELDS + CROSSOVER_FIELDS:
        assert f"| `{name}` | {type_} | {meaning} |" in section
