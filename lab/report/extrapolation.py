"""The honest test of extrapolation (`lab scale extrapolate`): fit each architecture's curve on
the sizes up to a fraction of the training split (30% by default), predict its accuracy at the
largest size measured beyond that (the full split), and compare with what was measured there.

Per architecture: the prediction, its interval, the measured accuracy, the absolute error in
points and whether the interval covers the measurement. Over the architectures: the median and
mean absolute error, the rank correlation (Kendall's tau, Spearman's rho) of predicted and
measured accuracy, the coverage of the intervals, and, as the baseline an extrapolation has to
beat, the rank correlation of the accuracy at the largest fitted size with the measured one.

The measured accuracies are themselves noisy: a validation split of n images measures an accuracy
p to about sqrt(p(1-p)/n). `tau_ceiling` is the mean Kendall tau between two independent binomial
re-measurements of the measured accuracies on a split of that size: what even a perfect predictor
would reach against one measurement (seed-to-seed training noise would lower it further).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.stats

from lab.data import load_dataset
from lab.errors import LabError, ScalingError
from lab.report.fits import write_table
from lab.report.predictions import size_curves, size_points
from lab.scaling.predict import Noise, predict, study_noise
from lab.study.tables import read_studies
from lab.tabular.stats import rank_correlation

UPTO = 0.3
TARGET_ERROR = 1.5     # points of accuracy: the median absolute error the issue asks for
TARGET_TAU = 0.6       # Kendall's tau of predicted and measured accuracy
FILE = "extrapolation.parquet"

FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("arch", pa.string(), "the architecture (a scaling arm's name, else its label or arch_id)"),
    ("family", pa.string(), "its family"),
    ("dataset", pa.string(), "the dataset"),
    ("law", pa.string(), "the law the prediction comes from"),
    ("fitted_sizes", pa.string(), "the training-set sizes the law was fitted on, joined with ','"),
    ("largest_fitted", pa.float64(), "the largest of them"),
    ("acc_at_largest_fitted", pa.float64(), "mean val_top1 at that size (the no-extrapolation baseline)"),
    ("target", pa.float64(), "the size predicted: the largest measured beyond the fitted ones"),
    ("factor", pa.float64(), "target / largest fitted size"),
    ("predicted", pa.float64(), "predicted val_top1 at target"),
    ("lo", pa.float64(), "lower end of the prediction interval"),
    ("hi", pa.float64(), "upper end"),
    ("measured", pa.float64(), "mean val_top1 measured at target"),
    ("abs_error_pts", pa.float64(), "|predicted - measured| in points of accuracy"),
    ("covered", pa.bool_(), "whether [lo, hi] holds the measured accuracy"),
    ("accelerating", pa.bool_(), "the fitted sizes' error falls faster at the largest ones (still taking off): the law "
                                 "under-predicts"),
    ("reason", pa.string(), "why there is no prediction"),
]
SCHEMA = pa.schema([pa.field(n, t) for n, t, _ in FIELDS])


@dataclass
class Validation:
    """Per-architecture rows (SCHEMA) and the summary over them."""

    studies: list[str]
    folders: list[Path]
    upto: float
    law: str
    level: float
    noise: Noise
    rows: list[dict]
    summary: dict = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        return pa.Table.from_pylist(self.rows, schema=SCHEMA).to_pandas()

    def write(self, folder: str | Path | None = None) -> Path:
        return write_table(self.rows, SCHEMA, Path(folder or self.folders[0]) / FILE)


def validate(studies: list[str | Path], root: str | Path | None = None, upto: float = UPTO, law: str = "power",
             level: float = 0.95, n_boot: int = 1000, seed: int = 0, ceiling: bool = True) -> Validation:
    """Fit on the sizes at fractions up to `upto`, predict the largest size beyond, compare. `ceiling`:
    also the measurements' tau ceiling (it loads the dataset to know its validation split)."""
    if not 0 < upto < 1:
        raise ScalingError(f"--upto {upto}: expected a fraction in (0, 1)")
    read = read_studies(studies, root)
    points = size_points(read.trials)
    if points.empty:
        raise ScalingError(f"no trial of {'+'.join(read.names)} has a val_top1 at a data size")
    full = {c.key: c for c in size_curves(points)}
    fitted = size_curves(points, upto)
    noise = study_noise(fitted, law, level, seed)   # from the fitted sizes alone
    targets, keep = [], []
    rows: list[dict] = []
    for c in fitted:
        beyond = [s for s in full[c.key].sizes if s > c.sizes[-1] * (1 + 1e-9)]
        row = {"arch": c.name, "family": c.family, "dataset": c.info.get("dataset"),
               "fitted_sizes": ",".join(f"{s:g}" for s in c.sizes), "largest_fitted": float(c.sizes[-1]),
               "acc_at_largest_fitted": float(1 - c.means[-1])}
        if not beyond:
            rows.append({**row, "reason": f"{c.name}: no size measured beyond {upto:g} of the training split"})
            continue
        target = float(max(beyond))
        j = int(np.flatnonzero(full[c.key].sizes == target)[0])
        row.update(target=target, factor=target / float(c.sizes[-1]), measured=float(1 - full[c.key].means[j]))
        rows.append(row)
        targets.append(target)
        keep.append((len(rows) - 1, c))
    predictions = predict([c for _, c in keep], targets, law=law, noise=noise, level=level, n_boot=n_boot,
                          seed=seed) if keep else []
    for (i, _), p in zip(keep, predictions):
        if not p.ok:
            rows[i]["reason"] = p.reason
            continue
        lo, hi = p.accuracy_interval
        measured = rows[i]["measured"]
        rows[i].update(law=p.law, predicted=p.accuracy, lo=lo, hi=hi, abs_error_pts=100 * abs(p.accuracy - measured),
                       covered=bool(lo <= measured <= hi), accelerating=p.accelerating)
    if not any(r.get("predicted") is not None for r in rows):
        raise ScalingError(f"no architecture of {'+'.join(read.names)} has at least two sizes up to {upto:g} and a "
                           f"larger one to check against")
    out = Validation(read.names, read.folders, upto, law, level, noise, rows)
    out.summary = summarize(rows, n_boot=n_boot, seed=seed, val_images=_val_images(points) if ceiling else None)
    return out


def _val_images(points: pd.DataFrame) -> int | None:
    """The validation split's size, when the rows share one dataset this machine can load (else None)."""
    datasets = points["dataset"].dropna().unique()
    if len(datasets) != 1:
        return None
    try:
        return len(load_dataset(str(datasets[0]), seed=0).val)
    except LabError:
        return None


def tau_ceiling(measured: list[float], val_images: int, draws: int = 1000, seed: int = 0) -> float:
    """Mean Kendall tau between two binomial re-measurements of `measured` on `val_images` images."""
    p = np.clip(np.asarray(measured, float), 0.0, 1.0)
    if len(p) < 3:
        return math.nan
    rng = np.random.default_rng(seed)
    a = rng.binomial(val_images, p, size=(draws, len(p))) / val_images
    b = rng.binomial(val_images, p, size=(draws, len(p))) / val_images
    return float(np.nanmean([scipy.stats.kendalltau(x, y).statistic for x, y in zip(a, b)]))


def summarize(rows: list[dict], n_boot: int = 1000, seed: int = 0, val_images: int | None = None) -> dict:
    """Errors, rank correlations (with bootstrap intervals over the architectures) and coverage."""
    done = [r for r in rows if r.get("predicted") is not None]
    errors = np.array([r["abs_error_pts"] for r in done])
    predicted = [r["predicted"] for r in done]
    measured = [r["measured"] for r in done]
    ranks = rank_correlation(predicted, measured, n_boot=n_boot, seed=seed)
    baseline = rank_correlation([r["acc_at_largest_fitted"] for r in done], measured, n_boot=n_boot, seed=seed)
    bias = float(np.mean([p - m for p, m in zip(predicted, measured)])) * 100 if done else math.nan
    return {"archs": len(done), "skipped": len(rows) - len(done),
            "median_abs_error_pts": float(np.median(errors)) if len(errors) else math.nan,
            "mean_abs_error_pts": float(errors.mean()) if len(errors) else math.nan,
            "max_abs_error_pts": float(errors.max()) if len(errors) else math.nan,
            "bias_pts": bias, "kendall": ranks["kendall"], "spearman": ranks["spearman"],
            "baseline_kendall": baseline["kendall"],
            "coverage": float(np.mean([r["covered"] for r in done])) if done else math.nan,
            "accelerating": int(sum(bool(r.get("accelerating")) for r in done)),
            "val_images": val_images,
            "tau_ceiling": tau_ceiling(measured, val_images, seed=seed) if val_images else math.nan,
            "median_target_met": bool(len(errors) and np.median(errors) <= TARGET_ERROR),
            "kendall_target_met": bool(ranks["kendall"]["value"] >= TARGET_TAU)}
