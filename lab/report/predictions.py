"""From studies' rows to predictions at a training-set size: every (architecture, size) a study
measured, as curves, each extrapolated to a target size N with lab.scaling.predict.

Two kinds of rows carry sizes: a scaling study's complete trials (one fraction each; an arm's
trials at several fractions make its curve) and a --target-size search's trials (each trained a
ladder of sizes, kept in its `sizes` and `sizes_top1` lists, whether it went on to the top or was
stopped on the way). The accuracy is val_top1: the one a ladder records at every size.

    points = size_points(rows.trials)            # study, key, arch, family, macs, params, n_train, accuracy
    curves = size_curves(points, upto=0.3)       # only the sizes up to 30% of the training split
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lab.scaling.curves import Curve
from lab.scaling.predict import Noise, Prediction, predict, study_noise
from lab.study.tables import arch_labels, curve_keys

POINT_COLUMNS = ("study", "key", "arch", "arch_id", "family", "text", "dataset", "macs", "params", "n_train",
                 "fraction", "seed", "accuracy")


def size_points(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial, size) with a finite val_top1: a ladder trial's every size, any other complete
    trial its own n_train. `key` is what makes one curve (a scaling arm, else the arch_id, per dataset)."""
    if trials.empty:
        return pd.DataFrame(columns=list(POINT_COLUMNS))
    keys = curve_keys(trials)
    names = arch_labels(trials)
    frame = trials.assign(key=keys, arch=[names.get(k, a if isinstance(a, str) else k) for k, a in
                                          zip(keys, trials.get("arch_id", keys))])
    rows = []
    has_sizes = "sizes" in frame
    for r in frame.to_dict("records"):
        base = {c: r.get(c) for c in POINT_COLUMNS if c not in ("n_train", "fraction", "accuracy")}
        base["key"] = f"{r['key']} [{r.get('dataset')}]"
        sizes = r.get("sizes") if has_sizes else None
        if sizes is not None and len(sizes):
            accuracies = r.get("sizes_top1")
            if accuracies is None:
                continue
            top = max(sizes)
            for n, acc in zip(sizes, accuracies):
                rows.append({**base, "n_train": int(n), "fraction": float(r.get("fraction") or 1.0) * n / top,
                             "accuracy": acc})
        elif r.get("state") == "complete":
            rows.append({**base, "n_train": r.get("n_train"), "fraction": r.get("fraction"), "accuracy": r.get("val_top1")})
    points = pd.DataFrame(rows, columns=list(POINT_COLUMNS))
    acc = pd.to_numeric(points["accuracy"], errors="coerce")
    n = pd.to_numeric(points["n_train"], errors="coerce")
    return points[np.isfinite(acc) & np.isfinite(n) & (n > 0)].reset_index(drop=True)


def size_curves(points: pd.DataFrame, upto: float | None = None) -> list[Curve]:
    """One curve per key: error = 1 - accuracy against n_train, the sizes of one fraction being seeds.
    `upto`: only the sizes at fractions up to it (1e-9 slack for rounding)."""
    if upto is not None:
        points = points[pd.to_numeric(points["fraction"], errors="coerce") <= upto + 1e-9]
    curves = []
    for key, g in points.groupby("key", sort=True):
        first = g.iloc[0]
        # the runs of one fraction are one size, should their image counts differ by a few
        size = g.groupby("fraction")["n_train"].transform("median").fillna(g["n_train"])
        curves.append(Curve.from_points(size.to_numpy(float), 1.0 - g["accuracy"].to_numpy(float), name=str(first["arch"]),
                                        arch_id=str(first["arch_id"] or ""), family=str(first["family"] or ""),
                                        metric="val_top1", key=str(key),
                                        info={c: first[c] for c in ("study", "text", "dataset", "macs", "params")}))
    return curves


def predict_points(points: pd.DataFrame, target: float, law: str = "power", upto: float | None = None,
                   level: float = 0.95, noise: Noise | None = None) -> tuple[list[Curve], list[Prediction]]:
    """The curves of `points` (up to `upto`) and each one's prediction at `target` images, the noise
    pooled over these curves unless given."""
    curves = size_curves(points, upto)
    if noise is None:
        noise = study_noise(curves, law, level)
    return curves, predict(curves, target, law=law, noise=noise, level=level)
