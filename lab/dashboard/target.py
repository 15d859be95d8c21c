"""The "Predicted at N" view of a --target-size study (lab.study.fidelity): the Pareto front of the
accuracy each trial's fitted law predicts at the target size N (with its interval as error bars)
against MACs, beside the fronts measured at each size of the ladder the trials trained on.

The predicted front is taken over every trial with a prediction, complete (solid) or stopped early
by the scheduler (faded: its prediction rests on fewer sizes). Each measured front is taken over
every trial that reached that size, whatever it did after.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from lab.dashboard.data import DashboardData
from lab.dashboard.figures import _layout, _rgba
from lab.pareto import pareto_mask

PREDICTED = "#d62728"        # the predicted front's colour; the measured ones are shades of blue, darker larger
MACS_SCALE = 1e-9            # GMACs on the x axis, as the fronts view


def _rows(data: DashboardData | pd.DataFrame) -> pd.DataFrame:
    return data.rows if isinstance(data, DashboardData) else data


def has_predictions(data: DashboardData | pd.DataFrame) -> bool:
    """Whether any row carries a prediction at a target size (a --target-size study's)."""
    rows = _rows(data)
    return "pred_top1" in rows and bool(np.isfinite(pd.to_numeric(rows["pred_top1"], errors="coerce")).any())


def target_of(rows: pd.DataFrame) -> int | None:
    """The target size N the rows' predictions are made at (the most common one, should studies differ)."""
    if "target_size" not in rows:
        return None
    n = pd.to_numeric(rows.loc[np.isfinite(pd.to_numeric(rows["pred_top1"], errors="coerce")), "target_size"],
                      errors="coerce").dropna()
    return int(n.mode().iloc[0]) if len(n) else None


def predicted(rows: pd.DataFrame, target: int | None = None) -> pd.DataFrame:
    """Trials with a finite prediction at `target` (default `target_of`) and a positive MAC count; x in GMACs."""
    target = target_of(rows) if target is None else target
    pred = pd.to_numeric(rows.get("pred_top1"), errors="coerce")
    macs = pd.to_numeric(rows["macs"], errors="coerce").astype(float)
    keep = np.isfinite(pred) & np.isfinite(macs) & (macs > 0) & rows["state"].isin(["complete", "pruned"])
    if target is not None:
        keep &= pd.to_numeric(rows["target_size"], errors="coerce") == target
    out = rows[keep].copy()
    out["x"] = macs[keep] * MACS_SCALE
    for c in ("pred_top1", "pred_top1_lo", "pred_top1_hi"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    return out


def measured(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial, ladder size) with a finite accuracy: study, number, key, state, size, acc, x (GMACs)."""
    out = []
    for r in rows.to_dict("records"):
        sizes, accs = r.get("sizes"), r.get("sizes_top1")
        macs = r.get("macs")
        if sizes is None or accs is None or not isinstance(macs, (int, float)) or not macs > 0:
            continue
        for n, a in zip(sizes, accs):
            if a is not None and math.isfinite(float(a)):
                out.append({"study": r["study"], "number": r["number"], "key": r.get("key", str(r["number"])),
                            "state": r["state"], "size": int(n), "acc": float(a), "x": float(macs) * MACS_SCALE})
    return pd.DataFrame(out, columns=["study", "number", "key", "state", "size", "acc", "x"])


def _front(frame: pd.DataFrame, acc: str) -> pd.DataFrame:
    """The rows of `frame` no other row beats in both `acc` (max) and x (min), cheapest first."""
    mask = pareto_mask(frame[[acc, "x"]].to_numpy(dtype=float), ["max", "min"])
    return frame[mask].sort_values("x", kind="stable")


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _sizes_text(sizes) -> str:
    return "–" if sizes is None else ", ".join(f"{int(n):,}" for n in sizes)


def reach(rows: pd.DataFrame, target: int) -> tuple[int, float]:
    """The largest size any trial trained on, and how far `target` lies beyond it (target / largest)."""
    m = measured(rows)
    largest = int(m["size"].max()) if len(m) else 0
    return largest, (target / largest if largest else math.nan)


def _title(target: int, largest: int, factor: float) -> str:
    if not largest:
        return f"Predicted accuracy at N = {target:,} images"
    where = (f"extrapolated {factor:.1f}x beyond the largest size trained ({largest:,})" if factor > 1 + 1e-9
             else f"within the sizes trained (largest {largest:,})")
    return f"Predicted at N = {target:,} images: {where}"


def target_figure(data: DashboardData | pd.DataFrame) -> go.Figure | None:
    """The Pareto front of the accuracy predicted at the target size vs GMACs (error bars: each
    prediction's interval; complete trials solid, pruned ones faded), and per ladder size the front
    of the accuracy measured there (one trace each, smallest size lightest). None without predictions."""
    rows = _rows(data)
    if not has_predictions(rows):
        return None
    target = target_of(rows)
    pts = predicted(rows, target)
    if pts.empty or target is None:
        return None
    fig = go.Figure()
    sizes_at = measured(rows)
    sizes = sorted(sizes_at["size"].unique())
    shades = sample_colorscale("Blues", [0.35 + 0.6 * i / max(1, len(sizes) - 1) for i in range(len(sizes))])
    for size, colour in zip(sizes, shades):
        at = sizes_at[sizes_at["size"] == size]
        front = _front(at, "acc")
        fig.add_trace(go.Scatter(
            x=front["x"].to_numpy(), y=front["acc"].to_numpy(), mode="lines+markers", name=f"measured at {size:,} images",
            line=dict(color=colour, width=1.5, shape="hv"), marker=dict(size=6, color=colour),
            text=[f"#{k}: {_pct(a)} measured at {size:,} images ({s})" for k, a, s in
                  zip(front["key"], front["acc"], front["state"])],
            hovertemplate="%{text}<br>%{x:.4g} GMACs<extra></extra>",
            meta={"role": "measured", "size": int(size), "trials": len(at), "numbers": front["number"].tolist()}))
    front = _front(pts, "pred_top1")
    complete = (front["state"] == "complete").to_numpy()
    colour = np.where(complete, PREDICTED, _rgba(PREDICTED, 0.35))
    y, lo, hi = (front[c].to_numpy() for c in ("pred_top1", "pred_top1_lo", "pred_top1_hi"))
    text = [f"#{r['key']} ({r['state']}): {_pct(r['pred_top1'])} [{_pct(r['pred_top1_lo'])}, {_pct(r['pred_top1_hi'])}] "
            f"predicted at {target:,}<br>{html.escape(str(r.get('pred_law') or ''))} law on sizes "
            f"{_sizes_text(r.get('sizes'))}" for r in front.to_dict("records")]
    fig.add_trace(go.Scatter(
        x=front["x"].to_numpy(), y=y, mode="lines+markers", name=f"predicted at {target:,} images ({len(front)})",
        line=dict(color=PREDICTED, width=2, shape="hv"),
        marker=dict(size=10, color=colour, symbol="diamond", line=dict(width=1, color="white")),
        error_y=dict(type="data", symmetric=False, array=hi - y, arrayminus=y - lo, color=_rgba(PREDICTED, 0.6),
                     thickness=1.2, width=4),
        text=text, hovertemplate="%{text}<br>%{x:.4g} GMACs<extra></extra>",
        meta={"role": "predicted", "target": target, "trials": len(pts), "numbers": front["number"].tolist(),
              "complete": complete.tolist()}))
    if (front["state"] == "pruned").any():   # what the faded points are
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="stopped early (faded)",
                                 marker=dict(size=10, symbol="diamond", color=_rgba(PREDICTED, 0.35)),
                                 meta={"role": "legend"}))
    largest, factor = reach(rows, target)
    _layout(fig, _title(target, largest, factor), height=560)
    fig.update_xaxes(type="log", title="GMACs per image (log scale)")
    fig.update_yaxes(title="validation top-1 accuracy", tickformat=".0%")
    return fig


def help_text(data: DashboardData) -> str:
    """The section's help: what is drawn, for this page's study."""
    rows = data.rows
    target = target_of(rows)
    if target is None:
        return ""
    pts = predicted(rows, target)
    largest, factor = reach(rows, target)
    states = pts["state"].value_counts()
    beyond = (f"{factor:.1f}x beyond the largest size trained ({largest:,} images)" if factor > 1 + 1e-9
              else f"within the sizes trained (largest {largest:,} images)")
    return (f"Each trial of the --target-size study trains its point on a ladder of nested data sizes; a law fitted "
            f"to its accuracies predicts the accuracy at N = {target:,} images, {beyond}. Red: the Pareto front of "
            f"the predicted accuracy against MACs over the {len(pts)} trials with a prediction "
            f"({states.get('complete', 0)} complete, solid; {states.get('pruned', 0)} stopped early by the scheduler, "
            f"faded), the bars its 95% intervals. Blue: at each size of the ladder, the front of the accuracy "
            f"measured there over every trial that reached it (darker: larger).")
