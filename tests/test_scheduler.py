"""Pareto-rank ASHA: non-dominated sorting against a naive reference, the promotion rule in closed
form, and the scheduler's decisions on hand-made rung results."""

from __future__ import annotations

import numpy as np
import pytest
from ray.tune.schedulers import TrialScheduler

from lab.pareto import pareto_ranks
from lab.study.scheduler import ParetoASHA, keeps, rungs


def _naive_ranks(values: np.ndarray, senses: list[str]) -> list[int]:
    sign = np.array([-1.0 if s == "max" else 1.0 for s in senses])
    v = values * sign
    ranks, left, rank = [None] * len(v), set(range(len(v))), 0
    while left:
        front = {i for i in left if not any((v[j] <= v[i]).all() and (v[j] < v[i]).any() for j in left)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


@pytest.mark.parametrize("seed", range(5))
def test_pareto_ranks_match_a_naive_sort(seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 6, size=(40, 2)).astype(float)   # many ties
    assert pareto_ranks(values, ["max", "min"]).tolist() == _naive_ranks(values, ["max", "min"])


def test_nan_rows_rank_last():
    ranks = pareto_ranks([[0.9, 1.0], [np.nan, 0.5], [0.8, 2.0]], ["max", "min"])
    assert ranks.tolist() == [0, 3, 1]


def test_rungs_stop_below_the_last_epoch():
    assert rungs(8) == [1, 3] and rungs(9) == [1, 3] and rungs(10) == [1, 3, 9] and rungs(1) == []


def test_the_promotion_rule():
    senses = ["max", "min"]
    assert keeps([0.5, 9.0], [], senses, 3)                                  # the first at a rung goes on
    assert not keeps([0.5, 9.0], [[0.9, 1.0]], senses, 3)                    # dominated by the only earlier one
    assert keeps([0.8, 0.5], [[0.9, 1.0], [0.95, 2.0], [0.97, 3.0]], senses, 3)   # least accurate, but cheapest
    # on one objective: go on when at most a third of the earlier trials did strictly better
    earlier = [[0.1], [0.2], [0.3], [0.4], [0.5], [0.6]]
    assert keeps([0.45], earlier, ["max"], 3) and not keeps([0.35], earlier, ["max"], 3)


class _Trial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def _result(epoch: int, val: float, macs: float) -> dict:
    return {"kind": "epoch", "training_iteration": epoch, "val_top1": val, "macs": macs}


def test_pareto_asha_keeps_the_cheap_end_that_accuracy_alone_stops():
    objectives = [("val_top1", "max"), ("macs", "min")]
    pareto, accuracy = ParetoASHA(objectives, epochs=8), ParetoASHA(objectives[:1], epochs=8)
    for i, (val, macs) in enumerate([(0.9, 10e6), (0.92, 12e6), (0.95, 20e6)]):
        for s in (pareto, accuracy):
            assert s.on_trial_result(None, _Trial(f"t{i}"), _result(1, val, macs)) == TrialScheduler.CONTINUE
    cheap = _result(1, 0.7, 1e6)
    assert pareto.on_trial_result(None, _Trial("cheap"), cheap) == TrialScheduler.CONTINUE
    assert accuracy.on_trial_result(None, _Trial("cheap"), cheap) == TrialScheduler.STOP
    # between rungs nothing is decided; the rung at epoch 3 compares the trials that reached it
    assert pareto.on_trial_result(None, _Trial("cheap"), _result(2, 0.1, 1e6)) == TrialScheduler.CONTINUE
    assert pareto.on_trial_result(None, _Trial("t2"), _result(3, 0.96, 20e6)) == TrialScheduler.CONTINUE
    assert pareto.on_trial_result(None, _Trial("t1"), _result(3, 0.93, 25e6)) == TrialScheduler.STOP
    assert pareto.stopped == 1
    # final results and results without an objective never stop a trial
    assert pareto.on_trial_result(None, _Trial("t0"), {"kind": "final", "training_iteration": 9}) == "CONTINUE"


def test_an_epoch_without_validation_decides_nothing():
    s = ParetoASHA([("val_top1", "max"), ("macs", "min")], epochs=40)
    assert s.on_trial_result(None, _Trial("a"), _result(1, 0.9, 1e6)) == TrialScheduler.CONTINUE
    unvalidated = {"kind": "epoch", "training_iteration": 1, "val_top1": None, "macs": 2e6}
    assert s.on_trial_result(None, _Trial("b"), unvalidated) == TrialScheduler.CONTINUE
    assert "b" not in s.recorded[1]
    assert s.on_trial_result(None, _Trial("b"), _result(2, 0.5, 2e6)) == TrialScheduler.STOP   # rung 1, decided at 2
