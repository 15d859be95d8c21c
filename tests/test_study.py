"""Studies end to end through real Ray Tune, Optuna and Lightning (small: a few trials, 1 epoch, a
small fraction of mnist5k), resuming after kill -9, a Ray cluster, and one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from support import BAD_RECIPE_SPACE

from lab.cli.main import main
from lab.errors import StudyError
from lab.study.config import StudyConfig
from lab.study.runner import create, resume
from lab.study.search import DUPLICATE
from lab.study.store import StudyStore

# tpe without the default's warm start (scoring its pool would be most of these tiny studies' time);
# the end-to-end test runs the default sampler
SMALL = dict(dataset="mnist5k", fraction=0.05, epochs=1, batch_size=32, concurrency=2, seed=0, sampler="tpe")
DEFAULT_SAMPLER = StudyConfig.__dataclass_fields__["sampler"].default


def _optuna_trials(folder: Path, name: str) -> dict[int, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/optuna.db")
    return {t.number: t for t in study.get_trials(deepcopy=False)}


def _agree(folder: Path, name: str) -> list[dict]:
    """The Parquet trials and the Optuna study agree trial for trial; returns the Parquet rows."""
    rows = StudyStore(folder).trials().to_pylist()
    trials = _optuna_trials(folder, name)
    assert sorted(r["number"] for r in rows) == sorted(trials), "a trial is missing on one side"
    for r in rows:
        t = trials[r["number"]]
        assert t.user_attrs.get("state") == r["state"], (r, t)
        if r["state"] == "rejected" and r["error"].startswith(DUPLICATE):   # the earlier trial's outcome, told again
            original = trials[int(r["error"].split()[3].rstrip(":"))]
            assert t.state == original.state and t.values == original.values
        elif r["state"] == "rejected":   # told as a pruned trial whose constraint is violated: never trained
            assert t.state == optuna.trial.TrialState.PRUNED and t.values is None and t.constraints == {"budget": 1.0}
        elif r["state"] == "complete":
            assert t.state == optuna.trial.TrialState.COMPLETE and t.values == [r["val_top1"], r["macs"]]
        elif r["state"] == "pruned":
            assert t.state == optuna.trial.TrialState.PRUNED
        else:
            assert t.state == optuna.trial.TrialState.FAIL
    return rows


def test_a_small_study_end_to_end(tmp_path, local_ray):
    folder = create(StudyConfig(name="e2e", space="hybrid", trials=4, **dict(SMALL, sampler=DEFAULT_SAMPLER)),
                    root=tmp_path, verbose=0)
    rows = _agree(folder, "e2e")
    trained = [r for r in rows if r["state"] != "rejected"]
    assert len(trained) == 4 and all(r["state"] == "complete" for r in trained), rows
    for r in trained:
        assert 0 <= r["val_top1"] <= 1 and r["test_top1"] is not None and r["n_train"] == 200
        assert r["macs"] > 0 and r["params"] > 0 and r["text"].startswith("@") and r["kinds"]
    # at least two trials ran at once (two workers; their time spans overlap)
    spans = sorted((r["started_at"], r["finished_at"]) for r in trained)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans
    assert len({r["worker"] for r in trained}) >= 2
    epochs = StudyStore(folder).epochs().to_pylist()
    assert sorted(e["number"] for e in epochs) == sorted(r["number"] for r in trained)
    config = json.loads(json.dumps(StudyStore(folder).load_config()))
    assert config["trials"] == 4 and config["space"] == "hybrid"
    assert not list((folder / "trials").glob("*.parquet"))   # compacted


def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path, local_ray):
    space = tmp_path / "bad_recipe.yaml"
    space.write_text(BAD_RECIPE_SPACE)
    folder = create(StudyConfig(name="fails", space=str(space), trials=2, **SMALL), root=tmp_path, verbose=0)
    rows = [r for r in _agree(folder, "fails") if r["state"] != "rejected"]
    assert len(rows) == 2 and all(r["state"] == "failed" and "diverged: loss became nan" in r["error"] for r in rows)


EMPTY_SPACE = """
res: 28
budget: {max_macs: 1}
vars:
  width: {choice: [8, 16]}
text: "@{res} | conv(c={width},k=3,s=2),bn,relu | basic 1x{width} | gap,fc"
"""


@pytest.mark.parametrize("flags, message", [
    (["--space", "{empty}"], "feasible"),
    (["--space", "{broken}"], "broken.yaml"),
    (["--space", "nowhere"], "nowhere"),
    (["--objectives", "val_acc:max,speed:min"], "speed"),
    (["--storage", "mysql+nodriver://x/y"], "--storage"),
    (["--address", "127.0.0.1:9"], "--address 127.0.0.1:9"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--trials", "0"], "trials"),
    (["--sampler", "grid"], "sampler"),
])
def test_bad_study_input_is_one_line_exit_2_and_leaves_no_study(tmp_path, capsys, flags, message):
    (tmp_path / "empty.yaml").write_text(EMPTY_SPACE)
    (tmp_path / "broken.yaml").write_text("res: 28\nvars: {width: [8, 16]\n")
    flags = [f.format(empty=tmp_path / "empty.yaml", broken=tmp_path / "broken.yaml") for f in flags]
    rc = main(["study", "create", "--name", "bad", "--root", str(tmp_path / "studies"), "--quiet", *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "studies" / "bad").exists()


def test_study_cli_show_list_export(tmp_path, capsys, local_ray):
    root = str(tmp_path / "studies")
    rc = main(["study", "create", "--name", "cli", "--root", root, "--quiet", "--trials", "2", "--fraction", "0.05",
               "--epochs", "1", "--space", "conv", "--sampler", "tpe"])
    out = capsys.readouterr().out
    assert rc == 0 and "study cli" in out and "Pareto set" in out
    assert main(["study", "show", "cli", "--root", root, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["states"].get("complete") == 2 and info["pareto"]
    assert main(["study", "list", "--root", root]) == 0 and "cli" in capsys.readouterr().out
    assert main(["study", "export", "cli", "--root", root, "--format", "csv", "--out", str(tmp_path / "x")]) == 0
    import pandas as pd

    assert len(pd.read_csv(tmp_path / "x" / "trials.csv").query("state == 'complete'")) == 2
    assert main(["study", "resume", "cli", "--root", root, "--quiet"]) == 0   # the budget is met: nothing to run
    assert json.loads(json.dumps(StudyStore(tmp_path / "studies" / "cli").load_config()))["trials"] == 2
    assert main(["study", "show", "nope", "--root", root]) == 2


def test_resume_after_the_driver_is_killed(tmp_path, local_ray):
    root = tmp_path / "studies"
    folder = root / "r"
    cmd = [sys.executable, "-m", "lab.cli.main", "study", "create", "--name", "r", "--root", str(root), "--quiet",
           "--space", "conv", "--trials", "4", "--concurrency", "1", "--fraction", "0.05", "--epochs", "2",
           "--scheduler", "fifo", "--batch-size", "32", "--sampler", "tpe"]
    driver = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        complete: list[dict] = []
        while time.time() < deadline and not complete:
            time.sleep(0.5)
            if (folder / "study.yaml").exists():
                complete = [r for r in StudyStore(folder).trials().to_pylist() if r["state"] == "complete"]
        assert complete, "no trial completed before the deadline"
        os.kill(driver.pid, signal.SIGKILL)   # mid-study: later trials are running or not yet asked
        driver.wait(timeout=30)
    finally:
        try:   # the killed driver's Ray processes share its session: stop them too
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = {r["number"]: r for r in StudyStore(folder).trials().to_pylist() if r["state"] == "complete"}
    resume("r", root=root, verbose=0)
    rows = _agree(folder, "r")
    done = [r for r in rows if r["state"] in ("complete", "pruned") or
            (r["state"] == "failed" and not r["error"].startswith("interrupted"))]
    assert len(done) == 4                                   # the budget is met, not exceeded
    after = {r["number"]: r for r in rows}
    for number, row in before.items():                       # no completed trial lost or run twice
        assert after[number]["val_top1"] == row["val_top1"] and after[number]["finished_at"] == row["finished_at"]
    assert len(rows) == len({r["number"] for r in rows})
    assert all(r["state"] != "failed" or r["error"].startswith("interrupted") for r in rows)


def test_a_study_on_a_ray_cluster(tmp_path):
    # a cluster of its own (a head node's GCS and raylet, as `ray start --head` makes them), stopped
    # by itself: `ray stop` would stop every Ray on the machine, a parallel test's too
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()   # a Ray this worker's earlier studies shared (tests/conftest.py: local_ray) would be used instead
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        folder = create(StudyConfig(name="cluster", space="conv", trials=2, address=cluster.address, **SMALL),
                        root=tmp_path, verbose=0)
        rows = [r for r in _agree(folder, "cluster") if r["state"] != "rejected"]
        assert len(rows) == 2 and all(r["state"] == "complete" for r in rows)
    finally:
        cluster.shutdown()


def test_shipped_study_recipes_are_valid():
    from lab.study.config import read_recipe_file
    from lab.study.space import load_space

    recipes = sorted(Path(__file__).resolve().parents[1].joinpath("studies").glob("*.yaml"))
    assert any(p.name == "hybrid-mnist5k.yaml" for p in recipes)
    for path in recipes:
        config = StudyConfig(name=path.stem, **read_recipe_file(path))
        load_space(config.space)


def test_a_bad_recipe_file_names_the_setting(tmp_path):
    from lab.study.config import read_recipe_file

    bad = tmp_path / "x.yaml"
    bad.write_text("space: hybrid\ntrails: 20\n")
    with pytest.raises(StudyError, match="unknown setting 'trails'"):
        read_recipe_file(bad)
    bad.write_text("space: [hybrid\n")
    with pytest.raises(StudyError, match=r"x.yaml \(line 2\): not valid YAML"):
        read_recipe_file(bad)


def test_a_study_resolution_rescales_sampled_points_and_rechecks_the_budget(tmp_path):
    import lab
    from lab.study.search import LabSearch
    from lab.study.space import load_space

    space = load_space("conv")
    searcher = LabSearch(space, StudyStore(tmp_path), [("val_top1", "max"), ("macs", "min")],
                         optuna.samplers.RandomSampler(seed=0), "res", optuna.storages.InMemoryStorage(), {}, 10, 1, res=32)
    kept = 0
    for _ in range(40):
        point, reason = searcher.candidate(searcher.study.ask())
        if reason is None:
            kept += 1
            assert point.spec.res == 32 and lab.cost(point.spec, 10, 1).macs == point.macs <= space.max_macs
        else:
            assert point.spec is None or "32 px" in reason or point.spec.res == 28
    assert kept > 10


def test_a_rescaled_point_keeps_its_sampled_choices(tmp_path):
    """A study at another resolution than its space's (--res) rescales each sampled point: its trial
    rows keep the sampled choices, so duplicates are keyed on them and the dashboard's design-space
    and importance views still see them."""
    from lab.dashboard.data import load
    from lab.study.search import LabSearch
    from lab.study.space import load_space

    store = StudyStore(tmp_path / "res")
    store.save_config({"name": "res", "objectives": "val_acc:max,macs:min"})
    searcher = LabSearch(load_space("conv"), store, [("val_top1", "max"), ("macs", "min")],
                         optuna.samplers.RandomSampler(seed=0), "res", optuna.storages.InMemoryStorage(),
                         {"dataset": "mnist5k"}, 10, 1, res=32)
    for i in range(4):
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {**_epoch(config, 1, 0.5 + i / 10), "kind": "final", "state": "complete"})
    rows = [r for r in store.trials().to_pylist() if r["state"] == "complete"]
    assert len(rows) == 4 and all(r["res"] == 32 and r["text"].startswith("@32 ") for r in rows)
    sampled = [json.loads(r["hparams"])["vars"] for r in rows]
    assert all(v.get("block") in ("basic", "bottleneck", "convnext") and "w0" in v for v in sampled), sampled
    assert len(searcher._seen) == 4 and all(json.loads(h)["vars"] for _, h in searcher._seen)   # duplicates key on them
    data = load([tmp_path / "res"])
    assert {"block", "w0"} <= set(data.choices)
    assert all(c.get("block") for c in data.rows["choices"])


def _searcher(tmp_path, space="conv", sampler=None):
    from lab.study.search import LabSearch
    from lab.study.space import load_space

    return LabSearch(load_space(space), StudyStore(tmp_path), [("val_top1", "max"), ("macs", "min")],
                     sampler or optuna.samplers.RandomSampler(seed=0), "unit", optuna.storages.InMemoryStorage(),
                     {"dataset": "mnist5k"}, 10, 1)


def test_the_searcher_pickles_for_tune_with_its_listeners_left_behind(tmp_path):
    """Tune pickles its search algorithm and stopper into tuner.pkl before any trial: a listener holding
    a lock (the live view's progress) must not break `lab study create` (it did, in issue 22's tree)."""
    import threading

    from ray import cloudpickle
    from ray.tune.search import ConcurrencyLimiter

    from lab.study.progress import Progress

    searcher = _searcher(tmp_path)
    progress = Progress(2, [("val_top1", "max"), ("macs", "min")], 2)
    searcher.listeners.append(lambda row, result: progress.finished(row))   # as the runner subscribes it
    searcher.listeners.append(lambda row, result, lock=threading.Lock(): None)
    restored = cloudpickle.loads(cloudpickle.dumps(ConcurrencyLimiter(searcher, max_concurrent=2)))
    cloudpickle.dumps(searcher.stopper())
    assert restored.searcher.listeners == [] and len(searcher.listeners) == 2   # the driver's stay with it
    assert restored.searcher.objectives == searcher.objectives


def _epoch(config: dict, epoch: int, val: float) -> dict:
    return {"number": config["number"], "kind": "epoch", "epoch": epoch, "loss": 1.0 / epoch, "val_top1": val,
            "seconds": 2.0 * epoch, "worker_seconds": 2.5 * epoch, "macs": config["macs"], "params": config["params"],
            "training_iteration": epoch}


def test_a_trial_stopped_by_the_scheduler_keeps_its_last_epoch(tmp_path):
    # Tune hands the result on which the scheduler stopped a trial to on_trial_complete only
    searcher = _searcher(tmp_path)
    config = searcher.suggest("t0")
    searcher.on_trial_result("t0", _epoch(config, 1, 0.5))
    searcher.on_trial_complete("t0", _epoch(config, 2, 0.6))
    row = StudyStore(tmp_path).trials().to_pylist()[-1]
    assert row["state"] == "pruned" and row["epochs_done"] == 2 and row["val_top1"] == 0.6
    assert row["train_seconds"] == 4.0 and row["worker_seconds"] == 5.0
    curve = StudyStore(tmp_path).epochs().to_pylist()
    assert [(e["epoch"], e["val_top1"]) for e in curve] == [(1, 0.5), (2, 0.6)]


def test_a_point_proposed_again_is_not_trained_twice(tmp_path):
    searcher = _searcher(tmp_path)
    first = searcher.suggest("t0")
    searcher.on_trial_complete("t0", {**_epoch(first, 1, 0.9), "kind": "final", "state": "complete"})
    searcher.study.enqueue_trial(searcher.study.trials[first["number"]].params)   # the sampler proposes it again
    second = searcher.suggest("t1")
    assert second["number"] != first["number"]
    rows = {r["number"]: r for r in StudyStore(tmp_path).trials().to_pylist()}
    dup = [r for r in rows.values() if r["state"] == "rejected" and (r["error"] or "").startswith(DUPLICATE)]
    assert len(dup) == 1 and dup[0]["text"] == first["text"], rows
    trials = {t.number: t for t in searcher.study.trials}
    assert trials[dup[0]["number"]].values == trials[first["number"]].values == [0.9, first["macs"]]
    # a resumed searcher knows the trained points from the store
    assert _searcher(tmp_path)._seen == {(first["text"], rows[first["number"]]["hparams"]): first["number"]}
