"""lab.report.jsonable: every --json output's values, NumPy's included, as strict JSON."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lab.report.jsonable import jsonable, to_json


def test_numpy_and_python_values_read_back_as_plain_json():
    value = {"i": np.int64(3), "f": np.float32(1.5), "a": np.array([[1, 2]]), "b": np.bool_(True), "nan": float("nan"),
             "inf": np.float64("inf"), "s": {2, 1}, "t": (1, "x"), "d": dt.date(2020, 1, 2), "p": Path("a/b"), 7: None}
    back = json.loads(to_json(value))
    assert back == {"i": 3, "f": 1.5, "a": [[1, 2]], "b": True, "nan": None, "inf": None, "s": [1, 2], "t": [1, "x"],
                    "d": "2020-01-02", "p": "a/b", "7": None}
    assert type(back["i"]) is int and type(jsonable(np.bool_(False))) is bool


def test_a_python_bool_stays_a_bool_and_floats_stay_finite():
    assert jsonable(True) is True and jsonable(2) == 2 and jsonable(-0.5) == -0.5
    assert jsonable(math.inf) is None


def test_anything_else_is_an_error_not_a_repr():
    with pytest.raises(TypeError, match="object is not JSON data"):
        to_json({"x": object()})
