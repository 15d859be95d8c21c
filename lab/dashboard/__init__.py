"""Dashboards: one HTML page per study (or set of studies) drawn with Plotly from the study's
Parquet tables alone: Pareto fronts, learning curves, the design space, the importance of the
sampled choices, scaling with the training-set size, the trial table and the recipe.

    from lab.dashboard import render
    path = render(["hybrid-mnist5k"])            # -> dashboards/hybrid-mnist5k.html

Modules, one job each: `data` loads the studies' rows, `importance` ranks the sampled choices,
`figures` turns rows into Plotly figures, `page` writes the HTML and the index, `serve` re-renders
a page while a study runs.
"""

from lab.dashboard.data import DashboardData, load
from lab.dashboard.page import default_out, render, write_index
from lab.study.config import find_study

__all__ = ["DashboardData", "default_out", "find_study", "load", "render", "write_index"]
