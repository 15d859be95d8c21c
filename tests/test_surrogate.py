"""lab.tabular's features and surrogate: encoding of points, curve predictions, held-out quality.

`synthetic_table` stands in for a benchmark table (benchmarks/surrogate.py uses it too, with
--synthetic): random points of the hybrid space with a made-up, nonlinear accuracy and a time
per epoch that scales with MACs and attention stages.
"""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pyarrow as pa
import pytest
import scipy.linalg
import scipy.stats
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.neighbors import KNeighborsRegressor

from lab.errors import DataError
from lab.study.space import load_space
from lab.tabular import surrogate as sur
from lab.tabular.features import Featurizer, vars_of

ATTENTION = {"mhsa", "swin", "nat", "mixer"}


def _final_accuracy(values: dict, macs: float, rng: np.random.Generator) -> float:
    """A made-up accuracy: saturating in MACs, better with depth up to a point, conv stages better
    early and attention late, a patch stem of 7 px poor; plus noise."""
    stages = [(values[f"mixer_{i}"], values[f"depth_{i}"]) for i in range(values["n_stages"])]
    depth = sum(d for _, d in stages)
    acc = 0.55 + 0.35 / (1 + math.exp(-2.0 * (math.log10(macs) - 6.6)))
    acc += 0.04 * math.tanh(depth - 3) - 0.01 * max(0, depth - 6)
    acc += sum(0.02 if (m in ATTENTION) == (i > 0) else -0.015 for i, (m, _) in enumerate(stages))
    acc -= 0.06 if values.get("patch") == 7 else 0.0
    return float(np.clip(acc + rng.normal(0, 0.01), 0.05, 0.995))


def synthetic_table(n: int = 120, seed: int = 0, epochs: int = 4, noise_target: bool = False) -> pa.Table:
    """`n` trained rows of random hybrid-space points, in the benchmark table's columns that the
    surrogate reads. `noise_target`: final accuracies independent of the point (pure noise)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space("hybrid")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    while len(rows) < n:
        point = space.sample(study.ask(), num_classes=10, in_chans=1)
        if point.reason is not None:
            continue
        final = float(rng.uniform(0.3, 0.95)) if noise_target else _final_accuracy(point.values, point.macs, rng)
        rate = 0.6 + 0.15 * sum(point.values[f"mixer_{i}"] in ATTENTION for i in range(point.values["n_stages"]))
        curve = [final * (1 - 0.6 * math.exp(-rate * 2 * (e + 1))) / (1 - 0.6 * math.exp(-rate * 2 * epochs))
                 for e in range(epochs)]
        loss = [-math.log(0.9 * a + 0.05) + abs(rng.normal(0, 0.02)) for a in curve]
        n_attn = sum(point.values[f"mixer_{i}"] in ATTENTION for i in range(point.values["n_stages"]))
        per_epoch = 2e-6 * point.macs ** 0.9 * (1 + 0.5 * n_attn) * rng.lognormal(0, 0.05, epochs)
        per_epoch[0] *= 1.2   # the first epoch pays the warm-up
        rows.append({"number": len(rows), "state": "complete", "text": point.text, "params": point.params,
                     "macs": point.macs, "epochs": epochs, "epochs_done": epochs,
                     "hparams": json.dumps({"recipe": {}, "vars": point.values}, sort_keys=True),
                     "val_top1": curve[-1], "loss": loss[-1], "train_seconds": float(per_epoch.sum()),
                     "curve_val_top1": curve, "curve_loss": loss, "curve_seconds": np.cumsum(per_epoch).tolist()})
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return synthetic_table(120, seed=0)


# --- features ---------------------------------------------------------------------------------

SEEN = [{"layout": "iso", "width": 16, "n_stages": 1, "mixer_0": "basic", "depth_0": 2},
        {"layout": "hier", "width": 32, "stride": 2, "n_stages": 2, "mixer_0": "swin", "depth_0": 1,
         "w_0": 4, "mixer_1": "basic", "depth_1": 3},
        {"layout": "hier", "width": 64, "stride": 4, "n_stages": 1, "mixer_0": "swin", "depth_0": 3, "w_0": 7}]


def _features(featurizer: Featurizer, values: dict, params: float = 1e5, macs: float = 1e7) -> dict[str, float]:
    return dict(zip(featurizer.names, featurizer.transform([values], params, macs)[0]))


def test_features_unseen_values_and_missing_conditionals():
    f = Featurizer.fit(SEEN)
    # an unseen layout, no stride (a conditional not sampled), an unseen mixer, a variable never seen
    got = _features(f, {"layout": "other", "width": 48, "n_stages": 1, "mixer_0": "nat", "depth_0": 2, "k_0": 5},
                    params=1234.0, macs=5e6)
    assert got["layout=\"hier\""] == got["layout=\"iso\""] == 0.0                # unseen value: all zeros
    assert got["width"] == 48.0 and got["width:active"] == 1.0                    # numeric: every seen value a number
    assert got["stride:active"] == 0.0 and got["stride"] < 2.0                   # missing: a sentinel below the range
    assert got["mixer_0=\"basic\""] == got["mixer_0=\"swin\""] == 0.0
    assert got["w_0:active"] == 0.0 and got["mixer_1=\"basic\""] == 0.0
    assert not any(name.startswith("k_0") for name in f.names)                   # not seen when fitted: no feature
    assert got["log10_params"] == pytest.approx(math.log10(1234.0)) and got["log10_macs"] == pytest.approx(math.log10(5e6))
    assert len(f.transform([{}], 1.0, 1.0)[0]) == len(f.names)                   # an empty point still has every column


def test_features_stage_aggregates():
    f = Featurizer.fit(SEEN)
    got = _features(f, SEEN[1])
    assert got["mixer:count=\"swin\""] == 1.0 and got["mixer:count=\"basic\""] == 1.0 and got["mixer:stages"] == 2.0
    assert got["depth:sum"] == 4.0 and got["depth:max"] == 3.0 and got["depth:stages"] == 2.0
    assert got["w:sum"] == 4.0 and got["w:stages"] == 1.0
    assert got["mixer_1=\"basic\""] == 1.0 and got["depth_1"] == 3.0 and got["depth_1:active"] == 1.0
    assert "layout:sum" not in got and "width:stages" not in got                  # not per-stage: no aggregate


def test_features_kind_of_each_variable():
    f = Featurizer.fit([{"a": 1, "b": "x", "c": True, "d": 0.25}, {"a": 2.5, "b": 3, "c": False, "d": 0}])
    assert f.variables["a"].numeric and f.variables["d"].numeric
    assert not f.variables["b"].numeric and not f.variables["c"].numeric         # mixed, and booleans: categories
    got = _features(f, {"a": 2, "b": 3, "c": True, "d": 0})
    assert got["b=3"] == 1.0 and got["b=\"x\""] == 0.0 and got["c=true"] == 1.0 and got["c=false"] == 0.0


def test_vars_of_reads_hparams():
    t = pa.table({"hparams": [json.dumps({"recipe": {"lr": 1}, "vars": {"a": 1}}), None, "{}"]})
    assert vars_of(t) == [{"a": 1}, {}, {}]


# --- curves -----------------------------------------------------------------------------------

def test_curves_shapes_monotone_seconds_and_clipping(table):
    s = sur.fit_surrogate(table, "rf")
    assert s.epochs == 4 and s.n == 120
    rows = table.slice(0, 5)
    vars_list, params, macs = vars_of(rows), rows["params"].to_numpy(), rows["macs"].to_numpy()
    c = s.predict(vars_list, params, macs, 4)
    for array in (c.val_top1, c.loss, c.seconds):
        assert array.shape == (5, 4)
    assert (np.diff(c.seconds, axis=1) > 0).all() and (c.seconds[:, 0] > 0).all()
    assert (c.loss > 0).all() and ((0 <= c.val_top1) & (c.val_top1 <= 1)).all()
    assert s.predict(vars_list, params, macs, 2).val_top1.shape == (5, 2)
    # the accuracy regressor's raw output outside [0, 1] is clipped
    s.regressors[0].predict = lambda x: np.tile([1.7, -0.2, 0.5, 1.0], (len(x), 1))
    assert s.predict(vars_list, params, macs).val_top1[0].tolist() == [1.0, 0.0, 0.5, 1.0]
    with pytest.raises(DataError, match="epochs 5"):
        s.predict(vars_list, params, macs, 5)


def test_predicted_time_follows_macs(table):
    """Time per epoch in the synthetic table is ~ MACs^0.9: the held-out predicted seconds rank as the true ones."""
    train, test = table.slice(0, 90), table.slice(90)
    s = sur.fit_surrogate(train, "rf")
    predicted = s.predict(vars_of(test), test["params"].to_numpy(), test["macs"].to_numpy()).seconds[:, -1]
    truth = np.array([c[-1] for c in test["curve_seconds"].to_pylist()])
    assert scipy.stats.spearmanr(predicted, truth).statistic > 0.8


def test_short_rows_are_not_curve_targets(table):
    rows = table.to_pylist()
    rows[0] = dict(rows[0], curve_val_top1=rows[0]["curve_val_top1"][:2], curve_loss=rows[0]["curve_loss"][:2],
                   curve_seconds=rows[0]["curve_seconds"][:2], epochs_done=2)
    rows[1] = dict(rows[1], state="failed")
    frame, epochs = sur.full_rows(pa.Table.from_pylist(rows))
    assert epochs == 4 and len(frame) == 118 and 0 not in set(frame["number"]) and 1 not in set(frame["number"])
    empty = pa.Table.from_pylist([dict(r, curve_val_top1=[], curve_loss=[], curve_seconds=[]) for r in rows[:3]])
    assert len(sur.full_rows(empty)[0]) == 0 and len(sur.full_rows(table.slice(0, 0))[0]) == 0


def test_models_and_errors(table):
    small = table.slice(0, 40)
    for model in sur.MODELS:
        c = sur.fit_surrogate(small, model).predict(vars_of(small.slice(0, 2)), [1e5, 2e5], [5e6, 9e6])
        assert c.val_top1.shape == (2, 4) and np.isfinite(c.seconds).all()
    with pytest.raises(DataError, match="surrogate model 'svm'"):
        sur.fit_surrogate(small, "svm")
    with pytest.raises(DataError, match="1 row"):
        sur.fit_surrogate(small.slice(0, 1))
    with pytest.raises(DataError, match="no column 'curve_loss'"):
        sur.fit_surrogate(small.drop(["curve_loss"]))


def test_cached_surrogate_fits_once(table):
    first = sur.cached_surrogate(table, "knn")
    assert sur.cached_surrogate(table, "knn") is first
    assert sur.cached_surrogate(table, "knn", seed=1) is not first
    copy = pa.Table.from_batches(table.to_batches())
    assert sur.cached_surrogate(copy, "knn") is not first                         # another table object
    assert sur.cached_surrogate(copy, "knn", key="bench.parquet") is sur.cached_surrogate(table, "knn", key="bench.parquet")


# --- quality ----------------------------------------------------------------------------------

def test_quality_folds_never_predict_a_fitted_point(table, monkeypatch):
    fitted: list[set] = []
    real = sur._fit

    def recording(t, model, seed, curves):
        fitted.append(set(sur.frame_of(t)["number"]))
        return real(t, model, seed, curves)

    monkeypatch.setattr(sur, "_fit", recording)
    oof = sur.out_of_fold(table, "knn", folds=5, seed=3)
    assert len(fitted) == 5 and sorted(oof.number.tolist()) == list(range(120))
    for f, numbers in enumerate(fitted):
        held = set(oof.number[oof.fold == f].tolist())
        assert held and not held & numbers and held | numbers == set(range(120))


def test_quality_on_pure_noise_is_near_zero_held_out():
    noise = synthetic_table(80, seed=1, noise_target=True)
    q = sur.quality(noise, "rf", folds=4, seed=0)
    assert q["n"] == 80 and q["folds"] == 4 and abs(q["kendall"]) < 0.25 and abs(q["spearman"]) < 0.35
    # while the same forest ranks the points it was fitted on well: quality must not be in-sample
    s = sur.fit_surrogate(noise, "rf")
    in_sample = s.predict(vars_of(noise), noise["params"].to_numpy(), noise["macs"].to_numpy()).val_top1[:, -1]
    assert in_sample == pytest.approx(s.final_val_top1(vars_of(noise), noise["params"].to_numpy(), noise["macs"].to_numpy()))
    assert scipy.stats.kendalltau(in_sample, noise["val_top1"].to_numpy()).statistic > 0.6


def test_quality_finds_the_signal(table, monkeypatch):
    calls = []
    real = sur.out_of_fold
    monkeypatch.setattr(sur, "out_of_fold", lambda *a, **k: calls.append(real(*a, **k)) or calls[-1])
    q = sur.quality(table, "gp", folds=5, seed=0)
    oof = calls[0]
    assert q["kendall"] == pytest.approx(scipy.stats.kendalltau(oof.truth, oof.predicted).statistic)
    assert q["spearman"] == pytest.approx(scipy.stats.spearmanr(oof.truth, oof.predicted).statistic)
    assert q["mae"] == pytest.approx(np.mean(np.abs(oof.truth - oof.predicted)))
    assert q["kendall"] > 0.5 and q["mae"] < 0.05


# --- the regressors against scikit-learn's -------------------------------------------------------

def _data(n: int = 60, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    return x, np.stack([np.sin(x[:, 0]) + 0.1 * rng.normal(size=n), x[:, 1] * x[:, 2]], axis=1)


def test_neighbours_match_kneighborsregressor():
    x, z = _data()
    queries = np.vstack([np.random.default_rng(1).normal(size=(10, 5)), x[3:4]])   # the last one is a training row
    reference = KNeighborsRegressor(n_neighbors=7, weights="distance").fit(x, z).predict(queries)
    got = sur._Neighbours(7).fit(x, z).predict(queries)
    np.testing.assert_allclose(got, reference, rtol=1e-10)
    np.testing.assert_allclose(got[-1], z[3])


def test_forest_matches_its_sklearn_prediction():
    x, z = _data()
    forest = sur._Forest(seed=0).fit(x, z)
    np.testing.assert_allclose(forest.predict(x[:7]), forest.forest.predict(x[:7].astype(np.float32)), rtol=1e-6)


def test_process_matches_gaussianprocessregressor():
    x, z = _data()
    z = z[:, :1]
    gp = sur._Process().fit(x, z)
    amplitude = float(z[:, 0] @ gp.alpha[:, 0]) / len(z)

    def sklearn_gp(length: float, noise: float) -> GaussianProcessRegressor:
        a = float(z[:, 0] @ scipy.linalg.solve(sur.matern52(x, x, length) + noise * np.eye(len(x)), z[:, 0])) / len(z)
        kernel = (ConstantKernel(a, "fixed") * Matern(length, "fixed", nu=2.5) + WhiteKernel(a * noise, "fixed"))
        return GaussianProcessRegressor(kernel, optimizer=None).fit(x, z[:, 0])

    chosen = sklearn_gp(gp.length, gp.noise)
    queries = np.random.default_rng(2).normal(size=(8, 5))
    np.testing.assert_allclose(gp.predict(queries)[:, 0], chosen.predict(queries), rtol=1e-6, atol=1e-9)
    assert amplitude > 0
    # the grid point taken has the largest marginal likelihood of the grid, each at its best amplitude
    best = chosen.log_marginal_likelihood_value_
    for f in sur._Process.LENGTHS:
        for noise in sur._Process.NOISES:
            assert sklearn_gp(f * np.sqrt(5), noise).log_marginal_likelihood_value_ <= best + 1e-6
