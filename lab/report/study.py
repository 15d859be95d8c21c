"""`lab study report NAME`: what a scaling study measured and what it says about its claims.

The report is built from the study's Parquet tables alone: per arm its architecture, cost and
accuracy at each fraction (mean, standard deviation and seeds), the power-law exponent of its
error, the teachers its distilling arms learned from, and each claim's comparisons and verdict
(lab.study.claims).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lab.errors import StudyError
from lab.report.fits import curves_from_rows, resolve_metric
from lab.report.table import render
from lab.scaling.curves import fit_curves
from lab.study.claims import ClaimResult, cells, evaluate, parse_claims
from lab.study.config import StudyConfig, find_study
from lab.study.store import StudyStore
from lab.study.tables import curve_keys, read_studies
from lab.train.record import read_records


@dataclass
class StudyReport:
    name: str
    folder: Path
    config: StudyConfig
    metric: str
    level: float
    arms: list[dict]                  # name, arch, family, params, macs, recipe, teacher, b, b_lo, b_hi
    accuracy: pd.DataFrame            # arm, fraction, n_train, mean, sd, seeds
    teachers: list[dict] = field(default_factory=list)   # teacher, fraction, seed, test_top1
    claims: list[ClaimResult] = field(default_factory=list)
    states: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "folder": str(self.folder), "dataset": self.config.dataset, "metric": self.metric,
                "level": self.level, "states": self.states, "arms": self.arms,
                "accuracy": json.loads(self.accuracy.to_json(orient="records")),
                "teachers": self.teachers, "claims": [c.to_dict() for c in self.claims]}

    @property
    def macs_spread(self) -> float | None:
        """Largest over smallest MACs among the arms (how well matched their compute is)."""
        macs = [a["macs"] for a in self.arms if a.get("macs")]
        return max(macs) / min(macs) if macs else None


def _teachers(folder: Path) -> list[dict]:
    out = []
    for table in sorted((folder / "teachers").glob("*/runs.parquet")):
        for row in read_records(table).to_pylist():
            if row["state"] == "complete":
                out.append({"teacher": table.parent.name, "arch_id": row["arch_id"], "fraction": row["fraction"],
                            "n_train": row["n_train"], "seed": row["seed"], "epochs": row["epochs"],
                            "test_top1": row["test_top1"]})
    return out


def build_report(name: str | Path, root: str | Path | None = None, level: float = 0.95, n_boot: int = 1000,
                 metric: str = "auto", seed: int = 0) -> StudyReport:
    """The report of scaling study `name` (a name under `root`, or a study folder)."""
    folder = find_study(str(name), root)
    config = StudyConfig(**StudyStore(folder).load_config())
    if config.kind != "scaling":
        raise StudyError(f"study {config.name!r} is a search: `lab study report` reads scaling studies "
                         "(`lab study show` summarises a search)")
    rows = read_studies([folder]).trials
    states = rows["state"].value_counts().to_dict() if len(rows) else {}
    done = rows[rows["state"] == "complete"]
    metric = resolve_metric(done, metric)
    table = cells(done, metric)

    fits = {}
    if len(done):
        curves, _, _ = curves_from_rows(done, metric=metric, size="n_train")
        fits = {f.curve.key: f for f in fit_curves(curves, ("power",), n_boot=n_boot, seed=seed, level=level)}
    n_train = done.groupby("fraction")["n_train"].median() if len(done) else pd.Series(dtype=float)   # a cell's own
    accuracy = (table.groupby(["arm", "fraction"])["acc"].agg(mean="mean", sd="std", seeds="count").reset_index()
                if len(table) else pd.DataFrame(columns=["arm", "fraction", "mean", "sd", "seeds"]))
    accuracy.insert(2, "n_train", [n_train.get(f) for f in accuracy["fraction"]])

    arms, grid = [], config.arms()
    keys = curve_keys(done) if len(done) else None
    for arm in grid:
        mine = done[keys == arm.name] if len(done) else done
        info = {"name": arm.name, "arch": arm.arch, "recipe": arm.recipe, "teacher": arm.teacher,
                "family": _first(mine, "family"), "params": _first(mine, "params"), "macs": _first(mine, "macs"),
                "b": None, "b_lo": None, "b_hi": None, "b_note": None}
        fit = fits.get(arm.name)
        law = fit.laws.get("power") if fit is not None and not fit.reason else None
        if law is not None and law.ok:
            lo, hi = law.ci.get("b", (math.nan, math.nan))
            info.update(b=law.value("b"), b_lo=lo if math.isfinite(lo) else None, b_hi=hi if math.isfinite(hi) else None)
        else:
            info["b_note"] = (fit.reason if fit is not None and fit.reason else
                              law.reason if law is not None else "no complete trials")
        arms.append(info)
    claims = parse_claims(config.claims or [], [a.name for a in grid])
    results = evaluate(claims, done, metric, fits, level)
    return StudyReport(config.name, folder, config, metric, level, arms, accuracy, _teachers(folder), results, states)


def _first(frame: pd.DataFrame, column: str):
    if column not in frame:
        return None
    values = frame[column].dropna()
    if not len(values):
        return None
    v = values.iloc[0]
    return v.item() if hasattr(v, "item") else v


# --- text ------------------------------------------------------------------------------------

def _pct(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{100 * v:.1f}"


def _table(rows: list[dict]) -> str:
    return render(list(rows[0]), [list(r.values()) for r in rows]) if rows else ""


def format_report(report: StudyReport) -> str:
    """The report as text for a terminal."""
    c = report.config
    assert c.fractions is not None  # a scaling study's config (build_report reads no other)
    lines = [f"study {report.name} ({c.dataset}, {report.metric}; fractions "
             f"{', '.join(f'{f:g}' for f in c.fractions)}; {c.seeds} seed{'s' * (c.seeds > 1)}; "
             f"{c.epochs} epoch{'s' * (c.epochs > 1)} at the largest fraction, {c.epochs_policy})",
             "trials: " + ", ".join(f"{n} {s}" for s, n in sorted(report.states.items())), ""]
    arm_rows = []
    for a in report.arms:
        extra = ", ".join([f"{k}={v}" for k, v in a["recipe"].items()] + ([f"teacher {a['teacher']}"] if a["teacher"] else []))
        b = "–" if a["b"] is None else f"{a['b']:.3f}" + (
            f" [{a['b_lo']:.3f}, {a['b_hi']:.3f}]" if a["b_lo"] is not None and a["b_hi"] is not None else "")
        arm_rows.append({"arm": a["name"], "family": a["family"] or "–",
                         "params": "–" if a["params"] is None else f"{a['params'] / 1e3:,.0f}k",
                         "MMACs": "–" if a["macs"] is None else f"{a['macs'] / 1e6:.1f}",
                         "b (power law)": b, "recipe / teacher": extra or "–", "arch": a["arch"]})
    lines.append("arms (b: error ~ D^-b, with its interval)")
    lines.append(_table(arm_rows))
    for a in report.arms:
        if a["b"] is None and a["b_note"]:
            note = a["b_note"] if a["b_note"].startswith(a["name"] + ":") else f"{a['name']}: {a['b_note']}"
            lines.append(f"no exponent: {note}")
    spread = report.macs_spread
    if spread is not None:
        lines.append(f"MACs: the arms span {spread:.2f}x (largest / smallest)")
    lines.append("")
    acc = report.accuracy
    if len(acc):
        fracs = sorted(acc["fraction"].unique())
        n_train = {f: acc.loc[acc["fraction"] == f, "n_train"].dropna() for f in fracs}
        header = {f: f"{f:g} ({int(n_train[f].iloc[0]):,} img)" if len(n_train[f]) else f"{f:g}" for f in fracs}
        table = []
        for arm in [a["name"] for a in report.arms]:
            row = {"arm": arm}
            for f in fracs:
                cell = acc[(acc["arm"] == arm) & (acc["fraction"] == f)]
                if cell.empty:
                    row[header[f]] = "–"
                else:
                    m, sd, n = cell["mean"].iloc[0], cell["sd"].iloc[0], int(cell["seeds"].iloc[0])
                    row[header[f]] = _pct(m) + (f" ±{100 * sd:.1f}" if n > 1 and math.isfinite(sd) else "") + f" ({n})"
            table.append(row)
        lines.append(f"{report.metric} in % by training fraction: mean ±sd over seeds (seeds)")
        lines.append(_table(table))
        lines.append("")
    if report.teachers:
        for arm in sorted({t["teacher"].rsplit("-f", 1)[0] for t in report.teachers}):
            acc = [t["test_top1"] for t in report.teachers if t["teacher"].rsplit("-f", 1)[0] == arm
                   and t["test_top1"] is not None]
            lines.append(f"teacher {arm}: {len(acc)} cached run{'s' * (len(acc) != 1)} (one per fraction and seed), "
                         "test top-1 " + (f"{_pct(min(acc))}-{_pct(max(acc))}%" if acc else "–"))
        lines.append("")
    if not report.claims:
        lines.append("no claims: the study's recipe lists none (`claims:` in a study recipe)")
    for i, r in enumerate(report.claims, 1):
        lines.append(f"claim {i}: {r.claim.says}")
        lines.append(f"  verdict: {r.verdict.upper()} ({r.claim.test}; {report.level:.0%} intervals)")
        for cmp in r.comparisons:
            note = f" ({cmp.note})" if cmp.note else ""
            lines.append(f"  {cmp.arm} vs {cmp.than}: {cmp.statistic} = {cmp.measured(r.claim.test)} -> "
                         f"{cmp.verdict}{note}")
        lines.append("")
    if report.claims:
        lines.append("Intervals are per comparison (no multiple-comparison correction); `beats` and `closes-gap` pair "
                     "arms by seed (the same nested subset), t intervals over seeds; `steeper` compares bootstrap "
                     "samples of the power-law exponents.")
    return "\n".join(lines).rstrip() + "\n"
