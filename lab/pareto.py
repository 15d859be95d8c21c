"""Pareto sets and 2-D hypervolume of study results, and the objectives' textual form.

Senses are "max" or "min" per objective. A row dominates another when it is at least as good in
every objective and strictly better in one; equal rows do not dominate each other, so ties are
all kept. A row with a NaN objective is never on the front and dominates nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

# columns a study can optimize, and the names a user may write for them
OBJECTIVE_COLUMNS = ("val_top1", "val_top5", "test_top1", "test_top5", "loss", "macs", "params",
                     "train_seconds", "images_per_second", "pred_top1")
# pred_acc: the accuracy a --target-size study predicts at its target size
ALIASES = {"val_acc": "val_top1", "test_acc": "test_top1", "acc": "val_top1", "pred_acc": "pred_top1"}
SENSES = ("max", "min")


def _signs(senses: Sequence[str], k: int) -> np.ndarray:
    """+1 for min, -1 for max: multiplying by it turns every objective into one to minimize."""
    senses = list(senses)
    if len(senses) != k:
        raise ValueError(f"{len(senses)} senses for {k} objective columns")
    bad = [s for s in senses if s not in SENSES]
    if bad:
        raise ValueError(f"sense {bad[0]!r}: expected max or min")
    return np.array([1.0 if s == "min" else -1.0 for s in senses])


def _as_matrix(values, what: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim == 1 and array.size == 0:
        array = array.reshape(0, 0)
    if array.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array (rows x objectives), got shape {array.shape}")
    return array


def row_values(rows: Sequence[dict], columns: Sequence[str]) -> np.ndarray:
    """The (rows x columns) matrix of `rows`' values, NaN where one is missing or not a number (a NaN
    objective keeps a row off every front: `pareto_mask`)."""
    def number(v) -> float:
        numeric = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
        return float(v) if numeric else np.nan

    return np.array([[number(r.get(c)) for c in columns] for r in rows], dtype=float).reshape(len(rows), len(columns))


def pareto_mask(values: np.ndarray | Sequence[Sequence[float]], senses: Sequence[str]) -> np.ndarray:
    """True for the non-dominated rows of `values` (rows x objectives)."""
    v = _as_matrix(values)
    n, k = v.shape
    if n == 0:
        return np.zeros(0, dtype=bool)
    v = v * _signs(senses, k)
    valid = ~np.isnan(v).any(axis=1)
    mask = np.zeros(n, dtype=bool)
    # A dominator comes strictly earlier in lexicographic order, so sweeping in that order and
    # testing each row against the front found so far decides it (dominance is transitive).
    rows = np.flatnonzero(valid)
    order = rows[np.lexsort(v[rows].T[::-1])]
    front, m = np.empty((len(order), k)), 0
    for i in order:
        p, f = v[i], front[:m]
        if np.any(np.all(f <= p, axis=1) & np.any(f < p, axis=1)):
            continue
        mask[i] = True
        front[m], m = p, m + 1
    return mask


def pareto_ranks(values: np.ndarray | Sequence[Sequence[float]], senses: Sequence[str]) -> np.ndarray:
    """The non-dominated sorting rank of each row: 0 for the Pareto front, 1 for the front of the
    rest, and so on (NSGA-II's fronts). Rows with a NaN objective rank after every other row."""
    v = _as_matrix(values)
    ranks = np.full(v.shape[0], v.shape[0], dtype=int)
    left = np.flatnonzero(~np.isnan(v).any(axis=1)) if v.size else np.zeros(0, dtype=int)
    rank = 0
    while left.size:
        front = pareto_mask(v[left], senses)
        ranks[left[front]] = rank
        left, rank = left[~front], rank + 1
    return ranks


def pareto_front(table: pa.Table | pd.DataFrame, objectives: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """The non-dominated rows of `table` under `objectives` ((column, sense) pairs), sorted by the
    objectives' values, ascending, first objective first.

    If the table has a `state` column, only its "complete" rows compete. Null objectives count as
    NaN (never on the front).
    """
    frame = table.to_pandas() if isinstance(table, pa.Table) else table
    if not objectives:
        raise ValueError("no objectives")
    columns = [c for c, _ in objectives]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"objective column {missing[0]!r} is not in the table")
    if "state" in frame.columns:
        frame = frame[frame["state"] == "complete"]
    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    front = frame[pareto_mask(values, [s for _, s in objectives])]
    return front.sort_values(columns, kind="mergesort").reset_index(drop=True)


def hypervolume_2d(points: np.ndarray | Sequence[Sequence[float]], senses: Sequence[str],
                   reference: Sequence[float]) -> float:
    """The area dominated by `points` (n x 2) and bounded by `reference`.

    Only the part of each point's box on the good side of the reference counts: a point that is
    no better than the reference in some objective adds nothing. NaN points are ignored.
    Exact: one sweep in order of the first objective, O(n log n).
    """
    p = _as_matrix(points, "points")
    if p.shape[0] == 0:
        p = p.reshape(0, 2)
    if p.shape[1] != 2:
        raise ValueError(f"points: expected 2 objectives, got {p.shape[1]}")
    signs = _signs(senses, 2)
    ref = np.asarray(reference, dtype=float)
    if ref.shape != (2,) or np.isnan(ref).any():
        raise ValueError(f"reference: expected 2 numbers, got {reference!r}")
    p, ref = p * signs, ref * signs
    p = p[~np.isnan(p).any(axis=1) & (p < ref).all(axis=1)]
    p = p[np.lexsort((p[:, 1], p[:, 0]))]
    area, level = 0.0, ref[1]
    for x, y in p:
        if y < level:
            area += (ref[0] - x) * (level - y)
            level = y
    return float(area)


def parse_objectives(text: str) -> list[tuple[str, str]]:
    """Objectives from text: "val_acc:max,macs:min" -> [("val_top1", "max"), ("macs", "min")]."""
    allowed = f"allowed: {', '.join(OBJECTIVE_COLUMNS)} (aliases {', '.join(ALIASES)}), each :max or :min"
    out: list[tuple[str, str]] = []
    for item in text.split(","):
        item = item.strip()
        name, colon, sense = (s.strip().lower() for s in item.partition(":"))
        column = ALIASES.get(name, name)
        if column not in OBJECTIVE_COLUMNS:
            raise ValueError(f"objective {item!r}: unknown column {name!r}; {allowed}")
        if not colon or sense not in SENSES:
            raise ValueError(f"objective {item!r}: sense must be max or min; {allowed}")
        if column in (c for c, _ in out):
            raise ValueError(f"objective {item!r}: {column} is named twice in {text!r}")
        out.append((column, sense))
    return out
