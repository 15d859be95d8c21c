"""Pareto masks against a naive dominance check, hypervolume against independent references
(an exact union-of-boxes area on a compressed grid, and Optuna's WFG), objective parsing."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.pareto import hypervolume_2d, pareto_front, pareto_mask, parse_objectives


def naive_mask(values: np.ndarray, senses: list[str]) -> np.ndarray:
    """The definition, pair by pair: a row is kept unless another valid row is >= in every
    objective (in its sense) and > in one; rows with a NaN are never kept."""
    good = [[(v if s == "max" else -v) for v, s in zip(row, senses)] for row in values.tolist()]
    valid = [not any(np.isnan(x) for x in row) for row in good]
    out = []
    for i, a in enumerate(good):
        dominated = any(
            valid[j] and all(b_ >= a_ for a_, b_ in zip(a, b)) and any(b_ > a_ for a_, b_ in zip(a, b))
            for j, b in enumerate(good) if j != i
        )
        out.append(valid[i] and not dominated)
    return np.array(out, dtype=bool)


# small integer grids give many ties and duplicate rows; some cells are NaN
cells = st.one_of(st.integers(0, 4).map(float), st.just(float("nan")), st.just(float("inf")))


@st.composite
def tables(draw):
    k = draw(st.integers(1, 4))
    n = draw(st.integers(0, 30))
    rows = draw(st.lists(st.lists(cells, min_size=k, max_size=k), min_size=n, max_size=n))
    senses = draw(st.lists(st.sampled_from(["max", "min"]), min_size=k, max_size=k))
    return np.array(rows, dtype=float).reshape(n, k), senses


@settings(max_examples=300, deadline=None)
@given(tables())
def test_mask_matches_naive_dominance(case):
    values, senses = case
    assert np.array_equal(pareto_mask(values, senses), naive_mask(values, senses))


def test_mask_on_larger_random_continuous_data():
    rng = np.random.default_rng(0)
    for k in (2, 3):
        values = rng.normal(size=(300, k))
        values[rng.random(300) < 0.05, 0] = np.nan
        values[10] = values[11]                      # an exact duplicate
        senses = ["max", "min", "max"][:k]
        assert np.array_equal(pareto_mask(values, senses), naive_mask(values, senses))


def test_mask_by_hand():
    acc_macs = [[0.9, 100], [0.9, 100], [0.8, 50], [0.7, 60], [0.95, 200], [np.nan, 1]]
    assert pareto_mask(acc_macs, ["max", "min"]).tolist() == [True, True, True, False, True, False]
    assert pareto_mask(np.empty((0, 2)), ["max", "min"]).tolist() == []
    with pytest.raises(ValueError, match="sense 'up'"):
        pareto_mask(acc_macs, ["max", "up"])
    with pytest.raises(ValueError, match="1 senses for 2"):
        pareto_mask(acc_macs, ["max"])


# --- pareto_front ---------------------------------------------------------------------------

def test_front_of_a_table_keeps_complete_rows_and_sorts_by_the_first_objective():
    rows = {
        "number": [0, 1, 2, 3, 4, 5],
        "state": ["complete", "complete", "failed", "complete", "complete", "pruned"],
        "val_top1": [0.9, 0.8, 0.99, 0.7, None, 0.99],
        "macs": [100, 50, 1, 60, 1, 1],
    }
    objectives = [("val_top1", "max"), ("macs", "min")]
    for table in (pd.DataFrame(rows), pa.table(rows)):
        front = pareto_front(table, objectives)
        assert front["number"].tolist() == [1, 0]      # failed/pruned out, null accuracy out, 3 dominated
        assert front["val_top1"].tolist() == [0.8, 0.9]
    no_state = pd.DataFrame({k: v for k, v in rows.items() if k != "state"})
    assert pareto_front(no_state, objectives)["number"].tolist() == [2, 5]   # two equal rows, both kept
    with pytest.raises(ValueError, match="'params'"):
        pareto_front(no_state, [("params", "min")])


# --- hypervolume ----------------------------------------------------------------------------

def union_area(points: np.ndarray, senses: list[str], reference: list[float]) -> float:
    """Exact area of the union of the boxes between each point and the reference, counted cell
    by cell on the grid of all the coordinates involved (no sweep, no sorting trick)."""
    boxes = []
    for p in points:
        if np.isnan(p).any():
            continue
        box = []
        for x, s, r in zip(p, senses, reference):
            lo, hi = (x, r) if s == "min" else (r, x)
            box.append((lo, hi))
        if all(lo < hi for lo, hi in box):
            boxes.append(box)
    xs = sorted({v for b in boxes for v in b[0]})
    ys = sorted({v for b in boxes for v in b[1]})
    area = 0.0
    for (x0, x1), (y0, y1) in itertools.product(zip(xs, xs[1:]), zip(ys, ys[1:])):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if any(b[0][0] <= cx <= b[0][1] and b[1][0] <= cy <= b[1][1] for b in boxes):
            area += (x1 - x0) * (y1 - y0)
    return area


@pytest.mark.parametrize("senses", [["max", "min"], ["min", "min"], ["max", "max"], ["min", "max"]])
def test_hypervolume_matches_exact_union_area(senses):
    rng = np.random.default_rng(1)
    reference = [0.0 if s == "max" else 1.0 for s in senses]
    for trial in range(40):
        n = int(rng.integers(0, 25))
        pts = rng.random((n, 2))
        if trial % 3 == 0:                            # ties and exact duplicates
            pts = np.round(pts * 5) / 5
        if n and trial % 4 == 0:
            pts[0, 1] = np.nan
        if n and trial % 5 == 0:                      # a point outside the reference box
            pts[-1, 0] = reference[0] + (-0.3 if senses[0] == "max" else 0.3)
        hv = hypervolume_2d(pts, senses, reference)
        assert hv == pytest.approx(union_area(pts, senses, reference), rel=1e-12, abs=1e-12)


def test_hypervolume_matches_optuna():
    wfg = pytest.importorskip("optuna._hypervolume")
    rng = np.random.default_rng(2)
    for _ in range(30):
        acc = rng.random(20)
        macs = rng.integers(1, 1000, size=20).astype(float)
        budget = 800.0
        ours = hypervolume_2d(np.c_[acc, macs], ["max", "min"], [0.0, budget])
        # optuna minimizes: negate accuracy; it wants points that dominate the reference
        loss = np.c_[-acc, macs]
        loss = loss[(loss < [0.0, budget]).all(axis=1)]
        theirs = wfg.compute_hypervolume(loss, np.array([0.0, budget])) if len(loss) else 0.0
        assert ours == pytest.approx(theirs, rel=1e-12)


def test_hypervolume_by_hand_and_errors():
    # accuracy max (ref 0), MACs min (ref budget 10): boxes 0.5x8 and 0.9x4 overlap in 0.5x4
    assert hypervolume_2d([[0.5, 2], [0.9, 6]], ["max", "min"], [0, 10]) == pytest.approx(4 + 3.6 - 2)
    assert hypervolume_2d([[0.5, 10]], ["max", "min"], [0, 10]) == 0.0   # on the reference line
    assert hypervolume_2d(np.empty((0, 2)), ["max", "min"], [0, 10]) == 0.0
    with pytest.raises(ValueError, match="2 objectives"):
        hypervolume_2d([[1, 2, 3]], ["max", "min"], [0, 10])
    with pytest.raises(ValueError, match="reference"):
        hypervolume_2d([[1, 2]], ["max", "min"], [0])


# --- parse_objectives -----------------------------------------------------------------------

def test_parse_objectives_aliases():
    assert parse_objectives("val_acc:max,macs:min") == [("val_top1", "max"), ("macs", "min")]
    assert parse_objectives(" acc : max , params:min ") == [("val_top1", "max"), ("params", "min")]
    assert parse_objectives("test_acc:max") == [("test_top1", "max")]
    assert parse_objectives("images_per_second:MAX,train_seconds:min,loss:min") == [
        ("images_per_second", "max"), ("train_seconds", "min"), ("loss", "min")]


@pytest.mark.parametrize("text, match", [
    ("flops:min", "objective 'flops:min': unknown column 'flops'; allowed: val_top1, "),
    ("acc:up", "objective 'acc:up': sense must be max or min"),
    ("acc", "objective 'acc': sense must be max or min"),
    ("", "unknown column ''"),
    ("acc:max,val_top1:min", "val_top1 is named twice"),
])
def test_parse_objectives_errors(text, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_objectives(text)
    message = str(e.value)
    assert "\n" not in message
    assert "twice" in message or "allowed: " in message and "aliases val_acc, test_acc, acc" in message
