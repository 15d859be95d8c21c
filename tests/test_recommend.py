"""`lab recommend`: architectures ranked by their accuracy predicted at N training images, within a
MACs or parameter budget, from synthetic studies whose errors follow known power laws exactly (so
the predictions are checked against the closed form a * N^-b)."""

from __future__ import annotations

import json
import math

import pytest
from support import run_cli

from lab.cli.recommend import amount
from lab.errors import ScalingError, StudyError
from lab.report.recommend import WARN_FACTOR, format_recommendation, recommend
from lab.scaling.predict import PRIOR_DOF, PRIOR_SD
from lab.study.store import StudyStore

N_FULL = 4000
FRACTIONS = (0.1, 0.3, 1.0)                      # 400, 1200, 4000 images
# arm -> (a, b, MACs per image, params): error = a * D^-b
ARMS = {"cheap": (2.0, 0.3, 2e6, 1e5), "mid": (5.0, 0.5, 8e6, 4e5), "big": (8.0, 0.6, 3e7, 2e6)}
LADDER = (3.0, 0.4)                               # the target-size search's point: 100, 300, 900 images
LADDER_SIZES = [100, 300, 900]
LADDER_TEXT = "@28 | conv(c=24,k=3,s=2),bn,relu | basic 2x24, 2x48/2, 2x96/2 | ln,gap,fc(dropout=0.1)"


def power(a: float, b: float, d: float) -> float:
    return a * d ** -b


def _scaling_study(folder) -> None:
    store = StudyStore(folder)
    store.save_config({"name": "arms", "kind": "scaling", "archs": list(ARMS), "fractions": list(FRACTIONS), "seeds": 2,
                       "dataset": "mnist5k", "objectives": "val_acc:max,macs:min", "epochs": 8, "seed": 0})
    number = 0
    for arm, (a, b, macs, params) in ARMS.items():
        for fraction in FRACTIONS:
            n = round(N_FULL * fraction)
            for seed in range(2):
                store.write_trial({"number": number, "state": "complete", "arch_id": f"id-{arm}", "text": f"text of {arm}",
                                   "family": f"fam-{arm}", "params": int(params), "macs": int(macs), "res": 28,
                                   "dataset": "mnist5k", "fraction": fraction, "n_train": n, "seed": seed,
                                   "hparams": {"vars": {"arch": arm}}, "val_top1": 1 - power(a, b, n)})
                number += 1


def _ladder_study(folder) -> None:
    """A --target-size search: trial 0 climbed the whole ladder, trial 1 was stopped after its first size."""
    store = StudyStore(folder)
    store.save_config({"name": "ladder", "space": "hybrid", "dataset": "mnist5k", "objectives": "val_acc:max,macs:min",
                       "fraction": 0.2, "target_size": 40000, "rungs": 3, "seed": 0})
    a, b = LADDER
    store.write_trial({"number": 0, "state": "complete", "arch_id": "abc1234567", "text": LADDER_TEXT, "family": "resnet",
                       "params": 3_000_000, "macs": 20_000_000, "res": 28, "dataset": "mnist5k", "fraction": 0.2,
                       "n_train": 900, "sizes": LADDER_SIZES, "sizes_top1": [1 - power(a, b, n) for n in LADDER_SIZES],
                       "val_top1": 1 - power(a, b, 900)})
    store.write_trial({"number": 1, "state": "pruned", "arch_id": "def7654321", "text": "@28 | conv(c=8,k=3,s=2) | gap,fc",
                       "family": "resnet", "params": 50_000, "macs": 1_000_000, "res": 28, "dataset": "mnist5k",
                       "fraction": 0.2, "n_train": 100, "sizes": [100], "sizes_top1": [0.6], "val_top1": 0.6})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    _scaling_study(root / "arms")
    _ladder_study(root / "ladder")
    return root


def test_ranking_and_predictions_follow_the_closed_form(root):
    target = 12000          # 3x the arms' largest size
    rec = recommend(["arms", "ladder"], target, root=root)
    expected = {arm: 1 - power(a, b, target) for arm, (a, b, _, _) in ARMS.items()}
    expected["abc1234567"] = 1 - power(*LADDER, target)
    order = sorted(expected, key=lambda k: -expected[k])
    assert [r["arch"] for r in rec.ranked] == order == ["big", "mid", "abc1234567", "cheap"]
    assert [r["rank"] for r in rec.ranked] == [1, 2, 3, 4]
    for r in rec.ranked:
        assert r["predicted"] == pytest.approx(expected[r["arch"]], abs=1e-6)
        assert r["lo"] < r["predicted"] < r["hi"]
    by = {r["arch"]: r for r in rec.ranked}
    assert by["cheap"]["sizes"] == [400, 1200, 4000] and by["cheap"]["factor"] == pytest.approx(3.0)
    assert by["abc1234567"]["sizes"] == LADDER_SIZES and by["abc1234567"]["factor"] == pytest.approx(target / 900)
    assert by["cheap"]["study"] == "arms" and by["abc1234567"]["study"] == "ladder"
    # noiseless curves: the pooled noise is the prior, updated with zero residuals over 3 + 1 degrees of freedom
    assert rec.noise.dof == PRIOR_DOF + 4
    assert rec.noise.sd == pytest.approx(math.sqrt(PRIOR_DOF * PRIOR_SD ** 2 / (PRIOR_DOF + 4)))
    # the trial stopped after one size has no curve to extrapolate
    assert [r["arch"] for r in rec.unranked] == ["def7654321"]
    assert "2 sizes" in rec.unranked[0]["reason"]
    assert rec.over_budget == 0


def test_budgets_keep_the_cheap_arms(root):
    rec = recommend(["arms", "ladder"], 12000, macs=5e6, root=root)
    assert [r["arch"] for r in rec.ranked] == ["cheap"]
    assert rec.over_budget == 3                 # mid, big and the ladder's 20 MMACs point
    assert [r["arch"] for r in rec.unranked] == ["def7654321"]   # 1 MMACs: within, but one size
    rec = recommend(["arms"], 12000, params=4e5, root=root)
    assert [r["arch"] for r in rec.ranked] == ["mid", "cheap"] and rec.over_budget == 1


def test_the_text_lists_every_part(root, capsys):
    rc, out, err = run_cli(capsys, "recommend", "--data", "12000", "--macs", "25M", "arms", "ladder", "--root", str(root))
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("recommendation for 12,000 training images from arms+ladder: the power law, noise sd "
                               f"{math.sqrt(PRIOR_DOF * PRIOR_SD ** 2 / (PRIOR_DOF + 4)):.3f}")
    assert "budget: macs <= 25 MMACs per image" in lines[0]
    rows = {line.split()[1]: line for line in lines if line.split() and line.split()[0].isdigit()}
    assert list(rows) == ["mid", "abc1234567", "cheap"]
    assert f"{100 * (1 - power(*ARMS['mid'][:2], 12000)):.2f}%" in rows["mid"]
    assert "400,1200,4000" in rows["cheap"] and "3.0x" in rows["cheap"] and " 2 " in rows["cheap"]   # 2 MMACs
    assert "13.3x" in rows["abc1234567"] and "100,300,900" in rows["abc1234567"]
    assert LADDER_TEXT[:57] + "..." in rows["abc1234567"]                # a grammar point: its text, cut
    assert "not ranked:" in out and "def7654321" in out.split("not ranked:")[1]
    assert "over the budget (macs <= 25 MMACs per image): 1 architecture left out" in out
    # only the ladder's point is beyond WARN_FACTOR (the arms are 3x beyond)
    assert err.splitlines() == [f"lab: warning: abc1234567 is extrapolated {12000 / 900:.1f}x beyond its largest measured "
                                "size 900: the extrapolation check (`lab scale extrapolate`) validated factors of "
                                "3.3x (BENCHMARKS.md)"]
    assert 12000 / 900 > WARN_FACTOR > 3


def test_json_holds_ranked_unranked_and_the_budget(root, capsys):
    rc, out, err = run_cli(capsys, "recommend", "--data", "40000", "--params", "2.5M", "--top", "2", "--json",
                           "arms", "ladder", "--root", str(root))
    assert rc == 0
    doc = json.loads(out)
    assert doc["target"] == 40000 and doc["law"] == "power" and doc["budget"] == {"kind": "params", "max": 2.5e6}
    assert set(doc["noise"]) == {"sd", "dof", "drift"} and doc["over_budget"] == 1      # the ladder's 3 M params
    assert [r["arch"] for r in doc["ranked"]] == ["big", "mid"] and doc["ranked_total"] == 3
    big = doc["ranked"][0]
    assert big["predicted"] == pytest.approx(1 - power(*ARMS["big"][:2], 40000), abs=1e-6)
    assert big["factor"] == pytest.approx(10.0) and big["macs"] == 3e7 and big["sizes"] == [400, 1200, 4000]
    assert big["warning"].startswith("big is extrapolated 10.0x beyond its largest measured size 4,000")
    assert [r["arch"] for r in doc["unranked"]] == ["def7654321"] and doc["unranked"][0]["predicted"] is None
    assert doc["unranked"][0]["text"] == "@28 | conv(c=8,k=3,s=2) | gap,fc"
    assert len(err.splitlines()) == 2 and all(line.startswith("lab: warning: ") for line in err.splitlines())


def test_top_cuts_the_table(root, capsys):
    rc, out, _ = run_cli(capsys, "recommend", "--data", "4000", "--top", "1", "arms", "--root", str(root))
    assert rc == 0 and "... and 2 more ranked (--top 1)" in out
    assert [line.split()[1] for line in out.splitlines() if line.split() and line.split()[0].isdigit()] == ["big"]


@pytest.mark.parametrize("argv, flag", [
    (["--data", "0"], "--data"), (["--data", "2.5"], "--data"), (["--data", "many"], "--data"),
    (["--data", "100", "--macs", "lots"], "--macs"), (["--data", "100", "--params", "0"], "--params"),
    (["--data", "100", "--macs", "5M", "--params", "1M"], "--params"), (["--data", "100", "--top", "0"], "--top"),
])
def test_bad_flags_are_one_line_errors(root, capsys, argv, flag):
    rc, out, err = run_cli(capsys, "recommend", *argv, "arms", "--root", str(root))
    assert rc == 2 and not out
    assert len(err.strip().splitlines()) == 1 and "error" in err and flag in err


def test_missing_study_and_studies_without_sizes(root, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "recommend", "--data", "100", "nothere", "--root", str(root))
    assert rc == 2 and err.startswith("lab: error: ") and len(err.strip().splitlines()) == 1 and "nothere" in err
    store = StudyStore(tmp_path / "failed")
    store.save_config({"name": "failed", "objectives": "val_acc:max,macs:min"})
    store.write_trial({"number": 0, "state": "failed", "arch_id": "x", "text": "t", "res": 28, "error": "boom"})
    with pytest.raises(ScalingError, match="no trial of failed has a val_top1 at a training-set size"):
        recommend([tmp_path / "failed"], 100)
    rc, _, err = run_cli(capsys, "recommend", "--data", "100", str(tmp_path / "failed"))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    with pytest.raises(StudyError):
        recommend([], 100, root=root)


def test_the_python_api_checks_its_arguments(root):
    with pytest.raises(ScalingError, match="--macs and --params"):
        recommend(["arms"], 100, macs=1e6, params=1e6, root=root)
    with pytest.raises(ScalingError, match="--data"):
        recommend(["arms"], 0, root=root)
    with pytest.raises(ScalingError, match="--macs"):
        recommend(["arms"], 100, macs=-1.0, root=root)
    assert "no architecture could be ranked within the budget" in format_recommendation(
        recommend(["arms"], 100, macs=1e3, root=root))


@pytest.mark.parametrize("text, value", [("5M", 5e6), ("2.5g", 2.5e9), ("300K", 3e5), ("1e6", 1e6), ("1500", 1500.0),
                                         (" 7m ", 7e6)])
def test_budget_amounts(text, value):
    assert amount(text) == value


@pytest.mark.parametrize("text", ["lots", "0", "-1M", "5x", "inf", "nan", "", "M", "٣M"])
def test_bad_budget_amounts(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="expected a positive number"):
        amount(text)


def test_a_budget_needs_the_cost(tmp_path):
    store = StudyStore(tmp_path / "nocost")
    store.save_config({"name": "nocost", "objectives": "val_acc:max,macs:min"})
    for i, n in enumerate((200, 600)):
        store.write_trial({"number": i, "state": "complete", "arch_id": "nc", "text": "t", "res": 28, "dataset": "d",
                           "fraction": n / 600, "n_train": n, "val_top1": 1 - power(2.0, 0.5, n)})
    assert [r["arch"] for r in recommend([tmp_path / "nocost"], 1000).ranked] == ["nc"]
    rec = recommend([tmp_path / "nocost"], 1000, macs=1e9)
    assert not rec.ranked and rec.over_budget == 0
    assert rec.unranked[0]["reason"] == "nc: no macs recorded to check the budget against"
