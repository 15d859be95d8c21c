"""The replay backend: a study whose trials come from a benchmark table, in simulated time."""

import json
import math

import pyarrow as pa
import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from lab.study import replay
from lab.study.benchmark import export
from lab.study.config import StudyConfig
from lab.study.runner import create
from lab.study.space import load_space
from lab.study.store import StudyStore
from lab.tabular.table import BENCH_SCHEMA, BenchError, load_bench, make_table, save_bench
from lab.train.record import PROXIES
from tests.support import run_cli

# one objective: ASHA stops a trial at epoch 1 when an earlier one was better there (some of 4 are)
LIVE = dict(space="hybrid", dataset="mnist5k", fraction=0.05, epochs=2, batch_size=32, seed=0, sampler="evolution",
            scheduler="asha", concurrency=1, objectives="val_acc:max")
# what a replay cannot reproduce: when and where a trial ran (a pruned trial's worker seconds are
# the simulated ones at its stopping epoch)
NOT_REPLAYED = {"started_at", "finished_at", "worker", "device", "worker_seconds"}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, request):
    """A small live study (ASHA stops some trials at epoch 1) and its benchmark table."""
    request.getfixturevalue("local_ray_module")
    root = tmp_path_factory.mktemp("live")
    folder = create(StudyConfig(name="live", trials=4, **LIVE), root=root, verbose=0)
    path = save_bench(export(folder), root / "live.parquet")
    return folder, path


@pytest.fixture(scope="module")
def local_ray_module():
    from lab.study.cluster import start_ray

    start_ray()


def test_a_replay_of_a_studys_own_points_reproduces_its_rows_exactly(recorded, tmp_path, capsys):
    folder, path = recorded
    live = {r["number"]: r for r in StudyStore(folder).trials().to_pylist()}
    assert {r["state"] for r in live.values()} >= {"complete", "pruned"}, live   # the scheduler decided something
    again = create(StudyConfig(name="again", trials=4, backend=f"replay:{path}", **LIVE), root=tmp_path, verbose=0)
    rows = {r["number"]: r for r in StudyStore(again).trials().to_pylist()}
    assert rows.keys() == live.keys()
    for number, row in rows.items():
        for column, value in live[number].items():
            if column in NOT_REPLAYED:
                continue
            assert row[column] == value or (value is None and row[column] is None) or (
                isinstance(value, float) and math.isnan(value) and math.isnan(row[column])), (number, column)
        if row["state"] == "complete":
            assert row["worker"].endswith("/table")
    epochs = StudyStore(again).epochs().to_pylist()
    assert epochs == StudyStore(folder).epochs().to_pylist()
    # the replayed study is a normal study: show and the dashboard read it
    code, out, err = run_cli(capsys, *["study", "show", "again", "--root", str(tmp_path)])
    assert code == 0 and "again" in out, err
    code, out, err = run_cli(capsys, *["dashboard", "again", "--root", str(tmp_path)])
    assert code == 0 and "again.html" in out, err
    code, out, err = run_cli(capsys, *["scale", "frontier", "again", "--root", str(tmp_path), "--metric", "val_top1"])
    assert code == 0 and "again" in out, err


def test_the_table_holds_curves_costs_and_proxies(recorded):
    folder, path = recorded
    bench = load_bench(path)
    trials = [r for r in StudyStore(folder).trials().to_pylist() if r["state"] in ("complete", "pruned")]
    assert bench.table.num_rows == len(trials)
    for row in bench.rows():
        assert len(row["curve_val_top1"]) == len(row["curve_seconds"]) == row["epochs_done"] >= 1
        assert row["curve_seconds"] == sorted(row["curve_seconds"])
        assert row["curve_val_top1"][-1] == row["val_top1"]
        assert all(row[f"zc_{p}_seconds"] > 0 for p in PROXIES)
    meta = bench.meta
    assert meta["settings"]["fraction"] == 0.05 and meta["data"]["n_train"] == 200
    assert meta["space"]["definition"] == load_space("hybrid").to_dict()


def _bench_of(rows: list[dict], tmp_path, epochs: int = 2):
    meta = {"settings": {"dataset": "mnist5k", "fraction": 0.25, "epochs": epochs, "recipe": "default", "batch_size": 64,
                         "res": 28, "seed": 1000, "objectives": "val_acc:max,macs:min"},
            "data": {"name": "mnist5k", "fraction": 0.25, "n_train": 1000, "num_classes": 10, "in_chans": 1, "frames": 1},
            "space": {"name": "hybrid", "definition": load_space("hybrid").to_dict()}}
    curves = {r["number"]: r.pop("curve") for r in rows}
    return save_bench(make_table(rows, curves, meta), tmp_path / "b.parquet")


def _point_row(number: int, seed: int, seconds: float) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space("hybrid")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    while True:
        point = space.sample(study.ask(), 10, 1)
        if point.ok:
            break
    hparams = json.dumps({"recipe": point.hparams, "vars": point.values}, sort_keys=True)
    curve = [{"epoch": 1, "loss": 1.0, "val_top1": 0.5, "seconds": seconds},
             {"epoch": 2, "loss": 0.5, "val_top1": 0.8, "seconds": 2 * seconds}]
    return {"number": number, "state": "complete", "text": point.text, "hparams": hparams, "params": point.params,
            "macs": point.macs, "val_top1": 0.8, "loss": 0.5, "train_seconds": 2 * seconds,
            "worker_seconds": 2 * seconds + 1, "curve": curve}


class _Searcher:
    """Suggests the given configs in order and records what it is told."""

    def __init__(self, configs):
        self.configs, self.told, self.fatal = list(configs), [], None

    def suggest(self, trial_id):
        return self.configs.pop(0) if self.configs else Searcher.FINISHED

    def on_trial_result(self, trial_id, result):
        self.told.append(("result", trial_id, result["kind"], result.get("epoch")))

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told.append(("complete", trial_id, result["kind"], result.get("epoch")))


class _StopAtFirstEpoch:
    def on_trial_result(self, controller, trial, result):
        return TrialScheduler.STOP if result["kind"] == "epoch" and trial.trial_id == "replay_00001" else \
            TrialScheduler.CONTINUE


def test_simulated_time_orders_concurrent_trials_by_their_recorded_seconds(tmp_path):
    slow, fast = _point_row(0, 1, seconds=10.0), _point_row(1, 2, seconds=1.0)
    bench = load_bench(_bench_of([slow, fast], tmp_path))
    configs = [{"number": i, "text": r["text"], "key": r["hparams"], "params": r["params"], "macs": r["macs"], "hparams": {},
                "run": {}} for i, r in enumerate(bench.rows())]
    searcher, clock = _Searcher(configs), replay.SimClock()
    launched = replay.simulate(searcher, _StopAtFirstEpoch(), 5, 2, replay.Traces(bench, 2), clock)
    assert launched == 2
    # both start at once; the fast one is stopped at its first epoch (the stopping result reaches
    # on_trial_complete only), the slow one reports both epochs, then its final result
    assert searcher.told == [("complete", "replay_00001", "epoch", 1),
                             ("result", "replay_00000", "epoch", 1), ("result", "replay_00000", "epoch", 2),
                             ("result", "replay_00000", "final", None), ("complete", "replay_00000", "final", None)]
    # the clock ends at the slow trial's end: launch + its worker seconds (21 s)
    assert clock.t == pytest.approx(replay.LAUNCH_SECONDS + 21.0)


def test_a_replay_must_match_the_tables_training(tmp_path, capsys):
    path = _bench_of([_point_row(0, 1, 1.0)], tmp_path)
    base = dict(name="r", backend=f"replay:{path}", dataset="mnist5k", fraction=0.25, epochs=2, batch_size=64)
    for change, flag in [({"fraction": 1.0}, "--fraction 0.25"), ({"epochs": 8}, "--epochs 2"),
                         ({"space": "conv"}, "--space hybrid"), ({"res": 32}, "--res 28")]:
        with pytest.raises(Exception, match=flag):
            replay.check_config(StudyConfig(**{**base, **change}), load_bench(path))
    code, _, err = run_cli(capsys, *["study", "create", "--backend", "replay:nonesuch", "--root", str(tmp_path)])
    assert code == 2 and "--backend replay:nonesuch" in err and "Traceback" not in err, err
    code, _, err = run_cli(capsys, *["study", "create", "--backend", "gpu", "--root", str(tmp_path)])
    assert code == 2 and "backend" in err and "Traceback" not in err, err


def test_a_replayed_cli_study_takes_the_tables_settings_and_resumes(tmp_path, capsys):
    path = _bench_of([_point_row(i, 10 + i, 1.0 + i) for i in range(6)], tmp_path)
    code, _, err = run_cli(capsys, *["study", "create", "--backend", f"replay:{path}", "--name", "r", "--sampler", "random",
                              "--trials", "3", "--root", str(tmp_path), "--no-dashboard"])
    assert code == 0, err
    store = StudyStore(tmp_path / "r")
    assert store.load_config()["fraction"] == 0.25 and (tmp_path / "r" / "optuna.journal").is_file()
    code, _, err = run_cli(capsys, *["study", "resume", "r", "--trials", "5", "--root", str(tmp_path), "--no-dashboard"])
    assert code == 0, err
    rows = store.trials().to_pylist()
    assert sum(r["state"] in ("complete", "pruned") for r in rows) == 5


def test_a_replay_predicts_with_the_best_measured_surrogate():
    from lab.tabular.surrogate import DEFAULT_MODEL

    assert replay.SURROGATE == DEFAULT_MODEL


def test_a_file_that_is_not_a_benchmark_is_one_line(tmp_path):
    plain = tmp_path / "plain.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), plain)
    with pytest.raises(BenchError, match="not a lab benchmark table"):
        load_bench(plain)
    with pytest.raises(BenchError, match=r"not a \.parquet file and not a shipped benchmark"):
        load_bench("nonesuch")
    assert set(BENCH_SCHEMA.names) >= {f"zc_{p}" for p in PROXIES}


def test_bench_build_trains_random_points_into_a_table(recorded, tmp_path, capsys):
    out = tmp_path / "conv.parquet"
    argv = ["bench", "build", "--space", "conv", "--points", "4", "--fraction", "0.02", "--epochs", "1",
            "--batch-size", "32", "--out", str(out), "--root", str(tmp_path), "--quiet"]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "4 trained points" in stdout and "Kendall tau" in stdout and "held-out" in stdout, stdout
    bench = load_bench(out)
    assert bench.table.num_rows == 4 and bench.meta["study"]["sampler"] == "random"
    assert bench.meta["settings"]["seed"] == 1000 and set(bench.table.column("state").to_pylist()) == {"complete"}
    # the build's study exists: other settings are refused in one line, the same ones resume it
    code, _, err = run_cli(capsys, *[a if a != "0.02" else "0.5" for a in argv])
    assert code == 2 and "exists with fraction = 0.02" in err, err
