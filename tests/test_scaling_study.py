"""Scaling studies: the grid (archs x nested fractions x seeds), its epoch policies, its settings'
errors, nested fractions of a loaded dataset, sparse validation of long runs, and a tiny scaling
study end to end through Ray Tune."""

from __future__ import annotations

import pytest

from lab.data import load_dataset
from lab.errors import DataError
from lab.errors import StudyError
from lab.study.config import StudyConfig
from lab.study.grid import epochs_for, split_archs


def test_archs_split_on_commas_keeping_multipliers_with_their_name():
    assert split_archs("resnet18@28px,w=0.5,d=0.5, vit_ti16@28px,p=4,mixer_s16") == [
        "resnet18@28px,w=0.5,d=0.5", "vit_ti16@28px,p=4", "mixer_s16"]
    text = "@28 | conv(c=16,k=3),bn,relu | basic 1x16 | gap,fc"
    assert split_archs(f"{text}; resnet18") == [text, "resnet18"]


def test_epoch_policies():
    fractions = [0.05, 0.1, 0.5, 1.0]
    assert [epochs_for(f, fractions, 8, "constant-steps") for f in fractions] == [160, 80, 16, 8]
    assert [epochs_for(f, fractions, 8, "constant-epochs") for f in fractions] == [8, 8, 8, 8]
    assert epochs_for(0.5, [0.25, 0.5], 3, "constant-steps") == 3   # relative to the largest fraction


def test_scaling_settings_resolve_and_fail_clearly():
    c = StudyConfig(name="s", kind="scaling", archs="resnet18,vit_ti16@28px,p=4", fractions="1,0.1,0.1", seeds=3)
    assert c.archs == ["resnet18", "vit_ti16@28px,p=4"] and c.fractions == [0.1, 1.0]
    assert c.trials == 2 * 2 * 3 and c.scheduler == "fifo"
    assert StudyConfig(**c.to_dict()) == c   # what a resumed study reads back
    search = StudyConfig(name="t")
    assert search.trials == 20 and search.scheduler == "asha" and search.kind == "search"
    bad = [
        (dict(kind="scaling", fractions="0.1"), "needs --archs"),
        (dict(kind="scaling", archs="resnet18", fractions="0.1,x"), "fractions = '0.1,x'"),
        (dict(kind="scaling", archs="resnet18", fractions=[0.0, 1]), "in \\(0, 1\\]"),
        (dict(kind="scaling", archs="resnet18", fractions="1", scheduler="asha"), "trains every cell"),
        (dict(kind="scaling", archs="resnet18", fractions="1", trials=5), "= 1"),
        (dict(kind="scaling", archs="resnet18", fractions="1", fraction=0.5), "fraction stays 1"),
        (dict(kind="scaling", archs="resnet18", fractions="1", epochs_policy="more"), "epochs_policy"),
        (dict(archs="resnet18"), "for scaling studies"),
        (dict(kind="grid"), "kind = 'grid'"),
    ]
    for settings, match in bad:
        with pytest.raises(StudyError, match=match):
            StudyConfig(name="s", **settings)


def test_with_fraction_is_the_nested_subset_load_dataset_draws():
    full = load_dataset("mnist5k", seed=0)
    for fraction, seed in [(0.1, 3), (0.5, 1), (1.0, 2)]:
        direct = load_dataset("mnist5k", seed=seed, fraction=fraction)
        sub = full.with_fraction(fraction, seed)
        assert sub.train.indices.tolist() == direct.train.indices.tolist()
        assert (sub.fraction, sub.seed, sub.n_train) == (fraction, seed, direct.n_train)
        assert sub.val.indices.tolist() == full.val.indices.tolist()
    small, large = full.with_fraction(0.1, 5), full.with_fraction(0.3, 5)
    assert set(small.train.indices.tolist()) < set(large.train.indices.tolist())
    with pytest.raises(DataError, match="needs the full training split"):
        small.with_fraction(0.5, 5)


def test_a_long_run_validates_every_kth_epoch_and_the_last():
    from lab.train.run import train

    seen: list[dict] = []
    result = train("@28 | conv(c=8,k=3),bn,relu | basic 1x8 | gap,fc", "mnist5k", epochs=20, batch_size=32,
                   fraction=0.01, out=None, on_epoch=seen.append)
    validated = [e["epoch"] for e in seen if e["val_top1"] is not None]
    assert validated == list(range(2, 21, 2))   # ceil(20 / 16) = 2
    assert result.record["val_top1"] == seen[-1]["val_top1"] and result.record["epochs_done"] == 20


def test_a_tiny_scaling_study_end_to_end(tmp_path, local_ray):
    import optuna

    from lab.study.runner import create
    from lab.study.store import StudyStore

    archs = ["resnet18@28px,w=0.25", "vit_ti16@28px,p=7,w=0.25"]
    config = StudyConfig(name="tiny", kind="scaling", archs=archs, fractions=[0.02, 0.05, 0.1], seeds=2,
                         epochs=1, batch_size=32, concurrency=2, seed=4)
    folder = create(config, root=tmp_path, verbose=0)
    rows = StudyStore(folder).trials().to_pylist()
    assert len(rows) == 12 and {r["state"] for r in rows} == {"complete"}, [(r["state"], r["error"]) for r in rows]
    cells = sorted((r["family"], r["fraction"], r["seed"], r["epochs"], r["n_train"]) for r in rows)
    full = load_dataset("mnist5k", seed=0)
    expected = sorted((family, f, s, round(0.1 / f), full.with_fraction(f, s).n_train)
                      for family in ("resnet", "vit") for f in (0.02, 0.05, 0.1) for s in (4, 5))
    assert cells == expected   # every cell once, constant steps: 5, 2 and 1 epochs
    assert len({r["arch_id"] for r in rows}) == 2 and all(r["epochs_done"] == r["epochs"] for r in rows)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder}/optuna.db")
    assert sorted((t.params["fraction"], t.params["seed"]) for t in study.trials) == sorted(
        (r["fraction"], r["seed"]) for r in rows)
    # the fit table and the dashboard's scaling plot of the trained study
    import json

    import pyarrow.parquet as pq

    from lab.cli.main import main
    from lab.dashboard import render

    assert main(["scale", "fit", "tiny", "--root", str(tmp_path), "--bootstrap", "200", "--json"]) == 0
    fits = pq.read_table(folder / "scaling_fits.parquet").to_pylist()
    assert {f["arch"] for f in fits} == set(archs)
    page = render([folder], root=tmp_path).read_text()
    assert "Scaling" in page and all(json.dumps(a)[1:-1] in page for a in archs)
