"""A surrogate of the benchmark table: the learning curve of a point the table does not hold.

`fit_surrogate(table)` fits three multi-output regressors on the table's trained points (features:
lab/tabular/features.py), one per curve, each predicting all epochs at once:

- ``val_top1``: the validation top-1 after each epoch, clipped to [0, 1];
- ``loss``: the training loss after each epoch, on a log scale (so it stays > 0);
- ``seconds``: the time of each epoch, on a log scale (it scales with MACs and block kinds), summed
  into the cumulative seconds the table stores (so it increases strictly).

Targets come from the rows whose three curves have the table's full length (the longest curve):
a shorter row (a run stopped early) says nothing about the later epochs and is left out. Each
target column is standardized before fitting, so that a multi-output forest weighs epochs alike.

Models: ``gp`` (a Gaussian process, Matérn 5/2 plus white noise, on standardized features: the
default), ``rf`` (a random forest) and ``knn`` (distance-weighted nearest neighbours on standardized
features). benchmarks/surrogate.py measures them (BENCHMARKS.md): on the shipped hybrid table (200
points, 8 epochs, mnist5k at fraction 0.25), 5-fold held-out Kendall tau of the final accuracy
(mean of 3 fold shuffles) gp 0.679, rf 0.640, knn 0.410, and of the training seconds gp 0.587,
rf 0.567, knn 0.185; gp also fits fastest of the two (0.19 s vs 0.54 s). On the first 129 points
rf and gp were level (0.63, 0.62). knn's distances weigh every one of ~90 features alike.
`quality` measures one by k-fold cross-validation: each point is predicted by a model fitted
without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.linalg
import scipy.spatial.distance
import scipy.stats
from sklearn.ensemble import RandomForestRegressor
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

from lab.errors import DataError
from lab.tabular.features import Featurizer, frame_of, vars_of

MODELS = ("rf", "knn", "gp")
DEFAULT_MODEL = "gp"   # the best measured on the shipped table (module docstring)
CURVES = ("curve_val_top1", "curve_loss", "curve_seconds")
FLOOR = 1e-6   # the smallest loss and epoch time taken before a log


@dataclass(frozen=True)
class Curves:
    """Predicted curves, one row per point, one column per epoch."""

    val_top1: np.ndarray   # in [0, 1]
    loss: np.ndarray       # > 0
    seconds: np.ndarray    # cumulative: strictly increasing along each row


def full_rows(table: pa.Table | pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows usable as curve targets (complete, with all three curves of the longest length and
    finite), and that length (the table's epochs)."""
    frame = frame_of(table)
    missing = [c for c in (*CURVES, "hparams", "params", "macs") if c not in frame.columns]
    if missing:
        raise DataError(f"benchmark table: no column {missing[0]!r}")
    if "state" in frame.columns:
        frame = frame[frame["state"] == "complete"]
    lengths = frame["curve_val_top1"].map(lambda c: 0 if c is None else len(c))
    epochs = int(lengths.max()) if len(frame) else 0

    def ok(row: pd.Series) -> bool:
        cost = pd.to_numeric(pd.Series([row["params"], row["macs"]]), errors="coerce").to_numpy(float)
        curves = [row[c] for c in CURVES]
        return bool(np.isfinite(cost).all()) and all(
            c is not None and len(c) == epochs and np.isfinite(np.asarray(c, dtype=float)).all() for c in curves)

    if epochs == 0:
        return frame.iloc[:0].reset_index(drop=True), 0
    keep = frame.apply(ok, axis=1).astype(bool)
    return frame[keep].reset_index(drop=True), epochs


def _targets(frame: pd.DataFrame) -> list[np.ndarray]:
    acc = np.stack([np.asarray(c, dtype=float) for c in frame["curve_val_top1"]])
    loss = np.log(np.maximum(np.stack([np.asarray(c, dtype=float) for c in frame["curve_loss"]]), FLOOR))
    cumulative = np.stack([np.asarray(c, dtype=float) for c in frame["curve_seconds"]])
    per_epoch = np.diff(cumulative, axis=1, prepend=0.0)
    return [acc, loss, np.log(np.maximum(per_epoch, FLOOR))]


class _Forest:
    """sklearn's random forest, predicting through its trees directly: forest.predict's per-call set-up
    (validation, a joblib pool even for one job) is ~20 ms, 30x a single point's prediction."""

    def __init__(self, seed: int):
        # one thread, 64 trees of leaves of 2 or more: on a 300-point table (benchmarks/surrogate.py) its
        # three forests fit in ~0.6 s, a third of 100 trees of single leaves, with the same held-out rank
        # correlation (Kendall 0.80 on the synthetic table)
        self.forest = RandomForestRegressor(n_estimators=64, max_features=0.5, min_samples_leaf=2, n_jobs=1,
                                            random_state=seed)

    def fit(self, x: np.ndarray, z: np.ndarray) -> _Forest:
        self.forest.fit(x.astype(np.float32), z)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        total = sum(tree.tree_.predict(x32) for tree in self.forest.estimators_)
        return np.asarray(total)[:, :, 0] / len(self.forest.estimators_)


class _Neighbours:
    """KNeighborsRegressor(k, weights="distance") in numpy (its predict's set-up costs ~15 ms a call):
    the mean of the k nearest rows weighted by 1/distance; a query equal to training rows gets their mean."""

    def __init__(self, k: int = 7):
        self.k = k

    def fit(self, x: np.ndarray, z: np.ndarray) -> _Neighbours:
        self.x, self.z = x, z
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        k = min(self.k, len(self.x))
        d = scipy.spatial.distance.cdist(x, self.x)
        idx = np.argpartition(d, k - 1, axis=1)[:, :k]
        near = np.take_along_axis(d, idx, axis=1)
        exact = near == 0
        with np.errstate(divide="ignore"):
            w = np.where(exact.any(axis=1, keepdims=True), exact.astype(float), 1.0 / near)
        return np.einsum("qk,qkj->qj", w, self.z[idx]) / w.sum(axis=1, keepdims=True)


def matern52(a: np.ndarray, b: np.ndarray, length: float) -> np.ndarray:
    """The Matérn 5/2 correlation of the rows of `a` and `b` at `length`."""
    s = np.sqrt(5.0) * scipy.spatial.distance.cdist(a, b) / length
    return (1.0 + s + s * s / 3.0) * np.exp(-s)


class _Process:
    """A Gaussian process with a Matérn 5/2 kernel plus white noise: sklearn's GaussianProcessRegressor
    with that kernel predicts the same mean (tests/test_surrogate.py), but its optimizer takes ~10 s on
    300 rows. Here the length scale and the noise share are the grid point of largest marginal
    likelihood, the amplitude profiled out (closed form): ~0.1 s."""

    LENGTHS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)    # times sqrt(features): the typical distance of standardized rows
    NOISES = (1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0)   # white noise over the kernel's amplitude

    def fit(self, x: np.ndarray, z: np.ndarray) -> _Process:
        n, d = x.shape
        best = -np.inf
        for length in (f * np.sqrt(d) for f in self.LENGTHS):
            k0 = matern52(x, x, length)
            for noise in self.NOISES:
                chol = np.linalg.cholesky(k0 + noise * np.eye(n))
                alpha = scipy.linalg.cho_solve((chol, True), z)
                amplitude = np.maximum((z * alpha).sum(axis=0) / n, 1e-12)   # per output, maximizing the likelihood
                lml = float(np.sum(-0.5 * n * np.log(amplitude)) - z.shape[1] * np.log(np.diag(chol)).sum())
                if lml > best:
                    best, self.length, self.noise, self.alpha = lml, length, noise, alpha
        self.x = x
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return matern52(x, self.x, self.length) @ self.alpha


class _Regressor:
    """One multi-output model on standardized targets (and, but for the forest, standardized features)."""

    def __init__(self, model: str, seed: int):
        self.model = model
        self.est: _Forest | _Neighbours | _Process = (_Forest(seed) if model == "rf" else _Neighbours() if model == "knn"
                                                      else _Process())

    def fit(self, x: np.ndarray, y: np.ndarray) -> _Regressor:
        self.x_mean, self.x_scale = x.mean(axis=0), _scale(x.std(axis=0))
        self.y_mean, self.y_scale = y.mean(axis=0), _scale(y.std(axis=0))
        self.est.fit(self._x(x), (y - self.y_mean) / self.y_scale)
        return self

    def _x(self, x: np.ndarray) -> np.ndarray:
        return x if self.model == "rf" else (x - self.x_mean) / self.x_scale

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.est.predict(self._x(x)) * self.y_scale + self.y_mean


def _scale(std: np.ndarray) -> np.ndarray:
    return np.where(std > 0, std, 1.0)


class Surrogate:
    """Predicts the curves of any point of the table's space; fitted by `fit_surrogate`."""

    def __init__(self, featurizer: Featurizer, regressors: list[_Regressor], epochs: int, model: str, n: int):
        self.featurizer, self.regressors = featurizer, regressors   # val_top1's, loss's, seconds'
        self.epochs, self.model, self.n = epochs, model, n   # n: the rows it was fitted on

    def predict(self, vars_list: Sequence[Mapping[str, Any]], params: Sequence[float] | np.ndarray | float,
                macs: Sequence[float] | np.ndarray | float, epochs: int | None = None) -> Curves:
        """The curves of the points (their sampled variables, params and MACs) over their first
        `epochs` epochs (default and at most the table's: a shorter run of the same schedule is the
        table's run stopped early, as a pruned trial is)."""
        epochs = self.epochs if epochs is None else int(epochs)
        if not 1 <= epochs <= self.epochs:
            raise DataError(f"epochs {epochs}: the benchmark table's curves have {self.epochs} epochs")
        x = self.featurizer.transform(vars_list, params, macs)
        acc, loss, seconds = (r.predict(x)[:, :epochs] for r in self.regressors)
        return Curves(val_top1=np.clip(acc, 0.0, 1.0), loss=np.exp(loss), seconds=np.cumsum(np.exp(seconds), axis=1))

    def final_val_top1(self, vars_list: Sequence[Mapping[str, Any]], params: Sequence[float] | np.ndarray | float,
                       macs: Sequence[float] | np.ndarray | float) -> np.ndarray:
        """The predicted val_top1 after the table's last epoch (what `predict` gives in its last column)."""
        x = self.featurizer.transform(vars_list, params, macs)
        return np.clip(self.regressors[0].predict(x)[:, -1], 0.0, 1.0)


def fit_surrogate(table: pa.Table | pd.DataFrame, model: str = DEFAULT_MODEL, seed: int = 0) -> Surrogate:
    """A surrogate of `table` (a benchmark table's pyarrow Table or DataFrame) with `model`
    (one of MODELS), fitted on its rows with full-length curves."""
    return _fit(table, model, seed, curves=3)


def _fit(table: pa.Table | pd.DataFrame, model: str, seed: int, curves: int) -> Surrogate:
    """A surrogate of the first `curves` of val_top1, loss, seconds (1: only `final_val_top1` works)."""
    if model not in MODELS:
        raise DataError(f"surrogate model {model!r}: expected one of {', '.join(MODELS)}")
    frame, epochs = full_rows(table)
    if len(frame) < 2:
        raise DataError(f"benchmark table: {len(frame)} row(s) with full-length curves; a surrogate needs at least 2")
    featurizer = Featurizer.fit(vars_of(frame))
    x = featurizer.transform(vars_of(frame), frame["params"].to_numpy(float), frame["macs"].to_numpy(float))
    # one BLAS thread: the GP's Choleskys of ~300 x 300 take 3 ms on one and 100x that on a machine
    # whose cores are busy, when its threads wait for each other
    with threadpool_limits(limits=1):
        regressors = [_Regressor(model, seed).fit(x, y) for y in _targets(frame)[:curves]]
    return Surrogate(featurizer, regressors, epochs, model, len(frame))


# the replay fits once per table and model per process: key -> (the table, kept alive so that its id
# is not reused while the entry lives, and its surrogate)
_CACHE: dict[tuple, tuple[object, Surrogate]] = {}


def cached_surrogate(table: pa.Table | pd.DataFrame, model: str = DEFAULT_MODEL, seed: int = 0,
                     key: object = None) -> Surrogate:
    """`fit_surrogate(table, model, seed)`, fitted once per process for each `key` (default: the
    table object's identity; pass e.g. (path, mtime) for a table read from a file)."""
    k = (id(table) if key is None else key, model, seed)
    hit = _CACHE.get(k)
    if hit is not None and (key is not None or hit[0] is table):
        return hit[1]
    surrogate = fit_surrogate(table, model, seed)
    _CACHE[k] = (table, surrogate)
    return surrogate


@dataclass(frozen=True)
class OutOfFold:
    """Cross-validated predictions of the final val_top1, one entry per row with full curves."""

    number: np.ndarray      # the row's `number` (its position when the table has none)
    truth: np.ndarray       # its val_top1 (the curve's last entry where val_top1 is null)
    predicted: np.ndarray   # by the model fitted on the other folds
    fold: np.ndarray        # the fold it was held out in


def out_of_fold(table: pa.Table | pd.DataFrame, model: str = DEFAULT_MODEL, folds: int = 5, seed: int = 0) -> OutOfFold:
    """k-fold predictions: the rows are shuffled (by `seed`) into `folds` folds, and each fold is
    predicted by a surrogate fitted on the others only."""
    frame, _ = full_rows(table)
    n = len(frame)
    if n < 4 or folds < 2:
        raise DataError(f"benchmark table: {n} row(s) with full-length curves and {folds} folds; "
                        "cross-validation needs at least 4 rows and 2 folds")
    folds = min(folds, n // 2)
    fold = np.empty(n, dtype=int)
    fold[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    predicted = np.empty(n)
    for f in range(folds):
        held = fold == f
        surrogate = _fit(frame[~held], model, seed, curves=1)   # quality needs the accuracy alone
        test = frame[held]
        predicted[held] = surrogate.final_val_top1(vars_of(test), test["params"].to_numpy(float), test["macs"].to_numpy(float))
    last = np.array([c[-1] for c in frame["curve_val_top1"]], dtype=float)
    final = pd.to_numeric(frame["val_top1"], errors="coerce").to_numpy(float) if "val_top1" in frame else last
    truth = np.where(np.isfinite(final), final, last)
    number = frame["number"].to_numpy() if "number" in frame else np.arange(n)
    return OutOfFold(number=number, truth=truth, predicted=predicted, fold=fold)


def quality(table: pa.Table | pd.DataFrame, model: str = DEFAULT_MODEL, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Held-out quality of `model` on `table`'s final val_top1 (`out_of_fold`): Kendall tau,
    Spearman rho, mean absolute error, and n (the rows predicted)."""
    oof = out_of_fold(table, model, folds, seed)
    return {"model": model, "n": len(oof.truth), "folds": int(oof.fold.max()) + 1,
            "kendall": float(scipy.stats.kendalltau(oof.truth, oof.predicted).statistic),
            "spearman": float(scipy.stats.spearmanr(oof.truth, oof.predicted).statistic),
            "mae": float(np.mean(np.abs(oof.truth - oof.predicted)))}
