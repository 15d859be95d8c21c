"""A study's Optuna database as Optuna's own tools read it: optuna-dashboard's API (its WSGI app, called
with a stdlib test request), `study.best_trials` and `optuna.visualization`. The study is made by the
lab's searcher (LabSearch, tell) with synthetic results: no training."""

from __future__ import annotations

import json
import warnings
from wsgiref.util import setup_testing_defaults

import optuna
import optuna_dashboard

from lab.cost import cost
from lab.study.search import ATTRS, CURVE, LabSearch
from lab.study.space import load_space
from lab.study.store import StudyStore

MULTI = [("val_top1", "max"), ("macs", "min")]


def _reject_the_cheapest_first():
    """A memory check (LabSearch's `fits`) that rejects the first point the budget lets through and every
    later one that is not more expensive: the rejected point is cheaper than every trained one, so with
    its MACs as a value it would be on the complete trials' Pareto front."""
    first: list[int] = []

    def fits(spec) -> str | None:
        macs = cost(spec, 10, 1).macs
        if not first:
            first.append(macs)
        return None if macs > first[0] else "over memory: rejected by the test"
    return fits


def _study(tmp_path, objectives, name="tools"):
    """A study of 2 complete trials, 1 stopped by the scheduler after its first epoch, and the rejected
    points in between (invalid, over budget, or rejected by the fits check). In memory: an SQLite file,
    as `lab study` keeps it, is served by the same code (and costs seconds of commits here)."""
    storage = optuna.storages.InMemoryStorage()
    searcher = LabSearch(load_space("conv"), StudyStore(tmp_path), objectives, optuna.samplers.RandomSampler(seed=0),
                         name, storage, {"dataset": "mnist5k"}, 10, 1, fits=_reject_the_cheapest_first())
    for i, curve in enumerate(([0.5, 0.6], [0.55, 0.7], [0.3])):
        config = searcher.suggest(f"t{i}")
        assert isinstance(config, dict)
        epochs = [{"number": config["number"], "kind": "epoch", "epoch": e + 1, "loss": 1.0, "val_top1": v, "seconds": 1.0,
                   "macs": config["macs"], "params": config["params"]} for e, v in enumerate(curve)]
        if len(curve) == 1:   # the scheduler stops it on its first epoch: Tune hands that to on_trial_complete only
            searcher.on_trial_complete(f"t{i}", epochs[0])
            continue
        for epoch in epochs:
            searcher.on_trial_result(f"t{i}", epoch)
        searcher.on_trial_complete(f"t{i}", {**epochs[-1], "kind": "final", "state": "complete"})
    return storage, optuna.load_study(study_name=name, storage=storage)


def _get(app, path: str) -> dict:
    environ: dict = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status and status[0].startswith("200"), (path, status, body[:200])
    return json.loads(body)


def _dashboard(storage: optuna.storages.BaseStorage, name: str) -> dict:
    """What optuna-dashboard's browser page gets for study `name` (GET /api/studies/ID)."""
    app = optuna_dashboard.wsgi(storage)
    (study_id,) = [s["study_id"] for s in _get(app, "/api/studies")["study_summaries"] if s["study_name"] == name]
    return _get(app, f"/api/studies/{study_id}")


def _attrs(serialized: dict) -> dict:
    return {a["key"]: a["value"] for a in serialized["user_attrs"]}


def _dominated(values: list[float], others: list[list[float]]) -> bool:
    """(max, min) values: another point is at least as good in both and better in one."""
    return any(o[0] >= values[0] and o[1] <= values[1] and o != values for o in others)


def test_a_rejected_point_is_never_feasible_nor_best_in_optuna_or_its_dashboard(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        storage, study = _study(tmp_path, MULTI)
    said = [str(w.message) for w in caught]
    assert not [m for m in said if "old format constraint" in m or "already" in m], said
    by_state: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in study.trials:
        by_state.setdefault(t.user_attrs["state"], []).append(t)
    complete, rejected = by_state["complete"], by_state["rejected"]
    assert len(complete) == 2 and len(by_state["pruned"]) == 1 and rejected
    cheap = next(t for t in rejected if t.user_attrs["reason"] == "over memory: rejected by the test")
    assert cheap.user_attrs["macs"] < min(t.values[1] for t in complete)   # (0, its MACs) would be non-dominated
    for t in rejected:   # pruned before any step, no values, the budget constraint violated
        assert t.state == optuna.trial.TrialState.PRUNED and t.values is None and t.constraints == {"budget": 1.0}
    # Optuna's own front: the complete trials' non-dominated ones (computed here), no rejected point
    values = [list(t.values) for t in complete]
    expected = {t.number for t, v in zip(complete, values) if not _dominated(v, values)}
    assert {t.number for t in study.best_trials} == expected
    figure = optuna.visualization.plot_pareto_front(study)
    plotted = {(x, y) for trace in figure.data for x, y in zip(trace.x, trace.y)}
    assert plotted == {tuple(v) for v in values}

    served = _dashboard(storage, "tools")
    assert served["objective_names"] == ["val_acc", "macs"] and study.metric_names == ["val_acc", "macs"]
    assert {t["number"] for t in served["best_trials"]} == expected
    trials = {t["number"]: t for t in served["trials"]}
    shown = trials[cheap.number]
    assert shown["state"] == "Pruned" and "values" not in shown
    attrs = _attrs(shown)
    assert attrs["state"] == "rejected" and attrs["reason"].startswith("over memory")
    assert attrs["text"] == cheap.user_attrs["text"]
    assert int(attrs["macs"]) == cheap.user_attrs["macs"] and attrs["arch_id"]
    for t in complete:
        served_trial = trials[t.number]
        assert served_trial["state"] == "Complete" and served_trial["values"] == list(t.values)
        assert served_trial["constraints"] == []   # feasible: the dashboard's plots draw it as such
        attrs = _attrs(served_trial)
        assert attrs["text"].startswith("@") and int(attrs["macs"]) == t.values[1] and int(attrs["params"]) > 0
        assert json.loads(attrs["kinds"]) and attrs["family"] and attrs["arch_id"]
        assert json.loads(attrs[CURVE]) in ([0.5, 0.6], [0.55, 0.7])
        assert served_trial["intermediate_values"] == []   # Trial.report refuses multi-objective studies
    assert not served["has_intermediate_values"]
    assert {*ATTRS, "state", CURVE} <= {a["key"] for a in served["union_user_attrs"]}
    # every trial carries the row's attributes, as JSON (a list for kinds)
    assert all(set(ATTRS) <= set(t.user_attrs) for t in study.trials)
    assert all(isinstance(t.user_attrs["kinds"], list) for t in complete)


def test_a_single_objective_study_reports_its_epochs_as_intermediate_values(tmp_path):
    storage, study = _study(tmp_path, [("val_top1", "max")], name="single")
    served = _dashboard(storage, "single")
    assert served["objective_names"] == ["val_acc"] and served["has_intermediate_values"]
    curves = {t["number"]: [(v["step"], v["value"]) for v in t["intermediate_values"]] for t in served["trials"]}
    complete = [t for t in study.trials if t.user_attrs["state"] == "complete"]
    (pruned,) = [t for t in study.trials if t.user_attrs["state"] == "pruned"]
    assert sorted(curves[t.number] for t in complete) == [[(1, 0.5), (2, 0.6)], [(1, 0.55), (2, 0.7)]]
    assert curves[pruned.number] == [(1, 0.3)]
    best = max(complete, key=lambda t: t.values[0])
    assert [t["number"] for t in served["best_trials"]] == [best.number] == [study.best_trial.number]
    assert all(curves[t.number] == [] for t in study.trials if t.user_attrs["state"] == "rejected")


def test_an_older_study_gets_its_metric_names_on_resume(tmp_path):
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="old", storage=storage, directions=["maximize", "minimize"])
    assert optuna.load_study(study_name="old", storage=storage).metric_names is None
    LabSearch(load_space("conv"), StudyStore(tmp_path), MULTI, optuna.samplers.RandomSampler(seed=0), "old", storage,
              {}, 10, 1)
    assert optuna.load_study(study_name="old", storage=storage).metric_names == ["val_acc", "macs"]
