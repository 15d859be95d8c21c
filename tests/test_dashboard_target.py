"""The dashboard's issue-21 views: a --target-size study's "Predicted at N" (the predicted front and
the fronts measured at each ladder size, against the Parquet rows) and a scaling study's
"Calibration of extrapolation" (validate()'s predictions against the measurements, and against the
closed form of a noiseless power law); studies without them get no section."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from page_json import figures_of, traces, values

from lab.dashboard import load, render
from lab.dashboard.calibration import calibration_figure, validation
from lab.dashboard.page import build_page
from lab.dashboard.synthetic import scaling_rows, write_synthetic_study, write_target_study
from lab.dashboard.target import PREDICTED, target_figure
from lab.pareto import pareto_mask
from lab.report.extrapolation import validate
from lab.study.store import StudyStore

TARGET = 12000
# named point -> (a, b, c): test error = a n^-b + c; c = 0 is a pure power law (what validate fits)
LAWS = {"resnet18@28px,w=0.25": (1.2, 0.35, 0.0), "swin_t@28px,w=0.25": (6.0, 0.6, 0.0),
        "convnext_t@32px,w=0.25": (3.0, 0.5, 0.0)}
OFF = "convnext_t@32px,w=0.25"      # measured 10 points below its law at the full split: outside its interval


def naive_front(points: list[tuple[float, float]]) -> set[tuple[float, float]]:
    """O(n^2): the (accuracy, cost) pairs no other is at least as good in both and better in one."""
    return {p for p in points if not any(q[0] >= p[0] and q[1] <= p[1] and q != p for q in points)}


@pytest.fixture(scope="module")
def target_study(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic --target-size study (ladder 400, 1,200, 3,600 images; N = 12,000), rendered once."""
    root = tmp_path_factory.mktemp("target") / "studies"
    write_target_study(root / "tgt", 40, target=TARGET, fraction=0.8, rungs=3, seed=1)
    return root, render(["tgt"], root=root, out=root.parent / "tgt.html", index=False)


def test_target_page_has_the_section_and_one_measured_front_per_size(target_study):
    root, page = target_study
    text = page.read_text()
    assert "<section id='target'><h2>Predicted at N</h2>" in text and "href='#target'" in text
    rows = StudyStore(root / "tgt").trials().to_pylist()
    fig = figures_of(page)["target"]
    assert "N = 12,000 images" in fig["layout"]["title"]["text"]
    assert "extrapolated 3.3x beyond the largest size trained (3,600)" in fig["layout"]["title"]["text"]

    sizes = sorted({n for r in rows for n in (r["sizes"] or [])})
    assert sizes == [400, 1200, 3600]       # round(4500 * 0.8 / 9), ...
    measured = traces(fig, "measured")
    assert [t["name"] for t in measured] == [f"measured at {n:,} images" for n in sizes]
    for size, t in zip(sizes, measured):    # each: the front over every trial that reached that size
        at = [(a, r["macs"] * 1e-9) for r in rows for n, a in zip(r["sizes"] or [], r["sizes_top1"] or []) if n == size]
        got = set(zip(values(t["y"]), values(t["x"])))
        assert got == naive_front(at) and len(at) > len(got)


def test_target_predicted_front_is_the_non_dominated_set_with_the_intervals_as_error_bars(target_study):
    root, page = target_study
    rows = [r for r in StudyStore(root / "tgt").trials().to_pylist() if r["pred_top1"] is not None]
    assert {r["state"] for r in rows} == {"complete", "pruned"}
    (pred,) = traces(figures_of(page)["target"], "predicted")
    mask = pareto_mask([[r["pred_top1"], r["macs"]] for r in rows], ["max", "min"])
    front = sorted((r for r, m in zip(rows, mask) if m), key=lambda r: r["macs"])
    assert pred["meta"]["numbers"] == [r["number"] for r in front] and len(front) < len(rows)
    y = values(pred["y"])
    np.testing.assert_allclose(values(pred["x"]), [r["macs"] * 1e-9 for r in front], rtol=1e-12)
    np.testing.assert_array_equal(y, [r["pred_top1"] for r in front])
    np.testing.assert_allclose(y + values(pred["error_y"]["array"]), [r["pred_top1_hi"] for r in front], atol=1e-12)
    np.testing.assert_allclose(y - values(pred["error_y"]["arrayminus"]), [r["pred_top1_lo"] for r in front],
                               atol=1e-12)
    # complete trials solid, pruned ones faded
    assert [c == PREDICTED for c in pred["marker"]["color"]] == [r["state"] == "complete" for r in front]


def test_target_front_counts_pruned_predictions_that_lead(tmp_path):
    """A pruned trial that predicts best at the cheapest cost is on the front (faded); one that is
    complete and dominated is not."""
    store = write_target_study(tmp_path / "t", 12, seed=2)
    rows = store.trials().to_pylist()
    data = load([store.folder])
    (pred,) = traces(target_figure(data).to_plotly_json(), "predicted")
    on = set(pred["meta"]["numbers"])
    with_pred = [r for r in rows if r["pred_top1"] is not None]
    best = max(with_pred, key=lambda r: (r["pred_top1"], -r["macs"]))
    cheapest = min(with_pred, key=lambda r: (r["macs"], -r["pred_top1"]))
    assert {best["number"], cheapest["number"]} <= on
    for r in with_pred:   # off the front exactly when another trial beats it in both
        beaten = any(q["pred_top1"] >= r["pred_top1"] and q["macs"] <= r["macs"] and
                     (q["pred_top1"], q["macs"]) != (r["pred_top1"], r["macs"]) for q in with_pred)
        assert (r["number"] in on) == (not beaten)


def _scaling_study(folder: Path, fractions: list[float], off: float = 0.0) -> Path:
    """A scaling study of LAWS x `fractions` x 2 seeds with no noise; OFF measured `off` lower at 1.0."""
    store = StudyStore(folder)
    store.save_config({"name": folder.name, "kind": "scaling", "archs": list(LAWS), "fractions": fractions,
                       "seeds": 2, "dataset": "mnist5k", "objectives": "val_acc:max,macs:min", "epochs": 8,
                       "recipe": "default", "seed": 0})
    for row in scaling_rows(LAWS, fractions=fractions, seeds=2, noise=0.0):
        if off and row["fraction"] == 1.0 and OFF in row["hparams"]["vars"]["arch"]:
            row["val_top1"] -= off
        store.write_trial(row)
    return store.folder


@pytest.fixture(scope="module")
def scaling_study(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("calib") / "studies"
    _scaling_study(root / "sc", [0.1, 0.3, 1.0], off=0.1)
    return root, render(["sc"], root=root, out=root.parent / "sc.html", index=False)


def test_calibration_points_are_validate_s_and_the_power_law_s_closed_form(scaling_study):
    root, page = scaling_study
    text = page.read_text()
    assert "<section id='calibration'><h2>Calibration of extrapolation</h2>" in text
    assert "id='target'" not in text    # no predictions at a target size in a scaling study
    v = validate([root / "sc"])
    fig = figures_of(page)["calibration"]
    (line,) = traces(fig, "identity")
    np.testing.assert_array_equal(values(line["x"]), values(line["y"]))
    points = {}
    for t in traces(fig, "calibration"):
        for arch, x, y, plus, minus in zip(t["meta"]["archs"], values(t["x"]), values(t["y"]),
                                           values(t["error_x"]["array"]), values(t["error_x"]["arrayminus"])):
            points[arch] = (t["meta"]["covered"], x, y, x + plus, x - minus)
    expected = {r["arch"]: (r["covered"], r["predicted"], r["measured"], r["hi"], r["lo"]) for r in v.rows}
    assert points.keys() == expected.keys() == set(LAWS)
    for arch in LAWS:
        np.testing.assert_allclose(points[arch][1:], expected[arch][1:], rtol=0, atol=1e-12)
        a, b, _ = LAWS[arch]
        # fitted on 450 and 1,350 images of an exact power law: the prediction at 4,500 is the law's own
        assert points[arch][1] == pytest.approx(1 - a * 4500 ** -b, abs=1e-6)
        assert points[arch][2] == pytest.approx(1 - a * 4500 ** -b - (0.1 if arch == OFF else 0), abs=1e-9)
        assert points[arch][0] is (arch != OFF)
    s = v.summary
    assert f"median |error| {s['median_abs_error_pts']:.2f} points" in text
    assert f"Kendall τ {s['kendall']['value']:.2f}" in text and f"coverage of the 95% intervals " \
                                                               f"{100 * s['coverage']:.0f}%" in text
    assert math.isclose(s["coverage"], 2 / 3)


@pytest.mark.parametrize("fractions", [[0.5, 1.0], [0.3, 1.0]])
def test_no_calibration_without_two_sizes_up_to_30_percent_and_one_beyond(tmp_path, fractions):
    """Sizes on one side of 30% only: no section; one size below (validate refuses: LabError): none."""
    data = load([_scaling_study(tmp_path / "sc", fractions)])
    assert validation(data) is None and calibration_figure(None) is None
    assert "id='calibration'" not in build_page(data)


def test_a_study_without_predictions_has_neither_section(tmp_path):
    store = write_synthetic_study(tmp_path / "plain", 30, fractions=[0.1, 0.3, 1.0], seed=4)
    data = load([store.folder])
    assert target_figure(data) is None and validation(data) is None
    page = build_page(data)
    assert "id='target'" not in page and "id='calibration'" not in page and "id='fronts'" in page
