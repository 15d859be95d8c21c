"""`lab scale extrapolate`: predictions from the sizes up to 30% of the training split against the
full split, on scaling studies whose curves follow known laws."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats

from lab.dashboard.synthetic import scaling_rows
from lab.errors import ScalingError
from lab.report.extrapolation import FILE, tau_ceiling, validate
from lab.study.store import StudyStore
from tests.support import run_cli

# exact power laws (val error a * D^-b); the last one bends at the full split: a saturating law there
LAWS = {"resnet18@28px,w=0.25": (1.2, 0.35, 0.0), "swin_t@28px,w=0.25": (6.0, 0.6, 0.0),
        "vit_ti16@28px,p=4,w=0.5,d=0.25": (3.0, 0.5, 0.0), "convnext_t@32px,w=0.25": (2.0, 0.45, 0.0)}
BENT = "convnext_t@32px,w=0.25"
FULL = 4500


def write(folder, fractions=(0.1, 0.2, 0.3, 1.0), seeds=2, bend=0.0):
    store = StudyStore(folder)
    store.save_config({"name": folder.name, "kind": "scaling", "archs": list(LAWS), "fractions": list(fractions),
                       "seeds": seeds, "dataset": "mnist5k", "objectives": "val_acc:max,macs:min", "epochs": 8,
                       "recipe": "default", "seed": 0})
    for row in scaling_rows(LAWS, fractions=fractions, seeds=seeds, noise=0.0, n_full=FULL):
        if bend and row["fraction"] == 1.0 and BENT in row["hparams"]["vars"]["arch"]:
            row["val_top1"] -= bend
        store.write_trial(row)
    return store.folder


def test_exact_laws_are_predicted_exactly_and_the_bend_is_the_one_miss(tmp_path):
    folder = write(tmp_path / "sc", bend=0.08)
    v = validate([folder])
    rows = {r["arch"]: r for r in v.rows}
    assert set(rows) == set(LAWS)
    for arch, (a, b, _) in LAWS.items():
        r = rows[arch]
        assert r["fitted_sizes"] == "450,900,1350" and r["target"] == FULL and r["factor"] == pytest.approx(10 / 3)
        assert r["predicted"] == pytest.approx(1 - a * FULL ** -b, abs=1e-9)        # the law's own value
        assert r["acc_at_largest_fitted"] == pytest.approx(1 - a * 1350 ** -b, abs=1e-9)
        miss = 8.0 if arch == BENT else 0.0
        assert r["abs_error_pts"] == pytest.approx(miss, abs=1e-6)
        assert r["covered"] is (arch != BENT) and r["lo"] <= r["predicted"] <= r["hi"]
    s = v.summary
    errors = [rows[a]["abs_error_pts"] for a in LAWS]
    assert s["median_abs_error_pts"] == pytest.approx(float(np.median(errors)))
    predicted, measured = [rows[a]["predicted"] for a in LAWS], [rows[a]["measured"] for a in LAWS]
    assert s["kendall"]["value"] == pytest.approx(scipy.stats.kendalltau(predicted, measured).statistic)
    assert s["coverage"] == pytest.approx(3 / 4) and s["archs"] == 4 and s["val_images"] == 500
    assert v.noise.drift == 0.0      # the fitted sizes lie on their laws: nothing to widen for


def test_the_ceiling_is_one_for_noise_free_measurements_and_falls_with_fewer_images():
    accuracies = [0.90, 0.93, 0.95, 0.97]
    assert tau_ceiling(accuracies, 10**9) == pytest.approx(1.0)
    assert tau_ceiling(accuracies, 100) < tau_ceiling(accuracies, 2000) < 1.0
    assert math.isnan(tau_ceiling(accuracies[:2], 500))


def test_the_cli_prints_the_check_and_writes_its_table(tmp_path, capsys):
    write(tmp_path / "sc", bend=0.08)
    code, out, _ = run_cli(capsys, "scale", "extrapolate", "sc", "--root", str(tmp_path))
    assert code == 0 and (tmp_path / "sc" / FILE).is_file()
    assert "4 architectures: median |error| 0.00 pts (target <= 1.5: met)" in out
    assert "coverage of the 95% intervals: 75% (3 of 4)" in out and "(3.3x)" in out
    code, out, _ = run_cli(capsys, "scale", "extrapolate", "sc", "--root", str(tmp_path), "--json", "--no-write")
    doc = json.loads(out)
    assert code == 0 and doc["summary"]["archs"] == 4 and len(doc["archs"]) == 4 and doc["written"] is None


def test_what_cannot_be_checked(tmp_path, capsys):
    write(tmp_path / "high", fractions=(0.5, 1.0))          # nothing at or below 30%
    with pytest.raises(ScalingError, match=r"at least two sizes up to 0\.3"):
        validate([tmp_path / "high"])
    write(tmp_path / "low", fractions=(0.1, 0.3))           # nothing beyond 30% to check against
    v = None
    with pytest.raises(ScalingError, match="a larger one to check against"):
        v = validate([tmp_path / "low"])
    assert v is None
    code, _, err = run_cli(capsys, "scale", "extrapolate", "low", "--root", str(tmp_path), "--upto", "1.5")
    assert code == 2 and err.count("\n") == 1 and "--upto 1.5" in err


def test_the_readme_documents_the_table():
    from pathlib import Path

    from lab.report.extrapolation import FIELDS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Scaling"):readme.index("## Search spaces")]
    for name, type_, meaning in FIELDS:
        assert f"| `{name}` | {type_} | {meaning} |" in section
