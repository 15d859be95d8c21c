"""The "Calibration of extrapolation" view of a scaling study measured on both sides of 30% of the
training split: each architecture's accuracy predicted from the sizes up to 30% (its interval as a
bar) against the accuracy measured at the full split, beside the line y = x, as
lab.report.extrapolation.validate (`lab scale extrapolate`) checks it.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from lab.dashboard.data import DashboardData
from lab.dashboard.figures import _layout
from lab.errors import LabError
from lab.report.extrapolation import TARGET_ERROR, TARGET_TAU, UPTO, Validation, validate

COVERED, MISSED = "#2ca02c", "#d62728"

# the last page's validation (one slot): a page asks for it from its `when`, its figure and its caption
_last: tuple[DashboardData, Validation | None] | None = None


def spans(data: DashboardData, upto: float = UPTO) -> bool:
    """Whether a scaling study's complete trials hold sizes up to `upto` of the training split and beyond it."""
    scaling = {s.name for s in data.studies if s.config.get("kind") == "scaling"}
    rows = data.rows[data.rows["study"].isin(scaling) & (data.rows["state"] == "complete")]
    f = pd.to_numeric(rows["fraction"], errors="coerce")
    return bool((f <= upto + 1e-9).any() and (f > upto + 1e-9).any())


def validation(data: DashboardData) -> Validation | None:
    """validate() on the page's study folders; None when the studies do not span 30% or it refuses (LabError)."""
    global _last
    if _last is not None and _last[0] is data:
        return _last[1]
    out = None
    if spans(data):
        try:
            out = validate([s.folder for s in data.studies], ceiling=False)   # the caption shows no ceiling
        except LabError:
            out = None
    _last = (data, out)
    return out


def _fmt(v: float, spec: str) -> str:
    return "–" if v is None or not math.isfinite(v) else format(v, spec)


def caption(v: Validation) -> str:
    """One line: median absolute error, Kendall's tau with its interval, and the intervals' coverage."""
    s = v.summary
    tau = s["kendall"]
    return (f"median |error| {_fmt(s['median_abs_error_pts'], '.2f')} points (target ≤ {TARGET_ERROR:g}) · "
            f"Kendall τ {_fmt(tau['value'], '.2f')} [{_fmt(tau['lo'], '.2f')}, {_fmt(tau['hi'], '.2f')}] "
            f"(target ≥ {TARGET_TAU:g}) · coverage of the {v.level:.0%} intervals "
            f"{_fmt(100 * s['coverage'] if math.isfinite(s['coverage']) else math.nan, '.0f')}% · "
            f"{s['archs']} architectures" + (f" ({s['skipped']} without a prediction)" if s["skipped"] else ""))


def calibration_figure(v: Validation | None) -> go.Figure | None:
    """Predicted (x, its interval as a bar) against measured (y) accuracy per architecture, green
    where the interval holds the measurement, red where not, and the line y = x."""
    if v is None:
        return None
    done = [r for r in v.rows if r.get("predicted") is not None]
    if not done:
        return None
    fig = go.Figure()
    values = [x for r in done for x in (r["lo"], r["hi"], r["measured"])]
    lo, hi = min(values), max(values)
    pad = 0.05 * (hi - lo or 0.01)
    ends = [lo - pad, hi + pad]
    fig.add_trace(go.Scatter(x=ends, y=ends, mode="lines", name="y = x (exact)", hoverinfo="skip",
                             line=dict(color="#888", dash="dash", width=1.2), meta={"role": "identity"}))
    for covered, colour, name in ((True, COVERED, "interval holds the measurement"),
                                  (False, MISSED, "interval misses it")):
        rows = [r for r in done if bool(r["covered"]) is covered]
        if not rows:
            continue
        x = np.array([r["predicted"] for r in rows])
        text = [f"<b>{html.escape(str(r['arch']))}</b> ({html.escape(str(r['family'] or ''))})<br>predicted "
                f"{100 * r['predicted']:.2f}% [{100 * r['lo']:.2f}%, {100 * r['hi']:.2f}%] at {r['target']:,.0f} "
                f"images ({r['factor']:.1f}x the largest fitted, {html.escape(str(r['law']))} law)<br>measured "
                f"{100 * r['measured']:.2f}% · error {r['abs_error_pts']:.2f} points" for r in rows]
        fig.add_trace(go.Scatter(
            x=x, y=[r["measured"] for r in rows], mode="markers", name=f"{name} ({len(rows)})",
            marker=dict(size=10, color=colour, line=dict(width=1, color="white")),
            error_x=dict(type="data", symmetric=False, array=np.array([r["hi"] for r in rows]) - x,
                         arrayminus=x - np.array([r["lo"] for r in rows]), color=colour, thickness=1.2, width=4),
            text=text, hovertemplate="%{text}<extra></extra>",
            meta={"role": "calibration", "covered": covered, "archs": [str(r["arch"]) for r in rows]}))
    _layout(fig, f"Predicted from sizes ≤ {v.upto:.0%} of the training split vs measured at the full split "
                 f"({len(done)} architectures)", height=520)
    fig.update_xaxes(title=f"predicted accuracy ({v.law} law, {v.level:.0%} interval)", tickformat=".1%", range=ends)
    fig.update_yaxes(title="measured validation top-1 accuracy", tickformat=".1%", range=ends)
    return fig


def help_text(data: DashboardData) -> str:
    """The section's help, with the check's figures."""
    v = validation(data)
    if v is None:
        return ""
    return (f"The test of extrapolation (<code>lab scale extrapolate</code>): each architecture's {v.law} law is "
            f"fitted on its sizes up to {v.upto:.0%} of the training split and predicts its accuracy at the largest "
            f"size measured beyond; a point on the dashed line is exact, and its bar is the {v.level:.0%} "
            f"prediction interval.<br><b>{html.escape(caption(v))}</b>")
