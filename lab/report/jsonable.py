"""Strict JSON for every `--json` output: what `json.loads` (and jq, JavaScript) reads back.

NaN and infinities become null (JSON has neither), NumPy scalars and arrays become numbers and
lists, tuples and sets lists, times ISO 8601 strings, paths strings; anything else is an error here
rather than a Python repr in the output.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
from pathlib import Path
from typing import Any


def jsonable(value: Any) -> Any:
    """`value` as plain JSON data (see the module docstring)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if type(value).__name__ in ("NAType", "NaTType"):   # pandas' missing values (not imported here)
        return None
    # a NumPy value exists only once NumPy is imported: not importing it here keeps `lab --help` light
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, np.floating):
            value = float(value)
        if isinstance(value, np.ndarray):
            value = value.tolist()
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        if isinstance(value, (set, frozenset)):
            value = sorted(value)
        return [jsonable(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):   # pandas/NumPy scalars of other kinds (Timestamp: isoformat)
        if hasattr(value, "isoformat"):
            return value.isoformat()
        return jsonable(value.item())
    raise TypeError(f"{type(value).__name__} is not JSON data")


def to_json(value: Any, indent: int | None = None) -> str:
    """`value` as strict JSON text (no NaN, lists as lists)."""
    return json.dumps(jsonable(value), indent=indent, allow_nan=False)
