"""The dashboard's views as pure functions: DashboardData -> plotly Figure (None: nothing to draw).

Accuracies stay fractions in [0, 1] (axes format them as percentages), so a figure's numbers are
the Parquet table's; costs are scaled to readable units (GMACs, millions of parameters). Above
`GL_THRESHOLD` points a figure uses WebGL traces (scattergl) so that the page stays responsive.
Trace `meta` says what a trace is ({"role": "points" | "pareto" | "legend" | ...}), for readers
of the figure JSON (the tests, a notebook).
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from lab.dashboard.data import OTHER, DashboardData
from lab.errors import LabError
from lab.pareto import pareto_mask
from lab.report.fits import curves_from_rows
from lab.scaling.crossover import crossovers
from lab.scaling.curves import fit_curves

GL_THRESHOLD = 2000          # points in a figure above which it draws with WebGL
PALETTE = list(dict.fromkeys(qualitative.Plotly + qualitative.Dark24 + qualitative.Light24))
_AXIS = dict(gridcolor="#ebebeb", linecolor="#bbbbbb", zerolinecolor="#dddddd", automargin=True,
             title=dict(standoff=8))
# a small white template: plotly's own ones are large and slow to validate, once per figure
TEMPLATE = dict(layout=dict(paper_bgcolor="white", plot_bgcolor="white", colorway=PALETTE, xaxis=_AXIS, yaxis=_AXIS,
                            font=dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size=12,
                                      color="#2a3f5f"), hovermode="closest", legend=dict(itemsizing="constant")))
SYMBOLS = {"isotropic": "circle", "hierarchical": "diamond"}
MAX_LABELS = 30              # named-architecture labels drawn on a front plot
MAX_CHOICES = 24             # panels of the accuracy-per-choice view
MAX_CATEGORIES = 12          # a choice with more distinct values is drawn as a scatter, not boxes
MAX_EDF_POINTS = 400         # an EDF curve is drawn through this many of its steps at most
MAX_ARCH_LINES = 5           # architectures trained at several sizes drawn in a search's scaling view
ARCH_COLOURS = qualitative.Dark2 + qualitative.Set1   # architectures' lines and fits: darker than the groups' points
MAX_SCALING_ARMS = len(ARCH_COLOURS)   # a scaling study's arms drawn (each its own colour)
FIT_BOOTSTRAP = 500          # bootstrap samples behind the scaling view's bands and crossover intervals

# x column -> (axis title, scale, sense, figure title)
FRONTS = {
    "macs": ("GMACs per image (log scale)", 1e-9, "min", "Accuracy vs compute"),
    "params": ("parameters, millions (log scale)", 1e-6, "min", "Accuracy vs model size"),
    "images_per_second": ("training images per second, measured (log scale)", 1.0, "max",
                          "Accuracy vs measured throughput"),
}


def accuracy_title(column: str) -> str:
    split, _, k = column.partition("_top")
    return f"{'validation' if split == 'val' else split} top-{k} accuracy"


def colours(data: DashboardData) -> dict[str, str]:
    """One colour per group, the same in every view; grey for the rare ones lumped together."""
    return {g: "#9a9a9a" if g == OTHER else PALETTE[i % len(PALETTE)] for i, g in enumerate(data.groups)}


def _layout(fig: go.Figure, title: str, height: int = 460, **kw) -> go.Figure:
    kw.setdefault("margin", dict(l=70, r=20, t=60, b=60))
    fig.update_layout(template=TEMPLATE, title=dict(text=title, x=0.01, xanchor="left"), height=height,
                      hoverlabel=dict(align="left"), **kw)
    return fig


def _scatter(gl: bool):
    return go.Scattergl if gl else go.Scatter


def _hover(rows: pd.DataFrame, role: str, **meta) -> dict:
    """A trace's hover texts (one per row) with the rows' positions in data.rows as customdata, so
    that a page can ship each row's text once and fill the traces in (meta hover="rows")."""
    # numpy arrays: plotly validates and copies them whole, where it walks lists element by element
    return dict(text=rows["hover"].to_numpy(dtype=object), customdata=rows.index.to_numpy(dtype=np.int32),
                meta={"role": role, "hover": "rows", **meta})


def _legend_entries(fig: go.Figure, layouts: set[str], pruned: bool) -> None:
    """Legend entries for the marker shapes (traces without points)."""
    for layout in ("isotropic", "hierarchical"):
        if layout in layouts:
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=layout, legendgroup="shape",
                                     legendgrouptitle_text="shape", marker=dict(symbol=SYMBOLS[layout], size=9,
                                                                               color="#666"), meta={"role": "legend"}))
    if pruned:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="stopped early (open)", legendgroup="shape",
                                 marker=dict(symbol="circle-open", size=9, color="#666"), meta={"role": "legend"}))


def pareto_figure(data: DashboardData, x: str = "macs", gl_threshold: int = GL_THRESHOLD) -> go.Figure | None:
    """Accuracy against `x` (macs, params or images_per_second) for every trained trial, coloured
    by group, shaped by layout (open: stopped early), with the 2-D Pareto set of the complete
    trials joined and ringed, and named architectures labelled."""
    axis_title, scale, sense, title = FRONTS[x]
    pts = data.trained
    xs = pd.to_numeric(pts[x], errors="coerce").astype(float) * scale
    keep = np.isfinite(xs) & (xs > 0)
    pts, xs = pts[keep], xs[keep]
    if pts.empty:
        return None
    scatter, palette = _scatter(len(pts) > gl_threshold), colours(data)
    fig = go.Figure()
    for group in data.groups:
        sel = (pts["group"] == group).to_numpy()
        if not sel.any():
            continue
        p, px = pts[sel], xs[sel]
        # one legend entry (without points) stands for the group's traces, one per marker shape
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=group, legendgroup=group,
                                 marker=dict(color=palette[group], symbol="square", size=10), meta={"role": "legend"}))
        shape = [SYMBOLS.get(layout, "square") + ("-open" if state == "pruned" else "")
                 for layout, state in zip(p["layout"], p["state"])]
        for symbol in sorted(set(shape)):
            m = np.array([s == symbol for s in shape])
            fig.add_trace(scatter(
                x=px[m].to_numpy(), y=p["acc"][m].to_numpy(), mode="markers", name=group, legendgroup=group,
                showlegend=False, hovertemplate="%{text}<extra></extra>", **_hover(p[m], "points"),
                marker=dict(color=palette[group], symbol=symbol, size=8, opacity=0.85,
                            line=dict(width=0.6, color="white"))))

    complete = (pts["state"] == "complete").to_numpy()
    front = pts[complete]
    mask = pareto_mask(np.column_stack([front["acc"].to_numpy(), xs[complete].to_numpy()]), ["max", sense])
    front, fx = front[mask], xs[complete][mask]
    order = np.argsort(fx.to_numpy(), kind="stable")
    front, fx = front.iloc[order], fx.iloc[order]
    fig.add_trace(scatter(
        x=fx.to_numpy(), y=front["acc"].to_numpy(), mode="lines+markers", name=f"Pareto set ({len(front)})",
        line=dict(color="#222", width=1.5, shape="hv" if sense == "min" else "vh"),
        marker=dict(symbol="circle-open", size=14, color="#222", line=dict(width=2)),
        hovertemplate="%{text}<extra>Pareto set</extra>", **_hover(front, "pareto", numbers=front["key"].tolist())))
    _legend_entries(fig, set(pts["layout"].dropna()), bool((pts["state"] == "pruned").any()))

    # each named architecture once, at its most accurate trial (it may be trained at several fractions)
    labelled = pts[pts["label"] != ""].sort_values("acc", ascending=False).drop_duplicates("label").head(MAX_LABELS)
    for _, r in labelled.iterrows():
        fig.add_annotation(x=math.log10(xs[r.name]), y=r["acc"], text=r["label"], showarrow=True, arrowhead=0,
                           ax=18, ay=-24, font=dict(size=11), bgcolor="rgba(255,255,255,0.8)")
    _layout(fig, f"{title} ({len(pts)} trained trials)", height=560, legend=dict(title=data.group_by))
    fig.update_xaxes(type="log", title=axis_title)
    fig.update_yaxes(title=accuracy_title(data.accuracy), tickformat=".0%")
    return fig


def _gapped(frame: pd.DataFrame, columns: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """`columns` of `frame` (sorted by trial, then epoch) with a NaN between trials, so that one
    trace draws every trial's curve; and each point's trial key ('' at the gaps)."""
    keys = frame["key"].to_numpy()
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    n = len(frame) + len(starts) - 1
    where = np.arange(len(frame)) + np.searchsorted(starts, np.arange(len(frame)), side="right") - 1
    out = {}
    for c in columns:   # float32: curves are many points, and 7 digits are plenty to draw them
        a = np.full(n, np.nan, dtype=np.float32)
        a[where] = frame[c].to_numpy(dtype=np.float32)
        out[c] = a
    text = [""] * n
    for i, k in zip(where, keys):
        text[i] = k
    return out, text


CURVE_STATES = (("complete", "#1f77b4", "complete"), ("pruned", "#ff7f0e", "stopped early (ASHA)"),
                ("failed", "#7f7f7f", "failed"), ("other", "#bcbd22", "running or unrecorded"))


def curves_figure(data: DashboardData, gl_threshold: int = GL_THRESHOLD) -> go.Figure | None:
    """Each trial's validation accuracy and training loss by epoch; early-stopped trials in their
    own colour with a cross where they were stopped."""
    ep = data.epochs
    if ep.empty:
        return None
    if "n_train" in ep and ep["n_train"].notna().any():   # a --target-size trial: the curve of its largest size
        top = ep.groupby(["study", "number"])["n_train"].transform("max")
        ep = ep[ep["n_train"].isna() | (ep["n_train"] == top)]
    rows = data.rows[["study", "number", "state", "key"]]
    ep = ep.merge(rows, on=["study", "number"], how="left")
    ep["key"] = ep["key"].fillna(ep["number"].astype(str))
    ep["state"] = ep["state"].where(ep["state"].isin(["complete", "pruned", "failed"]), "other")
    ep = ep.sort_values(["study", "number", "epoch"], kind="stable")
    scatter = _scatter(len(ep) > gl_threshold)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.09,
                        subplot_titles=(f"{accuracy_title('val_top1')} by epoch", "training loss by epoch"))
    for state, colour, name in CURVE_STATES:
        sub = ep[ep["state"] == state]
        if sub.empty:
            continue
        trials = sub["key"].nunique()
        for col, y, fmt in ((1, "val_top1", ".1%"), (2, "loss", ".3f")):
            # long runs validate every k-th epoch: the accuracy line joins the validated ones
            arrays, text = _gapped(sub[sub[y].notna()], ["epoch", y])
            fig.add_trace(scatter(
                x=arrays["epoch"], y=arrays[y], mode="lines", name=f"{name} ({trials})", legendgroup=state,
                showlegend=col == 1, line=dict(color=colour, width=1.2), opacity=0.7, text=text,
                hovertemplate=f"trial #%{{text}}, epoch %{{x}}: %{{y:{fmt}}}<extra>{name}</extra>",
                meta={"role": "curves", "state": state, "trials": trials}), row=1, col=col)
        if state == "pruned":   # where ASHA stopped them
            last = sub.groupby("key", sort=False).tail(1)
            for col, y in ((1, "val_top1"), (2, "loss")):
                fig.add_trace(scatter(
                    x=last["epoch"].to_numpy(), y=last[y].to_numpy(dtype=float), mode="markers",
                    name="stopped here", legendgroup=state, showlegend=col == 1,
                    marker=dict(symbol="x", size=8, color=colour), text=last["key"].tolist(),
                    hovertemplate="trial #%{text} stopped after epoch %{x}<extra></extra>",
                    meta={"role": "stopped"}), row=1, col=col)
    _layout(fig, f"Learning curves: {ep['key'].nunique()} trials", height=440)
    fig.update_xaxes(title="epoch", dtick=1 if ep["epoch"].max() <= 20 else None)
    fig.update_yaxes(title="validation top-1", tickformat=".0%", row=1, col=1)
    fig.update_yaxes(title="training loss", row=1, col=2)
    return fig


def _edf(errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The empirical distribution function of `errors` as step points (x, fraction <= x)."""
    e = np.sort(errors)
    y = np.arange(1, len(e) + 1) / len(e)
    if len(e) > MAX_EDF_POINTS:   # the steps at evenly spaced ranks, the last one kept
        idx = np.unique(np.r_[np.linspace(0, len(e) - 1, MAX_EDF_POINTS).astype(int), len(e) - 1])
        e, y = e[idx], y[idx]
    return np.r_[e[0], e], np.r_[0.0, y]


def edf_figure(data: DashboardData) -> go.Figure | None:
    """RegNet's design-space view: the error EDF of the complete trials per block kind (a trial
    counts under every kind it uses) and per stage layout; a curve up and to the left is a better
    region of the space."""
    rows = data.complete
    if rows.empty:
        return None
    err = 1.0 - rows["acc"].to_numpy(dtype=float)
    by_kind: dict[str, list[float]] = {}
    for kinds, e in zip(rows["kinds"], err):
        for k in ([] if kinds is None else sorted(set(kinds))):
            by_kind.setdefault(k, []).append(e)
    by_layout: dict[str, list[float]] = {}
    for layout, e in zip(rows["layout"], err):
        by_layout.setdefault(layout if isinstance(layout, str) else "unknown", []).append(e)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.09, shared_yaxes=True,
                        subplot_titles=("by block kind", "by stage layout"))
    layout_colours = {"isotropic": "#2c3e50", "hierarchical": "#e67e22"}
    for col, groups, prefix in ((1, by_kind, "kind"), (2, by_layout, "layout")):
        for i, (name, errors) in enumerate(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))):
            x, y = _edf(np.asarray(errors))
            colour = layout_colours.get(name, "#999999") if prefix == "layout" else PALETTE[i % len(PALETTE)]
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines", line=dict(shape="hv", width=2, color=colour),
                name=f"{name} ({len(errors)})", legendgroup=prefix, legendgrouptitle_text=prefix,
                hovertemplate=f"{name}: %{{y:.0%}} of {len(errors)} nets have error ≤ %{{x:.1%}}<extra></extra>",
                meta={"role": "edf", "group": prefix, "name": name, "n": len(errors)}), row=1, col=col)
    _layout(fig, f"Design space: error distribution of {len(rows)} complete trials", height=440,
            legend=dict(groupclick="toggleitem"))
    fig.update_xaxes(title="validation top-1 error", tickformat=".0%", rangemode="tozero")
    fig.update_yaxes(title="fraction of nets with error ≤ x", range=[0, 1.02], row=1, col=1)
    return fig


def _sort_key(v):
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))


def choices_figure(data: DashboardData, order: list[str] | None = None,
                   gl_threshold: int = GL_THRESHOLD) -> go.Figure | None:
    """Accuracy against each sampled choice (complete trials): boxes per value of a discrete
    choice (with every trial's point when there are few), a scatter for a continuous one. Panels
    follow `order` (most important first), then the remaining choices."""
    rows = data.complete
    names = [c for c in (order or []) if c in data.choices]
    names += [c for c in data.choices if c not in names]
    panels = []
    for name in names:
        pairs = [(c[name], a) for c, a in zip(rows["choices"], rows["acc"]) if c.get(name) is not None]
        if len({repr(v) for v, _ in pairs}) >= 2:   # a choice that never varied says nothing
            panels.append((name, pairs))
    panels = panels[:MAX_CHOICES]
    if not panels:
        return None
    cols = 3 if len(panels) > 2 else len(panels)
    nrows = math.ceil(len(panels) / cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[n for n, _ in panels], shared_yaxes=True,
                        horizontal_spacing=0.05, vertical_spacing=min(0.12, 0.5 / nrows))
    for i, (name, pairs) in enumerate(panels):
        r, c = i // cols + 1, i % cols + 1
        values = [v for v, _ in pairs]
        acc = np.array([a for _, a in pairs], dtype=float)
        distinct = sorted({repr(v): v for v in values}.values(), key=_sort_key)
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct)
        meta = {"role": "choice", "choice": name, "n": len(pairs)}
        if numeric and len(distinct) > MAX_CATEGORIES:
            x = np.array(values, dtype=float)
            fig.add_trace(_scatter(len(pairs) > gl_threshold)(
                x=x, y=acc, mode="markers", marker=dict(size=5, opacity=0.6, color=PALETTE[0]), showlegend=False,
                hovertemplate=f"{name} = %{{x:.4g}}: %{{y:.1%}}<extra></extra>", meta=meta), row=r, col=c)
            if x.min() > 0 and x.max() / x.min() >= 20:
                fig.update_xaxes(type="log", row=r, col=c)
            continue
        labels = [str(v) for v in distinct]
        if len(pairs) <= 300:     # few trials: the box and every trial's point
            fig.add_trace(go.Box(x=[str(v) for v in values], y=acc, boxpoints="all", jitter=0.4, pointpos=0,
                                 marker=dict(size=4, color=PALETTE[0]), line=dict(width=1), showlegend=False,
                                 name=name, meta=meta), row=r, col=c)
        else:                     # many: precomputed quartiles keep the page small and fast
            groups = [acc[[repr(v) == repr(d) for v in values]] for d in distinct]
            q = [np.percentile(g, [25, 50, 75]) for g in groups]
            fig.add_trace(go.Box(
                x=labels, q1=[t[0] for t in q], median=[t[1] for t in q], q3=[t[2] for t in q],
                lowerfence=[g.min() for g in groups], upperfence=[g.max() for g in groups],
                mean=[g.mean() for g in groups], marker=dict(color=PALETTE[0]), showlegend=False, name=name,
                meta=meta), row=r, col=c)
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=labels, row=r, col=c)
    _layout(fig, f"Accuracy by sampled choice ({len(rows)} complete trials; most important first)",
            height=max(320, 250 * nrows + 80), margin=dict(l=70, r=20, t=90, b=40))
    fig.update_yaxes(tickformat=".0%")
    fig.update_yaxes(title="accuracy", col=1)
    fig.update_annotations(font=dict(size=12))
    return fig


def importance_figure(importance: dict[str, float]) -> go.Figure | None:
    """The sampled choices' shares of the accuracy's variance (fANOVA), largest on top."""
    if not importance:
        return None
    items = sorted(importance.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                           marker=dict(color=PALETTE[0]), hovertemplate="%{y}: %{x:.1%}<extra></extra>",
                           meta={"role": "importance"}))
    _layout(fig, "Importance of the sampled choices (fANOVA on validation accuracy)",
            height=max(260, 26 * len(items) + 120))
    fig.update_xaxes(title="share of the accuracy's variance explained", tickformat=".0%")
    fig.update_yaxes(title=None, automargin=True)
    return fig


def _rgba(colour: str, alpha: float) -> str:
    """A '#rrggbb' or 'rgb(r,g,b)' colour as rgba() with `alpha` (for bands); grey for any other."""
    if colour.startswith("#") and len(colour) == 7:
        r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
        return f"rgba({r},{g},{b},{alpha})"
    if colour.startswith("rgb(") and colour.endswith(")"):
        return f"rgba({colour[4:-1]},{alpha})"
    return f"rgba(120,120,120,{alpha})"


def _law_text(fit) -> str:
    """'saturating: b 0.41 [0.33, 0.48], c 2.4% [0.4%, 3.8%]' for a hover."""
    parts = []
    for p in ("b", "c", "b2"):
        if p in fit.law.params:
            v = fit.value(p)
            lo, hi = fit.ci.get(p, (math.nan, math.nan))
            fmt = (lambda x: f"{100 * x:.2f}%") if p == "c" else (lambda x: f"{x:.3f}")
            ci = f" [{fmt(lo)}, {fmt(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else ""
            parts.append(f"{p} {fmt(v)}{ci}")
    return f"{fit.law.name} law: " + ", ".join(parts)


def _scaling_fits(rows: pd.DataFrame, archs, size: str, accuracy: str, n_boot: int):
    """The scaling fits (lab.scaling) of `archs` from the rows, and their crossovers."""
    sub = rows[rows["curve"].isin(list(archs))]
    try:
        curves, _, _ = curves_from_rows(sub, size=size, accuracy=accuracy)
    except LabError:   # rows the fits cannot read: the view draws without fitted curves
        return {}, []
    fits = fit_curves(curves, n_boot=n_boot, seed=0)
    return {f.curve.key: f for f in fits}, crossovers(fits)


def scaling_figure(data: DashboardData, gl_threshold: int = GL_THRESHOLD,
                   n_boot: int = FIT_BOOTSTRAP) -> go.Figure | None:
    """Error against training-set size on log-log axes, when the trials span several sizes: each
    trial as a point per group, a line through each group's best error at each size, and per
    architecture trained at several sizes its mean error (dashed), its preferred fitted scaling
    law (lab.scaling) with the bootstrap band of the fitted curve (pointwise percentiles), and the
    sizes where an architecture of one family overtakes one of another, with their intervals."""
    rows = data.complete.copy()
    if rows.empty:
        return None
    n_train = pd.to_numeric(rows["n_train"], errors="coerce")
    use_n = n_train.nunique() >= 2      # training images where recorded, else the data fraction
    rows["size"] = n_train if use_n else pd.to_numeric(rows["fraction"], errors="coerce")
    rows = rows[np.isfinite(rows["size"].astype(float)) & (rows["size"] > 0)]
    if rows["size"].nunique() < 2:
        return None
    rows["error"] = (1.0 - rows["acc"]).clip(lower=1e-4)    # a log axis: no zero
    palette, scatter = colours(data), _scatter(len(rows) > gl_threshold)
    sizes = rows.groupby("curve")["size"].nunique()
    repeated = sizes[sizes >= 2].sort_values(ascending=False, kind="stable").index
    # a scaling study (every architecture drawn at several sizes): its trials take their architecture's
    # colour, as its mean and fitted lines do; otherwise trials are coloured by group with each group's best
    by_arch = len(repeated) == rows["curve"].nunique() and len(repeated) <= MAX_SCALING_ARMS
    repeated = repeated[:MAX_SCALING_ARMS if by_arch else MAX_ARCH_LINES]
    arch_colour = {arch: ARCH_COLOURS[i % len(ARCH_COLOURS)] for i, arch in enumerate(repeated)}
    fig = go.Figure()
    for arch in repeated if by_arch else []:
        a = rows[rows["curve"] == arch]
        fig.add_trace(scatter(
            x=a["size"].to_numpy(dtype=float), y=a["error"].to_numpy(), mode="markers", legendgroup=f"arch-{arch}",
            showlegend=False, marker=dict(color=arch_colour[arch], size=7, opacity=0.55),
            hovertemplate="%{text}<extra></extra>", **_hover(a, "points")))
    for group in [] if by_arch else data.groups:
        g = rows[rows["group"] == group]
        if g.empty:
            continue
        fig.add_trace(scatter(
            x=g["size"].to_numpy(dtype=float), y=g["error"].to_numpy(), mode="markers", name=group, legendgroup=group,
            marker=dict(color=palette[group], size=7, opacity=0.55),
            hovertemplate="%{text}<extra></extra>", **_hover(g, "points")))
        best = g.groupby("size")["error"].min()
        fig.add_trace(go.Scatter(
            x=best.index.to_numpy(dtype=float), y=best.to_numpy(), mode="lines", legendgroup=group, showlegend=False,
            line=dict(color=palette[group], width=2), name=f"{group}: best", meta={"role": "best"},
            hovertemplate=f"{group}: best error %{{y:.2%}} at %{{x:,}}<extra></extra>"))
    fits, cross = _scaling_fits(rows, repeated, "n_train" if use_n else "fraction", "acc", n_boot) \
        if len(repeated) else ({}, [])
    ends: dict[str, float] = {}    # where each fitted curve is drawn to: its largest size, or a crossover beyond it
    for c in cross:
        for f in (c.leader, c.overtaker):
            ends[f.curve.key] = max(ends.get(f.curve.key, 0.0), min(c.size * 1.5, c.d_range[1]))
    for i, arch in enumerate(repeated):
        a = rows[rows["curve"] == arch]
        mean = a.groupby("size")["error"].mean()
        fit = fits.get(arch)
        label = fit.curve.name if fit is not None else next((s for s in a["label"] if s), arch)
        colour = arch_colour[arch]
        why = fit.reason if fit is not None and fit.reason else ""
        fig.add_trace(go.Scatter(
            x=mean.index.to_numpy(dtype=float), y=mean.to_numpy(), mode="lines+markers", name=label,
            legendgroup=f"arch-{arch}", legendgrouptitle_text="architecture" if i == 0 else None,
            line=dict(dash="dash", width=1.5, color=colour), marker=dict(size=6),
            hovertemplate=f"{html.escape(label)}: mean error %{{y:.2%}} at %{{x:,}}"
                          + (f"<br>no fit: {html.escape(why)}" if why else "") + "<extra></extra>",
            meta={"role": "arch", "arch": label, "fit": why or None}))
        law = fit.preferred if fit is not None and not fit.reason else None
        if law is None:
            continue
        d = fit.curve.sizes
        grid = np.geomspace(d[0], max(d[-1], ends.get(arch, 0.0)), 80)
        band = law.band(grid, fit.level)
        text = _law_text(law)
        if band is not None:
            lo, hi = band
            fig.add_trace(go.Scatter(
                x=np.r_[grid, grid[::-1]], y=np.r_[hi, lo[::-1]], mode="lines", fill="toself",
                fillcolor=_rgba(colour, 0.2), line=dict(width=0), hoverinfo="skip", showlegend=False,
                legendgroup=f"arch-{arch}", name=f"{label}: {fit.level:.0%} band",
                meta={"role": "fit_band", "arch": label, "law": law.law.name, "level": fit.level,
                      "scheme": fit.scheme, "n_boot": fit.n_boot}))
        fig.add_trace(go.Scatter(
            x=grid, y=law.predict(grid), mode="lines", line=dict(color=colour, width=2.5),
            name=f"{label}: {law.law.name} fit", legendgroup=f"arch-{arch}", showlegend=False,
            hovertemplate=f"{html.escape(label)}: fitted error %{{y:.2%}} at %{{x:,.0f}}<br>{text}<extra></extra>",
            meta={"role": "fit", "arch": label, "arch_id": fit.curve.arch_id, "curve": arch, "law": law.law.name,
                  "params": {p: law.value(p) for p in law.law.params},
                  "ci": {p: list(v) for p, v in law.ci.items()}, "preferred": True}))
    for c in cross:
        lo = c.lo if math.isfinite(c.lo) and c.lo > 0 else c.d_range[0]
        hi = c.hi if math.isfinite(c.hi) else c.d_range[1]
        lead, over = c.leader.curve.name, c.overtaker.curve.name
        ci = f"[{_num(c.lo)}, {_num(c.hi)}]"
        fig.add_trace(go.Scatter(
            x=[c.size], y=[c.error], mode="markers", marker=dict(symbol="x-thin-open", size=14, color="#222",
                                                                line=dict(width=2)),
            error_x=dict(type="data", symmetric=False, array=[hi - c.size], arrayminus=[c.size - lo], color="#222",
                         thickness=1.5, width=6),
            name=f"{over} overtakes {lead}", legendgroup="crossover", legendgrouptitle_text="crossover",
            hovertemplate=(f"{html.escape(over)} ({html.escape(c.overtaker.curve.family)}) overtakes "
                           f"{html.escape(lead)} ({html.escape(c.leader.curve.family)})<br>at D ≈ {_num(c.size)} "
                           f"{ci} ({c.level:.0%} interval; {c.p_cross:.0%} of bootstrap samples cross)"
                           "<extra></extra>"),
            meta={"role": "crossover", "leader": lead, "overtaker": over, "size": c.size, "lo": c.lo, "hi": c.hi,
                  "p_cross": c.p_cross, "level": c.level}))
    _layout(fig, f"Scaling: error vs training-set size ({rows['size'].nunique()} sizes)", height=600,
            legend=dict(title=None if by_arch else data.group_by))
    fig.update_xaxes(type="log", dtick="D2",
                     title="training images (log scale)" if use_n else "data fraction (log scale)")
    fig.update_yaxes(type="log", dtick="D2", tickformat=".1%",
                     title=accuracy_title(data.accuracy).replace("accuracy", "error") + " (log scale)")
    return fig


def _num(v: float) -> str:
    """A size for a hover: 1,234, or 0.05 for a fraction; 0 and inf (an interval's open ends) in words."""
    if v == 0:
        return "below the range"
    if math.isinf(v):
        return "beyond the range"
    if math.isnan(v):
        return "–"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
