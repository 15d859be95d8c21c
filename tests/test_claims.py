"""Scaling-study arms (recipe changes, teachers) and claims: their settings, their statistics
against independent references (scipy's t quantiles, a naive paired difference), their verdicts,
and a tiny study with a MixUp arm and a distilling arm run end to end through `lab study report`."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lab.study.claims import Claim, ClaimResult, Comparison, evaluate, parse_claims, t_interval
from lab.errors import StudyError
from lab.study.config import StudyConfig
from lab.study.grid import Arm, parse_arms

ARMS = [
    "resnet18@28px,w=0.25",
    {"name": "vit", "arch": "vit_ti16@28px,p=7,w=0.25"},
    {"name": "vit-mixup", "arch": "vit_ti16@28px,p=7,w=0.25", "recipe": {"mixup_alpha": 0.8}},
    {"name": "deit", "arch": "deit_ti_distilled@28px,p=7,w=0.25", "teacher": "resnet18@28px,w=0.25"},
]


def test_arms_parse_and_round_trip_through_the_frozen_settings():
    arms = parse_arms(ARMS)
    assert arms[0] == Arm("resnet18@28px,w=0.25", "resnet18@28px,w=0.25")
    assert arms[2].recipe == {"mixup_alpha": 0.8} and arms[3].teacher == "resnet18@28px,w=0.25"
    config = StudyConfig(name="s", kind="scaling", archs=ARMS, fractions=[0.1, 1], seeds=2)
    assert config.archs[0] == "resnet18@28px,w=0.25" and config.trials == 4 * 2 * 2
    again = StudyConfig(**config.to_dict())
    assert again == config and again.arms() == arms


@pytest.mark.parametrize("archs, message", [
    ([{"arch": "resnet18", "colour": 1}], r"archs\[0\]: unknown key 'colour'"),
    ([{"name": "a"}], r"archs\[0\].arch: expected"),
    (["resnet18", {"name": "m", "arch": "resnet18", "recipe": {"mixup": 1}}], r"archs\[1\].recipe: unknown recipe field 'mixup'"),
    ([{"name": "m", "arch": "resnet18", "recipe": {"lr": -1}}], r"archs\[0\].recipe: .*lr = -1"),
    (["resnet18", {"name": "d", "arch": "vit_ti16", "teacher": "convnet"}], r"archs\[1\].teacher = 'convnet'"),
    ([{"name": "a", "arch": "resnet18", "teacher": "b"}, {"name": "b", "arch": "resnet18", "teacher": "a"}],
     "distils from no one"),
    (["resnet18", {"name": "resnet18", "arch": "resnet34"}], r"archs\[1\].name: 'resnet18' names two arms"),
    ([{"name": "a", "arch": "resnet18", "teacher": "a"}], "another arm"),
    ([3], r"archs\[0\]: expected a name"),
])
def test_bad_arms_name_the_entry_and_field(archs, message):
    with pytest.raises(StudyError, match=message):
        StudyConfig(name="s", kind="scaling", archs=archs, fractions=[1])


@pytest.mark.parametrize("claims, message", [
    ([{"claim": "x", "test": "wins", "arm": "a", "than": "b"}], r"claims\[0\].test = 'wins'"),
    ([{"claim": "x", "test": "beats", "arm": "a", "than": ["c"]}], r"claims\[0\].than = 'c': not an arm"),
    ([{"claim": "x", "test": "beats", "arm": "z", "than": ["b"]}], r"claims\[0\].arm = 'z'"),
    ([{"claim": "x", "test": "beats", "arm": "a", "than": ["a"]}], "with itself"),
    ([{"claim": "x", "test": "beats", "arm": "a", "than": "b", "at": 0.3}], r"at = 0.3: not one of the study's fractions"),
    ([{"claim": "x", "test": "steeper", "arm": "a", "than": "b", "at": "smallest"}], r"claims\[0\].at: only a `beats`"),
    ([{"test": "beats", "arm": "a", "than": "b"}], r"claims\[0\].claim"),
    ([{"claim": "x", "test": "beats", "arm": "a", "than": "b", "why": 1}], "unknown key 'why'"),
    ({"claim": "x"}, "a list of claims"),
])
def test_bad_claims_name_the_entry_and_field(claims, message):
    with pytest.raises(StudyError, match=message):
        StudyConfig(name="s", kind="scaling", archs=[{"name": "a", "arch": "resnet18"}, {"name": "b", "arch": "resnet34"}],
                    fractions=[0.1, 1], claims=claims)


def test_claims_belong_to_scaling_studies():
    with pytest.raises(StudyError, match="study claims is for scaling studies"):
        StudyConfig(name="s", claims=[])


def test_t_interval_matches_scipy():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 12):
        x = rng.normal(0.02, 0.01, n)
        mean, lo, hi = t_interval(x, 0.95)
        ref_lo, ref_hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
        assert mean == pytest.approx(x.mean()) and lo == pytest.approx(ref_lo, rel=2e-3) and hi == pytest.approx(ref_hi, rel=2e-3)
    assert all(math.isnan(v) for v in t_interval(np.array([0.1]), 0.95)[1:])


def _rows(acc: dict) -> pd.DataFrame:
    """Trial rows of a scaling study from {(arm, fraction, seed): accuracy}."""
    return pd.DataFrame([{"state": "complete", "test_top1": a, "n_train": int(4000 * f),
                          "hparams": json.dumps({"recipe": {}, "vars": {"arch": arm, "fraction": f, "seed": s}})}
                         for (arm, f, s), a in acc.items()])


def _naive_paired(acc: dict, a: str, b: str, f: float, seeds) -> np.ndarray:
    return np.array([acc[(a, f, s)] - acc[(b, f, s)] for s in seeds])


def test_beats_and_closes_gap_are_paired_by_seed():
    rng = np.random.default_rng(1)
    fractions, seeds = [0.1, 0.5, 1.0], [0, 1, 2, 3]
    acc = {}
    for s in seeds:
        subset = rng.normal(0, 0.03)                       # a seed's subset is easy or hard for every arm
        for f in fractions:
            acc[("conv", f, s)] = 0.80 + 0.1 * f + subset + rng.normal(0, 0.002)
            acc[("vit", f, s)] = 0.60 + 0.25 * f + subset + rng.normal(0, 0.002)
    rows = _rows(acc)
    claims = [Claim("conv best with little data", "beats", "conv", ("vit",), "smallest"),
              Claim("conv best everywhere", "beats", "conv", ("vit",), "all"),
              Claim("vit best at 1", "beats", "vit", ("conv",), 1.0),
              Claim("vit closes the gap", "closes-gap", "vit", ("conv",))]
    small, every, at_one, gap = evaluate(claims, rows, "test_top1")
    d = _naive_paired(acc, "conv", "vit", 0.1, seeds)
    ref = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    (c,) = small.comparisons
    assert c.value == pytest.approx(d.mean()) and (c.lo, c.hi) == pytest.approx(ref, rel=2e-3) and c.n == 4
    assert small.verdict == "supported"
    # the mean over fractions, per seed, then over seeds
    per_seed = np.mean([_naive_paired(acc, "conv", "vit", f, seeds) for f in fractions], axis=0)
    assert every.comparisons[0].value == pytest.approx(per_seed.mean()) and every.verdict == "supported"
    assert at_one.verdict == "contradicted"                # conv is still ahead at the full split
    g = _naive_paired(acc, "vit", "conv", 1.0, seeds) - _naive_paired(acc, "vit", "conv", 0.1, seeds)
    assert gap.comparisons[0].value == pytest.approx(g.mean()) and gap.verdict == "supported"
    # unpaired noise of the same size as the effect: no verdict either way
    noisy = {k: v + rng.normal(0, 0.2) for k, v in acc.items()}
    (r,) = evaluate([Claim("x", "beats", "conv", ("vit",), 1.0)], _rows(noisy), "test_top1")
    assert r.comparisons[0].lo < 0 < r.comparisons[0].hi and r.verdict == "inconclusive"


def test_a_comparison_without_two_paired_seeds_has_no_verdict():
    acc = {("a", 0.1, 0): 0.9, ("b", 0.1, 0): 0.5, ("a", 0.1, 1): 0.9}
    (r,) = evaluate([Claim("x", "beats", "a", ("b",), "smallest")], _rows(acc), "test_top1")
    assert r.verdict == "inconclusive" and "1 paired seed" in r.comparisons[0].note
    (r,) = evaluate([Claim("x", "beats", "a", ("b",), "smallest")], _rows({}), "test_top1")
    assert r.comparisons[0].note == "no complete trials"


def test_steeper_compares_the_bootstrap_exponents():
    from lab.scaling.curves import Curve, fit_curves

    rng = np.random.default_rng(2)
    sizes = np.array([400, 1000, 2000, 4000])
    curves = []
    for name, b in (("vit", 0.6), ("conv", 0.2)):
        d = np.repeat(sizes, 3)
        e = 3.0 * d ** -b * np.exp(rng.normal(0, 0.03, d.size))
        curves.append(Curve.from_points(d, e, name=name, key=name))
    fits = {f.curve.key: f for f in fit_curves(curves, ("power",), n_boot=500, seed=0)}
    (up, down) = evaluate([Claim("vit steeper", "steeper", "vit", ("conv",)),
                           Claim("conv steeper", "steeper", "conv", ("vit",))], _rows({}), "test_top1", fits)
    c = up.comparisons[0]
    assert c.value == pytest.approx(fits["vit"].get("power").value("b") - fits["conv"].get("power").value("b"))
    assert 0.3 < c.lo < c.value < c.hi < 0.5 and up.verdict == "supported" and down.verdict == "contradicted"
    (missing,) = evaluate([Claim("x", "steeper", "vit", ("nat",))], _rows({}), "test_top1", fits)
    assert "nat" in missing.comparisons[0].note


@pytest.mark.parametrize("verdicts, overall", [
    (["supported", "supported"], "supported"), (["supported", "inconclusive"], "partly supported"),
    (["contradicted"], "contradicted"), (["contradicted", "inconclusive"], "partly contradicted"),
    (["supported", "contradicted"], "mixed"), (["inconclusive"], "inconclusive"),
])
def test_a_claims_verdict_summarises_its_comparisons(verdicts, overall):
    r = ClaimResult(Claim("x", "beats", "a", tuple("b" * len(verdicts))),
                    [Comparison("a", "b", "", verdict=v) for v in verdicts])
    assert r.verdict == overall


def test_a_tiny_study_with_a_mixup_arm_and_a_distilling_arm(tmp_path, capsys, local_ray):
    """Arms of one architecture trained two ways are two curves; a distilling arm's teacher is
    trained once per (fraction, seed) and cached; the report and the dashboard state the claims."""
    from lab.cli.main import main
    from lab.dashboard import render
    from lab.study.runner import create
    from lab.study.store import StudyStore
    from lab.study.teachers import cached_checkpoint
    from lab.train.record import read_records

    arms = [{"name": "conv", "arch": "resnet18@28px,w=0.25"}, *ARMS[1:3],
            {"name": "deit", "arch": "deit_ti_distilled@28px,p=7,w=0.25", "teacher": "conv"}]
    claims = [{"claim": "conv beats vit with little data", "test": "beats", "arm": "conv", "than": ["vit", "vit-mixup"]},
              {"claim": "vit gains more from data", "test": "steeper", "arm": "vit", "than": "conv"},
              {"claim": "distillation helps", "test": "beats", "arm": "deit", "than": "vit", "at": "all"}]
    config = StudyConfig(name="arms", kind="scaling", archs=arms, fractions=[0.03, 0.06], seeds=2, epochs=1,
                         batch_size=32, seed=0, claims=claims)
    folder = create(config, root=tmp_path, verbose=0)
    rows = StudyStore(folder).trials().to_pylist()
    assert len(rows) == 16 and {r["state"] for r in rows} == {"complete"}, [(r["state"], r["error"]) for r in rows]
    mixup = [json.loads(r["hparams"]) for r in rows if json.loads(r["hparams"])["vars"]["arch"] == "vit-mixup"]
    assert len(mixup) == 4 and all(h["recipe"] == {"mixup_alpha": 0.8} for h in mixup)
    # one cached teacher per (fraction, seed), trained at the cell's data and epochs
    teachers = sorted(p for p in (folder / "teachers").iterdir() if p.is_dir())
    assert [p.name for p in teachers] == ["conv-f0.03-s0-e2", "conv-f0.03-s1-e2", "conv-f0.06-s0-e1", "conv-f0.06-s1-e1"]
    for p in teachers:
        (record,) = read_records(p / "runs.parquet").to_pylist()
        assert cached_checkpoint(p) is not None and record["text"].startswith("@28 | conv")
    # vit and vit-mixup share an arch_id but are two curves
    assert main(["scale", "fit", "arms", "--root", str(tmp_path), "--bootstrap", "100", "--json"]) == 0
    capsys.readouterr()
    import pyarrow.parquet as pq

    assert {f["arch"] for f in pq.read_table(folder / "scaling_fits.parquet").to_pylist()} == {"conv", "vit", "vit-mixup", "deit"}
    assert main(["study", "report", "arms", "--root", str(tmp_path), "--bootstrap", "100"]) == 0
    text = capsys.readouterr().out
    assert "claim 1: conv beats vit with little data" in text and "verdict:" in text and "teacher conv: 4 cached runs" in text
    assert main(["study", "report", "arms", "--root", str(tmp_path), "--bootstrap", "100", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["claim"] for c in report["claims"]] == [c["claim"] for c in claims]
    acc = pd.DataFrame(report["accuracy"])
    ours = pd.DataFrame([{"arm": json.loads(r["hparams"])["vars"]["arch"], "fraction": json.loads(r["hparams"])["vars"]["fraction"],
                          "acc": r["test_top1"]} for r in rows]).groupby(["arm", "fraction"])["acc"].mean()
    assert np.allclose(acc.set_index(["arm", "fraction"])["mean"].sort_index(), ours.sort_index())
    page = render([folder], root=tmp_path).read_text()
    assert "<section id='claims'>" in page and "distillation helps" in page


def test_report_errors_are_one_line(tmp_path, capsys):
    from lab.cli.main import main
    from lab.study.store import StudyStore

    StudyStore(tmp_path / "search").save_config(StudyConfig(name="search").to_dict())
    assert main(["study", "report", "search", "--root", str(tmp_path)]) == 2
    assert "is a search" in capsys.readouterr().err
    assert main(["study", "report", "nothing", "--root", str(tmp_path)]) == 2
    assert "no study 'nothing'" in capsys.readouterr().err


def test_a_bad_recipe_file_is_one_line_and_leaves_no_study(tmp_path, capsys):
    import yaml

    from lab.cli.main import main

    recipe = {"kind": "scaling", "fractions": [0.5, 1], "archs": ["resnet18", {"name": "s", "arch": "vit_ti16", "teacher": "t"}]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["study", "create", "--recipe-file", str(path), "--root", str(tmp_path / "studies")]) == 2
    err = capsys.readouterr().err
    assert "study archs[1].teacher = 't'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "studies").exists()


def test_the_lecture_claims_recipe_is_valid():
    from pathlib import Path

    from lab.study.config import read_recipe_file

    config = StudyConfig(name="lecture-claims", **read_recipe_file(Path(__file__).parent.parent / "studies/lecture-claims.yaml"))
    arms = {a.name: a for a in config.arms()}
    assert arms["deit"].teacher == "conv" and arms["vit-mixup"].recipe == {"mixup_alpha": 0.8}
    assert config.trials == len(arms) * len(config.fractions) * config.seeds and len(config.claims) == 8
    # matched compute: every arm within 1.25x of the others' MACs
    from lab.cost import totals
    from lab.train.run import resolve_arch

    macs = [totals(resolve_arch(a.arch, None, 28), 10, 1).macs for a in arms.values()]
    assert max(macs) / min(macs) < 1.25
