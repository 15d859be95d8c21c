"""Reading a rendered dashboard page back: the figure and table JSON it carries, trace arrays as
numbers, traces by role (shared by the dashboard and scaling tests)."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np


def figures_of(page: Path) -> dict:
    """The figure JSON a page carries (id -> {data, layout})."""
    m = re.search(r"<script type='application/json' id='lab-figures'>(.*?)</script>", page.read_text(), re.S)
    return json.loads(m.group(1))


def table_of(page: Path) -> dict:
    m = re.search(r"<script type='application/json' id='lab-table'>(.*?)</script>", page.read_text(), re.S)
    return json.loads(m.group(1))


def values(v) -> np.ndarray:
    """A trace array as numbers: plotly writes numpy arrays as base64 typed arrays ({dtype, bdata})."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).astype(float)
    return np.array([math.nan if x is None else x for x in (v or [])], dtype=float)


def traces(fig: dict, role: str) -> list[dict]:
    return [t for t in fig["data"] if (t.get("meta") or {}).get("role") == role]
