"""The sampler comparison of `lab bench search` as a page: each sampler's mean anytime hypervolume
against trained trials, with its interval as a band."""

from __future__ import annotations

import html
import json
from pathlib import Path

import plotly.graph_objects as go

from lab.dashboard.figures import PALETTE, _layout, _rgba
from lab.dashboard.page import _write_plotly_js, check_ours
from lab.files import atomic_write


def search_figure(report: dict) -> go.Figure:
    """Mean hypervolume [interval] per sampler at each N of `report` (Comparison.to_dict())."""
    fig = go.Figure()
    pct = round(100 * report["level"])
    for i, sampler in enumerate(report["samplers"]):
        colour = PALETTE[i % len(PALETTE)]
        cells = sorted((s for s in report["summary"] if s["sampler"] == sampler and s["mean"] is not None),
                       key=lambda s: s["trials"])
        x = [s["trials"] for s in cells]
        fig.add_trace(go.Scatter(x=x + x[::-1], y=[s["hi"] for s in cells] + [s["lo"] for s in cells][::-1],
                                 mode="lines", fill="toself", fillcolor=_rgba(colour, 0.15), line=dict(width=0),
                                 hoverinfo="skip",
                                 showlegend=False, legendgroup=sampler))
        fig.add_trace(go.Scatter(x=x, y=[s["mean"] for s in cells], mode="lines+markers", name=sampler,
                                 legendgroup=sampler, line=dict(color=colour, width=2.5),
                                 customdata=[[s["lo"], s["hi"], s["seeds"]] for s in cells],
                                 hovertemplate=(f"{sampler} @%{{x}}: %{{y:.4f}}<br>{pct}% interval "
                                                "[%{customdata[0]:.4f}, %{customdata[1]:.4f}], %{customdata[2]} seeds"
                                                "<extra></extra>")))
    _layout(fig, f"Anytime hypervolume over {report['seeds']} seeds (band: {pct}% interval of the mean)")
    fig.update_xaxes(title="trained trials", type="log", tickvals=report["at"])
    fig.update_yaxes(title="hypervolume (val top-1 x MACs, share of the budget)")
    return fig


def render_search(report: dict, out: str | Path) -> Path:
    """Write the comparison page to `out` (plotly.js beside it); returns its path."""
    out = Path(out)
    check_ours(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    script = _write_plotly_js(out.parent)
    body = search_figure(report).to_html(full_html=False, include_plotlyjs=False)
    title = html.escape(f"lab bench search: {report['bench']}")
    meta = {"kind": "bench-search", "name": out.stem, "states": {}}   # what marks the page as the lab's (page.lab_wrote)
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>'
            f"<meta name='lab-dashboard' content='{html.escape(json.dumps(meta), quote=True)}'>"
            f'<script src="{script}"></script></head><body><h2>{title}</h2>{body}</body></html>\n')
    atomic_write(out, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return out
