"""The dashboard's views, declared once each in `VIEWS`: a view is a section of the page (its id,
title, navigation link and help text) with its figures and what it says when a figure has nothing
to draw. The page (lab.dashboard.page) is built by walking the table in order, so a new view is one
`View(...)` entry here plus its figure function (lab.dashboard.figures).

A view's callables take the page's `Context`: the rows, the WebGL threshold, what several views
share (the fANOVA importances, the claims; computed on first use) and, once drawn, the figures.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import plotly.graph_objects as go
import yaml

from lab.dashboard import calibration, target
from lab.dashboard import figures as F
from lab.dashboard.claims import claims_html
from lab.dashboard.data import DashboardData
from lab.dashboard.importance import importances


@dataclass
class Context:
    """What the views of one page are drawn from; `figures` fills in as the page draws them
    (a figure id is there only when it drew something)."""

    data: DashboardData
    gl_threshold: int = F.GL_THRESHOLD
    figures: dict[str, go.Figure] = field(default_factory=dict)

    @cached_property
    def importance(self) -> tuple[dict[str, float], str]:
        """The sampled choices' fANOVA importances and the note on them (the choices and
        importance figures share them: computed once)."""
        return importances(self.data)

    @cached_property
    def claims(self) -> str | None:
        """The claims section's HTML; None when no study lists claims."""
        return claims_html(self.data)


Text = str | Callable[[Context], str | None]   # HTML, fixed or made for the page (None or "": nothing)


def text(value: Text | None, ctx: Context) -> str:
    """A `Text` made for the page ("" for nothing)."""
    return (value(ctx) if callable(value) else value) or ""


def plot_div(fid: str) -> str:
    return f"<div class='plot' id='fig-{fid}'></div>"


def empty(message: str) -> str:
    return f"<p class='empty'>{message}</p>" if message else ""


@dataclass(frozen=True)
class Plot:
    """One figure of a view: its id (the div fig-ID, the key in the page's figures JSON), how it
    is drawn (None: nothing to draw) and what the page says in its place then ("": nothing)."""

    id: str
    draw: Callable[[Context], go.Figure | None]
    empty: Text = ""

    def html(self, ctx: Context) -> str:
        return plot_div(self.id) if self.id in ctx.figures else empty(text(self.empty, ctx))


def _joined(ctx: Context, parts: list[str]) -> str:
    return "".join(parts)


def _always(ctx: Context) -> bool:
    return True


@dataclass(frozen=True)
class View:
    """A section of the page. `body` makes the section's HTML from its plots' HTML (each plot's
    div, or its empty text), by default one after the other; `when` says whether the page has the
    view at all (the claims only for studies that list some)."""

    id: str                  # the section's id, the navigation's #anchor
    title: str               # the section's heading
    nav: str                 # the navigation link's text
    help: Text = ""          # the paragraph under the heading
    plots: tuple[Plot, ...] = ()
    body: Callable[[Context, list[str]], str] = _joined
    when: Callable[[Context], bool] = _always

    def html(self, ctx: Context) -> str:
        """The section, once its figures are drawn into `ctx.figures`."""
        body = self.body(ctx, [p.html(ctx) for p in self.plots])
        help_text = text(self.help, ctx)
        help_html = f"<p class='help'>{help_text}</p>" if help_text else ""
        return f"<section id='{self.id}'><h2>{self.title}</h2>{help_html}{body}</section>"


# --- the bodies that are more than their plots -----------------------------------------------

def _fronts(ctx: Context, parts: list[str]) -> str:
    if ctx.data.trained.empty:
        return empty("No trained trials: no fronts.")
    return f"<div class='grid'>{''.join(parts)}</div>"


def _trial_table(ctx: Context, parts: list[str]) -> str:
    # the page's script (page.JS_RENDER) fills #trial-table from the lab-table JSON, driven by these ids
    return ("<div class='tablebar'><input id='table-filter' placeholder='filter: any text in a row'> "
            "<span id='table-info'></span> <button id='table-more'>show more</button></div>"
            "<div id='trial-table' class='scroll'></div>")


def _recipe(ctx: Context, parts: list[str]) -> str:
    return "".join(f"<h3>{html.escape(s.name)}</h3><pre>{html.escape(yaml.safe_dump(s.config, sort_keys=False))}</pre>"
                   for s in ctx.data.studies)


def _front(x: str) -> Callable[[Context], go.Figure | None]:
    return lambda ctx: F.pareto_figure(ctx.data, x, ctx.gl_threshold)


FRONTS_HELP = (
    "Each trained trial is a point: colour is its {group} (the rarest share grey, 'other'), the shape its layout "
    "(circle isotropic, diamond hierarchical; open: stopped early by ASHA). The ringed line joins the 2-D Pareto set "
    "of the complete trials (no other trial is both more accurate and cheaper). Hover a point for its grammar text, "
    "arch_id, parameters, MACs, accuracy and data fraction; named architectures are labelled.")

SCALING_HELP = (
    "Error against training-set size on log-log axes: each trial a point (in its architecture's colour when every "
    "architecture was trained at several sizes, as in a scaling study; else by group, with a line through each "
    "group's best error at each size), dashed lines for the mean error of architectures trained at several sizes, "
    "and through them each one's preferred fitted scaling law (solid; <code>lab scale fit</code> prints every law) "
    "with the bootstrap band of the fitted curve. A cross with a horizontal bar marks where an architecture of one "
    "family overtakes one of another, with the interval of that size.")


VIEWS: tuple[View, ...] = (
    View("fronts", "Pareto fronts", "fronts", help=lambda ctx: FRONTS_HELP.format(group=ctx.data.group_by),
         plots=(Plot("pareto_macs", _front("macs")), Plot("pareto_params", _front("params")),
                Plot("pareto_throughput", _front("images_per_second"),
                     empty="No measured throughput (images/s) in these trials: no throughput front.")),
         body=_fronts),
    View("target", "Predicted at N", "predicted at N", help=lambda ctx: target.help_text(ctx.data),
         plots=(Plot("target", lambda ctx: target.target_figure(ctx.data),
                     empty="No trial has both a prediction and a MAC count: nothing to plot."),),
         when=lambda ctx: target.has_predictions(ctx.data)),
    View("curves", "Learning curves", "curves",
         help="Validation accuracy and training loss after each epoch, one line per trial; trials stopped early by "
              "the scheduler in orange, a cross where they stopped.",
         plots=(Plot("curves", lambda ctx: F.curves_figure(ctx.data, ctx.gl_threshold),
                     empty="No per-epoch curves recorded yet."),)),
    View("space", "Design space", "design space",
         help="As in RegNet's <i>Designing Network Design Spaces</i>: the empirical distribution of the error of the "
              "complete trials, per block kind (a net counts under every kind it uses) and per stage layout (a curve "
              "further left and higher is a better region); then accuracy against each sampled choice.",
         plots=(Plot("edf", lambda ctx: F.edf_figure(ctx.data), empty="No complete trials: no error distributions."),
                Plot("choices", lambda ctx: F.choices_figure(ctx.data, list(ctx.importance[0]), ctx.gl_threshold),
                     empty="No sampled choice varies among the complete trials."))),
    View("importance", "Importance of the sampled choices", "importance",
         help="Each sampled choice's share of the variance of the accuracy over the complete trials: Optuna's fANOVA "
              "evaluator (a random forest and its functional ANOVA) on a study rebuilt from the table's sampled "
              "choices (an absent conditional choice counts as its own value).",
         plots=(Plot("importance", lambda ctx: F.importance_figure(ctx.importance[0]),
                     empty=lambda ctx: html.escape(ctx.importance[1])),)),
    View("scaling", "Scaling with the training-set size", "scaling",
         help=lambda ctx: SCALING_HELP if "scaling" in ctx.figures else None,   # no help beside the empty text
         plots=(Plot("scaling", lambda ctx: F.scaling_figure(ctx.data, ctx.gl_threshold),
                     empty="One training-set size only: a scaling view needs trials at several data fractions "
                           "(give several studies, e.g. <code>lab dashboard A B</code>)."),)),
    View("calibration", "Calibration of extrapolation", "calibration", help=lambda ctx: calibration.help_text(ctx.data),
         plots=(Plot("calibration", lambda ctx: calibration.calibration_figure(calibration.validation(ctx.data))),),
         when=lambda ctx: calibration.validation(ctx.data) is not None),
    View("claims", "Claims", "claims",
         help="The claims the study's recipe puts to the test (<code>lab study report NAME</code> prints the same "
              "with every arm's accuracy). A comparison is supported when its interval lies above 0, contradicted "
              "when below, inconclusive otherwise; intervals are per comparison, without multiple-comparison "
              "correction. <i>beats</i> and <i>closes-gap</i> pair the arms by seed (the same nested subset), with "
              "t intervals over seeds; <i>steeper</i> compares bootstrap samples of the power-law exponents.",
         body=lambda ctx, parts: ctx.claims or "", when=lambda ctx: bool(ctx.claims)),
    View("trials", "Trials", "trials", help="Every trial of the table; click a header to sort.", body=_trial_table),
    View("recipe", "Recipe", "recipe", help="The study's frozen settings (study.yaml).", body=_recipe),
)
