"""A point of a search space as a fixed-length vector of floats, for the surrogate.

`Featurizer.fit` reads the sampled variables of a benchmark table's rows (the ``vars`` dicts of
their ``hparams`` JSON) and decides, per variable, how to encode it:

- numeric, when every value seen is a number: the value, and an "active" indicator (0 when the
  variable is absent, a conditional one not sampled; the value is then a sentinel below the range
  seen, so that a tree can split it off);
- categorical otherwise: one-hot over the values seen (absent, or a value never seen: all zeros).

Per-stage variables (names ending ``_<digit>``: ``mixer_0``, ``depth_1``) are also aggregated over
the stages, so that points with different stage counts share features: the count of each
categorical value (how many stages are ``swin``), the sum and max of numeric ones (total depth)
and the number of stages that have the variable. Then log10 of params and of MACs. Nothing here
names a space's variables.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

STAGE = re.compile(r"^(.+)_(\d+)$")


def frame_of(table: pa.Table | pd.DataFrame) -> pd.DataFrame:
    """`table` as a DataFrame (a pyarrow Table is converted)."""
    return table.to_pandas() if isinstance(table, pa.Table) else table


def vars_of(table: pa.Table | pd.DataFrame) -> list[dict[str, Any]]:
    """The sampled variables of each row: its ``hparams`` JSON's ``vars`` (``{}`` when absent)."""
    out = []
    for text in frame_of(table)["hparams"]:
        parsed = json.loads(text) if isinstance(text, str) and text else {}
        out.append(dict(parsed.get("vars") or {}))
    return out


def _is_number(value: Any) -> bool:
    # a bool is a choice, not a quantity
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def _key(value: Any) -> str:
    """A categorical value's identity: its JSON text (``2`` and ``"2"`` differ, ``0`` and ``0.0`` do too)."""
    return json.dumps(value, sort_keys=True)


@dataclass
class _Var:
    """How one variable (or one per-stage base, aggregated) is encoded."""

    numeric: bool
    categories: list[str] = field(default_factory=list)   # _key of each value seen, sorted
    sentinel: float = -1.0                                 # a numeric variable's value when absent


def _spec(values: list[Any]) -> _Var:
    if values and all(_is_number(v) for v in values):
        lo, hi = min(float(v) for v in values), max(float(v) for v in values)
        return _Var(numeric=True, sentinel=lo - 1.0 - (hi - lo))
    return _Var(numeric=False, categories=sorted({_key(v) for v in values}))


class Featurizer:
    """Encodes points of one space (their variables, params, MACs) as rows of a float matrix."""

    def __init__(self, variables: dict[str, _Var], stages: dict[str, _Var]):
        self.variables = variables   # name -> encoding, sorted by name
        self.stages = stages         # per-stage base name (``mixer``) -> encoding of its aggregate
        self.names = self._names()   # one per column of transform()'s result

    @classmethod
    def fit(cls, vars_list: Sequence[Mapping[str, Any]]) -> Featurizer:
        """Learn the variables and their values from the rows' variable dicts."""
        seen: dict[str, list[Any]] = {}
        for row in vars_list:
            for name, value in row.items():
                if value is not None:
                    seen.setdefault(name, []).append(value)
        per_base: dict[str, list[Any]] = {}
        for name, values in seen.items():
            match = STAGE.match(name)
            if match:
                per_base.setdefault(match.group(1), []).extend(values)
        return cls({n: _spec(seen[n]) for n in sorted(seen)}, {b: _spec(per_base[b]) for b in sorted(per_base)})

    @classmethod
    def fit_table(cls, table: pa.Table | pd.DataFrame) -> Featurizer:
        return cls.fit(vars_of(table))

    def _names(self) -> list[str]:
        names: list[str] = []
        for name, var in self.variables.items():
            names += [name, f"{name}:active"] if var.numeric else [f"{name}={c}" for c in var.categories]
        for base, var in self.stages.items():
            names += [f"{base}:sum", f"{base}:max"] if var.numeric else [f"{base}:count={c}" for c in var.categories]
            names.append(f"{base}:stages")
        return names + ["log10_params", "log10_macs"]

    def transform(self, vars_list: Sequence[Mapping[str, Any]], params: Sequence[float] | np.ndarray | float,
                  macs: Sequence[float] | np.ndarray | float) -> np.ndarray:
        """A (len(vars_list) x len(self.names)) matrix; `params` and `macs` align with `vars_list`
        (a scalar is broadcast)."""
        n = len(vars_list)
        p = np.broadcast_to(np.asarray(params, dtype=float), (n,))
        m = np.broadcast_to(np.asarray(macs, dtype=float), (n,))
        out = np.zeros((n, len(self.names)))
        for i, row in enumerate(vars_list):
            out[i, :-2] = self._row(row)
        out[:, -2] = np.log10(np.maximum(p, 1.0))
        out[:, -1] = np.log10(np.maximum(m, 1.0))
        return out

    def _row(self, row: Mapping[str, Any]) -> list[float]:
        values: list[float] = []
        for name, var in self.variables.items():
            values += _encode(var, row.get(name))
        by_base: dict[str, list[Any]] = {}
        for name, value in row.items():
            match = STAGE.match(name)
            if match and value is not None:
                by_base.setdefault(match.group(1), []).append(value)
        for base, var in self.stages.items():
            values += _aggregate(var, by_base.get(base, []))
        return values


def _encode(var: _Var, value: Any) -> list[float]:
    if var.numeric:
        if value is None or not _is_number(value) or not math.isfinite(float(value)):
            return [var.sentinel, 0.0]
        return [float(value), 1.0]
    key = None if value is None else _key(value)
    return [1.0 if key == c else 0.0 for c in var.categories]


def _aggregate(var: _Var, values: list[Any]) -> list[float]:
    if var.numeric:
        numbers = [float(v) for v in values if _is_number(v)]
        return [sum(numbers), max(numbers) if numbers else 0.0, float(len(numbers))]
    keys = [_key(v) for v in values]
    return [float(keys.count(c)) for c in var.categories] + [float(len(values))]
