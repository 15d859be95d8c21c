"""How much of the accuracy's variance each sampled choice explains: Optuna's fANOVA evaluator run
on an in-memory Optuna study rebuilt from the Parquet rows alone (the study's own Optuna database is
never opened, so a copied or exported store gives the same answer).

Each choice gets a distribution inferred from the values it took: numbers (ints or floats) stay
numeric, anything else is categorical. A conditional choice (e.g. a bottleneck's expansion, sampled
only where the mixer is a bottleneck) is absent from some trials; Optuna's evaluators only assess
parameters present in every trial, so an absence is encoded as its own value (the category "—", or
a number below the range for a numeric choice) and the choice is still ranked.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np

from lab.dashboard.data import ABSENT, DashboardData

MIN_TRIALS = 4        # fewer complete trials than this: no importance
MAX_TRIALS = 1000     # a seeded sample of this many beyond it: fANOVA's cost grows with the trials
N_TREES, MAX_DEPTH = 32, 6   # a smaller forest than Optuna's default (64 trees, depth 64): ~0.5 s on 10,000 trials


@contextlib.contextmanager
def _quiet_optuna():
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield optuna
    finally:
        optuna.logging.set_verbosity(level)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _encode(values: list) -> tuple[object, list] | None:
    """An Optuna distribution for one choice's values (None where absent) and the values it takes;
    None when the choice never varies."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    present = [v for v in values if v is not None]
    if not present or len({repr(v) for v in values}) < 2:
        return None
    if all(_is_number(v) for v in present):
        ints = all(isinstance(v, (int, np.integer)) for v in present)
        lo, hi = min(present), max(present)
        if None in values:   # absence: one step below the range
            lo = lo - (1 if ints else (hi - lo) or 1.0)
        filled = [lo if v is None else v for v in values]
        if ints:
            return IntDistribution(int(lo), int(hi)), [int(v) for v in filled]
        return FloatDistribution(float(lo), float(hi)), [float(v) for v in filled]
    labels = [ABSENT if v is None else str(v) for v in values]
    return CategoricalDistribution(sorted(set(labels))), labels


def importances(data: DashboardData, max_trials: int = MAX_TRIALS, seed: int = 0) -> tuple[dict[str, float], str]:
    """Each sampled choice's share of the accuracy's variance (fANOVA; they sum to 1), most
    important first, over the complete trials; and a note saying why it is empty when it is."""
    rows = data.complete
    if len(rows) < MIN_TRIALS:
        return {}, f"importance needs at least {MIN_TRIALS} complete trials ({len(rows)} so far)"
    if len(rows) > max_trials:
        rows = rows.sample(n=max_trials, random_state=seed)
    acc = rows["acc"].to_numpy(dtype=float)
    if np.ptp(acc) == 0:
        return {}, "every complete trial has the same accuracy: no variance to explain"
    choices = list(rows["choices"])
    encoded = {}
    for name in data.choices:
        e = _encode([c.get(name) for c in choices])
        if e is not None:
            encoded[name] = e
    if not encoded:
        return {}, "no sampled choice varies among the complete trials"
    with _quiet_optuna() as optuna:
        dists = {name: dist for name, (dist, _) in encoded.items()}
        trials = [optuna.trial.create_trial(params={name: vals[i] for name, (_, vals) in encoded.items()},
                                            distributions=dists, value=float(acc[i])) for i in range(len(acc))]
        study = optuna.create_study(direction="maximize")
        study.add_trials(trials)
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=N_TREES, max_depth=MAX_DEPTH, seed=seed)
            result = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except Exception as e:
            return {}, f"importance could not be computed ({type(e).__name__}: {e})"
    return {k: float(v) for k, v in result.items()}, ""
