"""Data size as a search's fidelity (--target-size): the ladder, the predictions rows carry, the
halving over sizes on the predicted accuracy, the settings' checks, and one small live study."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from ray.tune.schedulers import TrialScheduler

from lab.errors import StudyError
from lab.pareto import pareto_mask
from lab.study.config import StudyConfig
from lab.study.fidelity import MIN_IMAGES, SizeFidelity, ladder
from lab.study.runner import create
from lab.study.scheduler import ParetoASHA, SizeASHA
from lab.study.store import StudyStore
from tests.support import run_cli


class _Trial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def test_the_ladder_is_nested_fractions_a_factor_three_apart():
    assert ladder(0.9, 3, 4000) == pytest.approx([0.1, 0.3, 0.9])
    assert ladder(1.0, 2, 4000) == pytest.approx([1 / 3, 1.0])
    with pytest.raises(StudyError, match=rf"--rungs 5: the ladder's smallest size would be 5 images .*at least {MIN_IMAGES}"):
        ladder(0.1, 5, 4000)


def _size_result(number: int, rung: int, accuracies: list[float], macs: float = 1e6) -> dict:
    sizes = [130 * 3**k for k in range(len(accuracies))]
    return {"kind": "size", "rung": rung, "number": number, "macs": macs, "sizes": sizes, "sizes_top1": accuracies,
            "val_top1": accuracies[-1]}


def test_halving_over_sizes_ranks_on_the_predicted_accuracy_not_the_measured_one():
    # `steep` is behind at 390 images but gains fast; `flat` leads there but has stopped gaining:
    # at 40,000 images the steep one is predicted ahead, so it is `flat` that the rung stops
    steep, flat = [0.50, 0.80], [0.84, 0.85]
    objectives = [("pred_top1", "max")]
    fidelity = SizeFidelity(40_000, [1 / 9, 1 / 3, 1.0])
    by_size = SizeASHA(objectives, fidelity)
    assert sorted(by_size.recorded) == [2]   # rung 1 has one size: no law to rank by yet
    assert by_size.on_trial_result(None, _Trial("a"), _size_result(0, 1, steep[:1])) == TrialScheduler.CONTINUE
    assert by_size.on_trial_result(None, _Trial("a"), _size_result(0, 2, steep)) == TrialScheduler.CONTINUE
    assert by_size.on_trial_result(None, _Trial("b"), _size_result(1, 2, flat)) == TrialScheduler.STOP
    # the epoch scheduler, on the accuracy measured at the size reached, would have kept `flat`
    by_measure = ParetoASHA([("val_top1", "max")], 0, milestones=[2], time_attr="rung")
    by_measure.kind = "size"
    by_measure.on_trial_result(None, _Trial("a"), _size_result(0, 2, steep))
    assert by_measure.on_trial_result(None, _Trial("b"), _size_result(1, 2, flat)) == TrialScheduler.CONTINUE
    # what it compared: the optimistic end of each prediction
    a, b = fidelity.observe(0, [130, 390], steep), fidelity.observe(1, [130, 390], flat)
    assert a.accuracy > b.accuracy and by_size.recorded[2]["a"] == [pytest.approx(a.accuracy_interval[1], rel=0.05)]


def test_a_trial_without_a_prediction_ranks_last():
    fidelity = SizeFidelity(10_000, [1 / 9, 1 / 3, 1.0])
    s = SizeASHA([("pred_top1", "max")], fidelity)
    s.on_trial_result(None, _Trial("a"), _size_result(0, 2, [0.3, 0.4]))
    broken = _size_result(1, 2, [0.3, math.nan])
    assert s.on_trial_result(None, _Trial("b"), broken) == TrialScheduler.STOP


def test_target_size_settings():
    config = StudyConfig(name="t", target_size=40_000)
    assert config.objectives == "pred_acc:max,macs:min" and config.rungs == 3
    assert StudyConfig(name="t", target_size=9, objectives="acc:max").objectives == "pred_acc:max"
    for kw, match in [({"target_size": 0}, "target_size = 0: expected a whole number"),
                      ({"target_size": 100, "rungs": 1}, "rungs = 1: expected at least 2"),
                      ({"target_size": 100, "backend": "replay:hybrid"}, "needs --backend ray"),
                      ({"target_size": 100, "objectives": "macs:min"}, "objectives need val_acc"),
                      ({"target_size": 100, "kind": "scaling", "archs": ["resnet18"], "fractions": [1.0]},
                       "--target-size is for a search")]:
        with pytest.raises(StudyError, match=match):
            StudyConfig(name="t", **kw)


def test_the_cli_refuses_a_ladder_below_its_smallest_size(capsys, tmp_path):
    code, _, err = run_cli(capsys, "study", "create", "--target-size", "4000", "--fraction", "0.05", "--rungs", "4",
                           "--root", str(tmp_path), "--name", "small")
    assert code == 2 and err.count("\n") == 1 and "--rungs 4: the ladder's smallest size would be" in err
    assert not (tmp_path / "small").exists()
    code, _, err = run_cli(capsys, "study", "create", "--target-size", "-3", "--root", str(tmp_path))
    assert code == 2 and "target" in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def ladder_study(tmp_path_factory):
    from lab.study.cluster import start_ray

    start_ray()
    root = tmp_path_factory.mktemp("target")
    # small points (the hybrid space at 16 px): ~15 s with Ray's start; with seed 0 one trial is stopped after 2 sizes
    config = StudyConfig(name="target", space="hybrid", dataset="mnist5k", fraction=0.1, rungs=3, epochs=1, batch_size=32,
                         seed=0, sampler="random", scheduler="asha", concurrency=1, trials=3, target_size=4000, res=16)
    return create(config, root=root, verbose=0)


def test_a_live_study_climbs_the_ladder_and_keeps_every_size(ladder_study, capsys):
    trials, epochs = StudyStore(ladder_study).tables()
    rows = [r for r in trials.to_pylist() if r["state"] in ("complete", "pruned")]
    assert len(rows) == 3 and {r["state"] for r in rows} <= {"complete", "pruned"}
    assert trials.schema.field("sizes").type == pa.list_(pa.int64())
    full = [r for r in rows if r["state"] == "complete"]
    assert full and all(len(r["sizes"]) == 3 for r in full)
    assert all(len(r["sizes"]) == 2 for r in rows if r["state"] == "pruned")
    for r in rows:
        sizes = r["sizes"]
        assert sizes == sorted(sizes) and r["n_train"] == sizes[-1] and r["target_size"] == 4000
        assert len(r["sizes_top1"]) == len(sizes) == len(r["sizes_seconds"]) and r["worker_seconds"] > 0
        assert r["val_top1"] == pytest.approx(r["sizes_top1"][-1])
        # the estimate is the power law through the sizes (noise sets only the interval)
        slope, icpt = np.polyfit(np.log(sizes), np.log([1 - a for a in r["sizes_top1"]]), 1)
        expected = 1 - math.exp(icpt + min(slope, 0.0) * math.log(4000)) if slope < 0 else \
            1 - math.exp(np.mean(np.log([1 - a for a in r["sizes_top1"]])))
        assert r["pred_top1"] == pytest.approx(expected, abs=1e-6)
        assert r["pred_top1_lo"] <= r["pred_top1"] <= r["pred_top1_hi"] and r["pred_law"] == "power"
        curve = [e for e in epochs.to_pylist() if e["number"] == r["number"]]
        assert sorted({e["n_train"] for e in curve}) == sizes     # one epoch per size, each size's own curve
    # the study's Pareto set is on the predicted accuracy
    code, out, _ = run_cli(capsys, "study", "show", str(ladder_study), "--json")
    assert code == 0 and '"pred_top1"' in out
    done = [r for r in full]
    mask = pareto_mask([[r["pred_top1"], r["macs"]] for r in done], ["max", "min"])
    assert out.count('"number"') == int(mask.sum())
