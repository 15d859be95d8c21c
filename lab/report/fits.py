"""From study rows to scaling curves, and from fits to the `scaling_fits.parquet` table (what
`lab scale fit` prints and writes, and the dashboard's scaling view draws).

A curve is one architecture (one `arch_id`, or one arm of a scaling study: an architecture trained
one way; per dataset when the studies mix datasets): its complete trials, error = 1 - accuracy
against the training-set size, the seeds at one size being its runs. Architectures are named as
the dashboard names them (a named architecture, natively or rescaled: `resnet18@28px,w=0.25`),
else by their arch_id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lab.errors import ScalingError
from lab.files import atomic_write
from lab.scaling.crossover import SPAN, Crossover, crossovers
from lab.scaling.curves import DEFAULT_LAWS, Curve, CurveFit, fit_curves
from lab.study.tables import arch_labels, curve_keys, read_studies

METRICS = ("test_top1", "val_top1", "test_top5", "val_top5")
METRIC_ALIASES = {"test_acc": "test_top1", "val_acc": "val_top1", "acc": "val_top1"}
SIZES = ("n_train", "fraction")
FITS_FILE = "scaling_fits.parquet"
CROSSOVERS_FILE = "scaling_crossovers.parquet"

# name, type, meaning: one row per (architecture, law); a degenerate architecture has one row,
# law null, with the reason
FIT_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("studies", pa.string(), "the studies the rows come from, joined with '+'"),
    ("arch", pa.string(), "named architecture (as the dashboard labels it), else the arch_id"),
    ("arch_id", pa.string(), "stable id of the grammar point"),
    ("family", pa.string(), "the architecture's family"),
    ("dataset", pa.string(), "dataset of its trials"),
    ("metric", pa.string(), "accuracy column the error is 1 minus (test_top1, or val_top1 where a test accuracy is missing)"),
    ("size_column", pa.string(), "what D is: n_train (training images) or fraction"),
    ("law", pa.string(), "power (a*D^-b), saturating (a*D^-b + c) or broken (slope b, then b2 beyond d_break); "
                         "null for a degenerate architecture"),
    ("a", pa.float64(), "the law's coefficient a"),
    ("b", pa.float64(), "the exponent b (below the break, for the broken law)"),
    ("b_lo", pa.float64(), "lower end of b's bootstrap percentile interval"),
    ("b_hi", pa.float64(), "upper end of b's interval"),
    ("c", pa.float64(), "the saturating law's irreducible error c (null for the other laws)"),
    ("c_lo", pa.float64(), "lower end of c's interval"),
    ("c_hi", pa.float64(), "upper end of c's interval"),
    ("b2", pa.float64(), "the broken law's exponent beyond the break"),
    ("b2_lo", pa.float64(), "lower end of b2's interval"),
    ("b2_hi", pa.float64(), "upper end of b2's interval"),
    ("d_break", pa.float64(), "the broken law's break size"),
    ("rmse_log", pa.float64(), "root-mean-square log-space residual over the sizes (0.05: about 5% per size)"),
    ("aicc", pa.float64(), "small-sample AIC of the fit (null with too few sizes)"),
    ("preferred", pa.bool_(), "the architecture's preferred law: lowest AICc, else the power law"),
    ("n_sizes", pa.int64(), "distinct training-set sizes"),
    ("n_points", pa.int64(), "runs (trials) over all sizes"),
    ("d_min", pa.float64(), "smallest size"),
    ("d_max", pa.float64(), "largest size"),
    ("bootstrap", pa.string(), "what the intervals resample: seeds (within each size), residuals (over the points), none"),
    ("n_boot", pa.int64(), "bootstrap samples"),
    ("level", pa.float64(), "the intervals' confidence level"),
    ("extrap_size", pa.float64(), "the largest size, held out: the law is fitted on the smaller ones"),
    ("extrap_predicted", pa.float64(), "the held-out fit's error predicted at extrap_size"),
    ("extrap_observed", pa.float64(), "the mean error measured at extrap_size"),
    ("extrap_rel_error", pa.float64(), "predicted / observed - 1"),
    ("extrap_reason", pa.string(), "why there is no extrapolation check (too few sizes)"),
    ("reason", pa.string(), "why this row has no numbers; null when fitted"),
]
FIT_SCHEMA = pa.schema([pa.field(n, t) for n, t, _ in FIT_FIELDS])

CROSSOVER_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("leader", pa.string(), "the architecture with the lower error below the crossing"),
    ("leader_family", pa.string(), "its family"),
    ("overtaker", pa.string(), "the architecture with the lower error above it"),
    ("overtaker_family", pa.string(), "its family"),
    ("leader_law", pa.string(), "the law fitted to the leader (its preferred one)"),
    ("overtaker_law", pa.string(), "the law fitted to the overtaker"),
    ("d_cross", pa.float64(), "the size where the fitted curves cross"),
    ("d_lo", pa.float64(), "lower end of its bootstrap interval (0: below the searched range)"),
    ("d_hi", pa.float64(), "upper end (inf: beyond the searched range)"),
    ("p_cross", pa.float64(), "share of bootstrap samples that cross inside the range"),
    ("error", pa.float64(), "the fitted error at the crossing"),
    ("range_lo", pa.float64(), "searched range: the smallest measured size"),
    ("range_hi", pa.float64(), f"to {SPAN:g} x the largest measured size"),
    ("level", pa.float64(), "the interval's confidence level"),
]
CROSSOVER_SCHEMA = pa.schema([pa.field(n, t) for n, t, _ in CROSSOVER_FIELDS])


def resolve_metric(rows: pd.DataFrame, metric: str = "auto") -> str:
    """The accuracy column errors come from: `metric`, or with "auto" test_top1 when every row
    has one, else val_top1."""
    metric = METRIC_ALIASES.get(metric, metric)
    if metric == "auto":
        test = pd.to_numeric(rows.get("test_top1", pd.Series(dtype=float)), errors="coerce")
        return "test_top1" if len(rows) and test.notna().all() else "val_top1"
    if metric not in METRICS:
        raise ScalingError(f"metric {metric!r}: expected auto or one of {', '.join(METRICS)}")
    return metric


def resolve_size(rows: pd.DataFrame, size: str = "auto") -> str:
    """What D is: `size`, or with "auto" n_train when every row has a positive one, else fraction."""
    if size == "auto":
        n = pd.to_numeric(rows.get("n_train", pd.Series(dtype=float)), errors="coerce")
        return "n_train" if len(rows) and (n > 0).all() else "fraction"
    if size not in SIZES:
        raise ScalingError(f"size {size!r}: expected auto, n_train or fraction")
    return size


def curves_from_rows(rows: pd.DataFrame, metric: str = "auto", size: str = "auto",
                     accuracy: str | None = None) -> tuple[list[Curve], str, str]:
    """One curve per architecture from trial rows (TRIAL_SCHEMA columns): its complete trials
    with a finite accuracy. Returns the curves, the metric and the size column used.
    `accuracy`, when given, names a column already holding the accuracy (the dashboard's `acc`)."""
    done = rows[rows["state"] == "complete"] if "state" in rows else rows
    metric = resolve_metric(done, metric) if accuracy is None else accuracy
    size = resolve_size(done, size)
    column = accuracy or metric
    if column not in done:
        raise ScalingError(f"no column {column!r} in the trials")
    acc = pd.to_numeric(done[column], errors="coerce")
    d = pd.to_numeric(done[size], errors="coerce")
    done = done.assign(_error=1.0 - acc, _size=d)
    done = done[np.isfinite(done["_error"]) & np.isfinite(done["_size"])]
    if "arch_id" not in done:
        raise ScalingError("the trials have no arch_id column")
    datasets = done["dataset"].dropna().unique() if "dataset" in done else []
    several = len(datasets) > 1
    keys = curve_keys(done)
    done = done.assign(_curve=keys, _key=keys + ((" [" + done["dataset"].astype(str) + "]") if several else ""))
    if size == "n_train" and "fraction" in done:
        # the runs of one fraction are one size, should their image counts differ by a few
        frac = pd.to_numeric(done["fraction"], errors="coerce")
        median = done.assign(_f=frac).groupby(["_key", "_f"])["_size"].transform("median")
        done = done.assign(_size=median.where(frac.notna(), done["_size"]))
    names = arch_labels(done)
    curves = []
    for key, g in done.groupby("_key", sort=False):
        arch_id = str(g["arch_id"].iloc[0]) if g["arch_id"].notna().any() else ""
        families = g["family"].dropna() if "family" in g else pd.Series(dtype=str)
        family = str(families.mode().iloc[0]) if len(families) else ""
        dataset = str(g["dataset"].iloc[0]) if "dataset" in g and g["dataset"].notna().any() else ""
        curve = str(g["_curve"].iloc[0])
        own = arch_id if curve == arch_id or "|" in curve else curve   # grammar text is named by its arch_id
        label = (names.get(curve) or own or str(key)) + (f" [{dataset}]" if several else "")
        text = str(g["text"].dropna().iloc[0]) if "text" in g and g["text"].notna().any() else ""
        curves.append(Curve.from_points(g["_size"].to_numpy(float), g["_error"].to_numpy(float), name=label,
                                        arch_id=arch_id, family=family, metric=column, key=curve,
                                        info={"dataset": dataset, "text": text}))
    curves.sort(key=lambda c: (c.family, c.name))
    return curves, metric, size


def _num(v) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def fit_rows(fits: list[CurveFit], studies: str = "", metric: str = "", size: str = "") -> list[dict]:
    """The fits as FIT_SCHEMA rows: one per (architecture, law), one with the reason for a
    degenerate architecture."""
    out = []
    for f in fits:
        c = f.curve
        base = {"studies": studies, "arch": c.name, "arch_id": c.arch_id, "family": c.family,
                "dataset": c.info.get("dataset", ""), "metric": metric or c.metric, "size_column": size,
                "n_sizes": len(c.sizes), "n_points": c.n_points,
                "d_min": float(c.sizes[0]) if len(c.sizes) else None,
                "d_max": float(c.sizes[-1]) if len(c.sizes) else None,
                "bootstrap": f.scheme, "n_boot": f.n_boot, "level": f.level}
        if f.reason:
            out.append({**base, "law": None, "preferred": False, "reason": f.reason})
            continue
        for name, lf in f.laws.items():
            row = {**base, "law": name, "preferred": lf.preferred, "reason": lf.reason}
            if lf.ok:
                for p in lf.law.params:
                    row[p] = lf.value(p)
                    if p in ("b", "c", "b2") and p in lf.ci:
                        row[f"{p}_lo"], row[f"{p}_hi"] = (_num(v) for v in lf.ci[p])
                row["rmse_log"], row["aicc"] = _num(lf.rmse), _num(lf.aicc)
            ex = lf.extrapolation or {}
            row.update(extrap_size=ex.get("size"), extrap_predicted=ex.get("predicted"),
                       extrap_observed=ex.get("observed"), extrap_rel_error=ex.get("rel_error"),
                       extrap_reason=ex.get("reason"))
            out.append(row)
    return out


def _preferred_law(fit: CurveFit) -> str:
    assert fit.preferred is not None  # a crossover is between two curves' preferred laws
    return fit.preferred.law.name


def crossover_rows(cross: list[Crossover]) -> list[dict]:
    """The crossovers as CROSSOVER_SCHEMA rows."""
    return [{"leader": c.leader.curve.name, "leader_family": c.leader.curve.family,
             "overtaker": c.overtaker.curve.name, "overtaker_family": c.overtaker.curve.family,
             "leader_law": _preferred_law(c.leader), "overtaker_law": _preferred_law(c.overtaker),
             "d_cross": c.size, "d_lo": _num(c.lo) if not math.isinf(c.lo) else c.lo,
             "d_hi": _num(c.hi) if not math.isinf(c.hi) else c.hi, "p_cross": _num(c.p_cross), "error": c.error,
             "range_lo": c.d_range[0], "range_hi": c.d_range[1], "level": c.level} for c in cross]


def write_table(rows: list[dict], schema: pa.Schema, path: str | Path) -> Path:
    """Write `rows` as Parquet with `schema`, atomically (a temporary file renamed over `path`)."""
    table = pa.Table.from_pylist(rows, schema=schema)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


@dataclass
class StudyScaling:
    """The scaling fits of one or more studies' rows."""

    names: list[str]
    folders: list[Path]
    metric: str
    size: str
    fits: list[CurveFit]
    crossovers: list[Crossover]

    @property
    def table(self) -> pd.DataFrame:
        return pa.Table.from_pylist(fit_rows(self.fits, "+".join(self.names), self.metric, self.size),
                                    schema=FIT_SCHEMA).to_pandas()

    @property
    def crossover_table(self) -> pd.DataFrame:
        return pa.Table.from_pylist(crossover_rows(self.crossovers), schema=CROSSOVER_SCHEMA).to_pandas()

    def write(self, folder: str | Path | None = None) -> tuple[Path, Path]:
        """Write scaling_fits.parquet and scaling_crossovers.parquet into `folder` (default: the
        first study's folder)."""
        folder = Path(folder) if folder is not None else self.folders[0]
        fits = write_table(fit_rows(self.fits, "+".join(self.names), self.metric, self.size), FIT_SCHEMA,
                           folder / FITS_FILE)
        cross = write_table(crossover_rows(self.crossovers), CROSSOVER_SCHEMA, folder / CROSSOVERS_FILE)
        return fits, cross


def fit_studies(studies: list[str | Path], root: str | Path | None = None, metric: str = "auto",
                size: str = "auto", laws: tuple[str, ...] | list[str] = DEFAULT_LAWS, n_boot: int = 1000,
                seed: int = 0, level: float = 0.95) -> StudyScaling:
    """Every architecture's scaling fits over the studies' complete trials, and the crossovers
    between families. Architectures that cannot be fitted carry their reason."""
    rows = read_studies(studies, root)
    curves, metric, size = curves_from_rows(rows.trials, metric, size)
    if not curves:
        raise ScalingError(f"no complete trial with a {metric} in {'+'.join(rows.names)}: nothing to fit")
    fits = fit_curves(curves, laws, n_boot=n_boot, seed=seed, level=level)
    return StudyScaling(rows.names, rows.folders, metric, size, fits, crossovers(fits, level=level))
