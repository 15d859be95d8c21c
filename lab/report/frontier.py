"""The accuracy-per-compute frontier across studies: the Pareto set (accuracy up, cost down) over
every complete trial of several studies at once, each point with its family, so that one can
read which families sit on the frontier and where.

It is the set the dashboard's "Accuracy vs compute" front draws when given the same studies
(`lab dashboard A B C`: the ringed staircase over the complete trials of all of them); the
dashboard colours points by mixer kind, this table names each point's family.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lab.errors import ScalingError
from lab.pareto import pareto_mask
from lab.report.fits import resolve_metric
from lab.study.tables import arch_labels, curve_keys

# cost column -> what it is
COSTS = {
    "macs": "multiply-accumulates per image",
    "params": "parameters",
    "train_macs": "training MACs, about 3 x MACs x n_train x epochs done (forward + backward)",
}


def frontier(rows: pd.DataFrame, cost: str = "macs", metric: str = "auto") -> pd.DataFrame:
    """The Pareto set of the complete trials in `rows` under (metric max, cost min), sorted by
    cost, with columns study, number, arch (its name, else arch_id), arch_id, family, text,
    n_train, fraction, the metric and the cost."""
    if cost not in COSTS:
        raise ScalingError(f"cost {cost!r}: expected one of {', '.join(COSTS)}")
    done = rows[rows["state"] == "complete"].copy() if "state" in rows else rows.copy()
    metric = resolve_metric(done, metric)
    if cost == "train_macs":
        done["train_macs"] = (3.0 * pd.to_numeric(done["macs"], errors="coerce")
                              * pd.to_numeric(done["n_train"], errors="coerce")
                              * pd.to_numeric(done["epochs_done"], errors="coerce"))
    acc = pd.to_numeric(done[metric], errors="coerce").to_numpy(float)
    x = pd.to_numeric(done[cost], errors="coerce").to_numpy(float)
    keep = np.isfinite(acc) & np.isfinite(x) & (x > 0)
    done, acc, x = done[keep], acc[keep], x[keep]
    if done.empty:
        raise ScalingError(f"no complete trial with a {metric} and a positive {cost}: no frontier")
    mask = pareto_mask(np.column_stack([acc, x]), ["max", "min"])
    front = done[mask].sort_values([cost, metric], kind="mergesort")
    names = arch_labels(front)
    front = front.assign(arch=[names.get(k, names.get(a, a)) for k, a in zip(curve_keys(front), front["arch_id"])])
    columns = [c for c in ("study", "number", "arch", "arch_id", "family", "text", "n_train", "fraction") if c in front]
    out = front[columns + [metric] + ([cost] if cost != metric else [])].reset_index(drop=True)
    out.attrs.update(metric=metric, cost=cost, trials=len(done))
    return out


def by_family(front: pd.DataFrame) -> pd.DataFrame:
    """Per family: its points on the frontier and the cost range they cover."""
    cost = front.attrs.get("cost", "macs")
    g = front.groupby(front["family"].fillna("unknown"))
    return pd.DataFrame({"points": g.size(), "cost_min": g[cost].min(), "cost_max": g[cost].max()}) \
        .sort_values("cost_min").reset_index(names="family")
