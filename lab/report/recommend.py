"""Which architecture for how much data (`lab recommend`): every architecture the studies measured
at several training-set sizes, its law fitted and its accuracy predicted at N images
(lab.report.predictions), kept when within a MACs-per-image or parameter budget, and ranked by
the predicted accuracy.

    rec = recommend(["scaling-mnist5k"], data=40_000, macs=5e6)
    print(format_recommendation(rec))            # rec.ranked, rec.unranked, rec.over_budget, rec.warnings

A prediction far beyond the largest size an architecture was measured at rests on the law holding
there; `lab scale extrapolate` validated factors of about 3x, so each row beyond WARN_FACTOR
carries a warning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lab.errors import ScalingError
from lab.report.predictions import predict_points, size_points
from lab.report.table import render
from lab.scaling.predict import LAW_CHOICES, Noise
from lab.study.tables import read_studies

WARN_FACTOR = 4.0        # beyond this factor (N / largest measured size) a row is flagged
VALIDATED_FACTOR = 3.3   # the factor BENCHMARKS.md's extrapolation check (issue 21) measured predictions at
TEXT_WIDTH = 60          # grammar text shown in the table, at most (JSON: all of it)


@dataclass
class Recommendation:
    """The ranked rows (best predicted accuracy first, `top` at most), the architectures without a
    prediction (`unranked`, each with its reason) and how many the budget left out."""

    studies: list[str]
    folders: list[Path]
    data: int
    law: str
    level: float
    noise: Noise
    budget: tuple[str, float] | None          # ("macs" | "params", the most allowed)
    ranked: list[dict] = field(default_factory=list)
    unranked: list[dict] = field(default_factory=list)
    over_budget: int = 0
    ranked_total: int = 0                     # ranked architectures before the `top` cut

    @property
    def warnings(self) -> list[str]:
        return [r["warning"] for r in self.ranked if r.get("warning")]

    def as_dict(self) -> dict:
        """What `lab recommend --json` prints (lab.report.jsonable.to_json makes it strict JSON)."""
        budget = None if self.budget is None else {"kind": self.budget[0], "max": self.budget[1]}
        return {"studies": self.studies, "target": self.data, "law": self.law, "level": self.level,
                "budget": budget, "noise": {"sd": self.noise.sd, "dof": self.noise.dof, "drift": self.noise.drift},
                "ranked": self.ranked, "ranked_total": self.ranked_total, "unranked": self.unranked,
                "over_budget": self.over_budget, "warn_factor": WARN_FACTOR}


def recommend(studies: Sequence[str | Path], data: int, macs: float | None = None, params: float | None = None,
              law: str = "power", level: float = 0.95, root: str | Path | None = None,
              top: int | None = None) -> Recommendation:
    """The studies' architectures ranked by their predicted accuracy at `data` training images,
    within the budget (`macs` per image or `params`, at most one of them)."""
    budget = _budget(macs, params)
    if isinstance(data, bool) or not isinstance(data, (int, np.integer)) or data < 1:
        raise ScalingError(f"--data {data!r}: expected a whole number of training images >= 1")
    if law not in LAW_CHOICES:
        raise ScalingError(f"--law {law!r}: expected one of {', '.join(LAW_CHOICES)}")
    if top is not None and top < 1:
        raise ScalingError(f"--top {top}: expected a whole number >= 1")
    read = read_studies(studies, root)
    points = size_points(read.trials)
    if points.empty:
        raise ScalingError(f"no trial of {'+'.join(read.names)} has a val_top1 at a training-set size: recommend needs "
                           f"a scaling study's complete trials or a --target-size study's ladders")
    curves, predictions = predict_points(points, float(data), law=law, level=level)
    studies_of = points.groupby("key")["study"].agg(lambda s: "+".join(sorted(set(map(str, s))))).to_dict()
    out = Recommendation(read.names, read.folders, int(data), law, level, predictions[0].noise if predictions else Noise(),
                         budget)
    ranked = []
    for c, p in zip(curves, predictions):
        row = _row(c, p, studies_of.get(c.key, ""))
        within = _within(row, budget)
        if within is None:
            out.unranked.append({**row, "reason": f"{c.name}: no {budget and budget[0]} recorded to check the budget against"})
        elif not within:
            out.over_budget += 1
        elif not p.ok:
            out.unranked.append({**row, "reason": p.reason})
        else:
            ranked.append(row)
    ranked.sort(key=lambda r: (-r["predicted"], r["key"]))
    out.ranked_total = len(ranked)
    out.ranked = [{"rank": i + 1, **r} for i, r in enumerate(ranked[:top] if top else ranked)]
    return out


def _budget(macs: float | None, params: float | None) -> tuple[str, float] | None:
    if macs is not None and params is not None:
        raise ScalingError("--macs and --params: give one budget, not both")
    for kind, value in (("macs", macs), ("params", params)):
        if value is not None:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ScalingError(f"--{kind} {value!r}: expected a positive number")
            return kind, float(value)
    return None


def _within(row: dict, budget: tuple[str, float] | None) -> bool | None:
    """Whether the row's cost is within the budget (True without one); None when it has no such cost."""
    if budget is None:
        return True
    cost = row[budget[0]]
    return None if cost is None else bool(cost <= budget[1])


def _number(v: object) -> float | None:
    """A finite number, or None (a missing cost reads as NaN or None from the tables)."""
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _row(curve, p, studies: str) -> dict:
    info = curve.info
    lo, hi = p.accuracy_interval if p.ok else (None, None)
    row = {"arch": curve.name, "arch_id": curve.arch_id or None, "family": curve.family or None,
           "text": info.get("text") if isinstance(info.get("text"), str) else None, "key": curve.key,
           "dataset": info.get("dataset"), "study": studies, "macs": _number(info.get("macs")),
           "params": _number(info.get("params")), "sizes": [float(s) for s in curve.sizes],
           "runs": [int(n) for n in curve.counts], "law": p.law if p.ok else None,
           "predicted": p.accuracy if p.ok else None, "lo": lo, "hi": hi,
           "d_max": float(p.d_max) if p.sizes else None, "factor": float(p.factor) if p.sizes else None,
           "warning": None}
    warnings = []
    if p.ok and p.factor > WARN_FACTOR:
        warnings.append(f"{curve.name} is extrapolated {p.factor:.1f}x beyond its largest measured size "
                        f"{p.d_max:,.0f}: the extrapolation check (`lab scale extrapolate`) validated factors of "
                        f"{VALIDATED_FACTOR:g}x (BENCHMARKS.md)")
    if p.ok and p.accelerating:
        warnings.append(f"{curve.name} is still taking off at its measured sizes (its error falls faster at the largest "
                        f"ones): the {p.law} law under-predicts its accuracy at {p.size:,.0f}")
    row["warning"] = "; ".join(warnings) or None
    return row


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}%"


def _sizes(sizes: list[float]) -> str:
    return ",".join(f"{s:.0f}" for s in sizes)


def _short(text: str | None) -> str:
    if not text:
        return ""
    return text if len(text) <= TEXT_WIDTH else text[:TEXT_WIDTH - 3] + "..."


def _cost(v: float | None) -> str:
    return "" if v is None else f"{v / 1e6:.4g}"


def _named_by_id(row: dict) -> bool:
    """Whether the row's label is its arch_id (grammar text): then the table shows the text."""
    return bool(row.get("text")) and row["arch"] == row.get("arch_id")


def format_recommendation(rec: Recommendation) -> str:
    """The header line, the ranking, the architectures not ranked and the budget's count, as text
    (the warnings are `rec.warnings`, for stderr)."""
    budget = _budget_text(rec.budget)
    lines = [f"recommendation for {rec.data:,} training images from {'+'.join(rec.studies)}: the {rec.law} law, noise sd "
             f"{rec.noise.sd:.3f} (log error, {rec.noise.dof:g} dof), drift {rec.noise.drift:.3f} per unit log size "
             f"beyond the data, {rec.level:.0%} prediction intervals; "
             f"budget: {budget}"]
    datasets = {r.get("dataset") for r in rec.ranked + rec.unranked}
    texts = any(_named_by_id(r) for r in rec.ranked + rec.unranked)
    headers = ["rank", "arch", "family", f"predicted val top-1 [{rec.level:.0%}]", "MMACs", "params (M)",
               "sizes measured", "law", "factor", "study"]
    align = "><<>>><<><"
    if len(datasets) > 1:
        headers, align = [*headers, "dataset"], align + "<"
    if texts:
        headers, align = [*headers, "text"], align + "<"

    def extra(r: dict) -> list[str]:
        return ([str(r.get("dataset") or "")] if len(datasets) > 1 else []) + \
            ([_short(r.get("text")) if _named_by_id(r) else ""] if texts else [])

    if rec.ranked:
        rows = [[str(r["rank"]), r["arch"], r["family"] or "", f"{_pct(r['predicted'])} [{_pct(r['lo'])}, {_pct(r['hi'])}]",
                 _cost(r["macs"]), _cost(r["params"]), _sizes(r["sizes"]), r["law"] or "", f"{r['factor']:.1f}x",
                 r["study"], *extra(r)] for r in rec.ranked]
        lines.append(render(headers, rows, align=align))
        if rec.ranked_total > len(rec.ranked):
            lines.append(f"... and {rec.ranked_total - len(rec.ranked)} more ranked (--top {len(rec.ranked)})")
    else:
        lines.append("no architecture could be ranked" + (" within the budget" if rec.budget else ""))
    if rec.unranked:
        lines.append("\nnot ranked:")
        rows = [[r["arch"], r["family"] or "", _sizes(r["sizes"]), _reason(r), *extra(r)] for r in rec.unranked]
        lines.append(render(["arch", "family", "sizes measured", "reason", *headers[10:]], rows,
                            align="<<<<" + align[10:]))
    if rec.budget is not None:
        n = rec.over_budget
        lines.append(f"over the budget ({budget}): {n} architecture{'' if n == 1 else 's'} left out")
    return "\n".join(lines)


def _budget_text(budget: tuple[str, float] | None) -> str:
    if budget is None:
        return "none"
    kind, most = budget
    return f"macs <= {most / 1e6:g} MMACs per image" if kind == "macs" else f"params <= {most / 1e6:g} M"


def _reason(row: dict) -> str:
    """The reason without the architecture's name, which the row shows."""
    reason, prefix = str(row.get("reason") or ""), f"{row['arch']}: "
    return reason[len(prefix):] if reason.startswith(prefix) else reason

