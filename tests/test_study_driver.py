"""The study driver's guarantees: one driver per study, Ctrl-C settled, bad `--address` and full disks
as one line with nothing half-made, and exit codes that say whether the study produced anything."""

from __future__ import annotations

import errno
import glob
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from support import BAD_RECIPE_SPACE, ray_head

from lab.cli.main import main
from lab.dashboard.synthetic import write_synthetic_study
from lab.study.config import StudyConfig
from lab.study.runner import DRIVER_LOCK, create, resume
from lab.study.search import DUPLICATE, INTERRUPTED
from lab.study.store import StudyStore

TINY = ["--space", "conv", "--fraction", "0.05", "--epochs", "1", "--batch-size", "32", "--no-dashboard", "--quiet",
        "--sampler", "tpe"]   # no warm start: its pool's proxies would be most of these tiny studies' time


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _met_study(root: Path, name: str = "done") -> Path:
    """A recorded study whose budget is met: resuming it trains nothing."""
    folder = root / name
    store = write_synthetic_study(folder, 6, seed=1)
    rows = store.trials().to_pylist()
    config = yaml.safe_load((folder / "study.yaml").read_text())
    config["trials"] = sum(r["state"] in ("complete", "pruned", "failed") for r in rows)
    (folder / "study.yaml").write_text(yaml.safe_dump(config))
    return folder


def _hold(folder: Path) -> subprocess.Popen:
    """Another process holding the study's driver lock, as a running driver does."""
    code = ("import sys, time; from lab.files import hold_lock\n"
            f"with hold_lock({str(folder / DRIVER_LOCK)!r}, 'lab study resume x'):\n"
            "    print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_driver_is_refused_naming_the_holder_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    root = tmp_path / "studies"
    folder = _met_study(root)
    before = StudyStore(folder).trials().to_pylist()
    holder = _hold(folder)
    try:
        assert main(["study", "resume", "done", "--root", str(root), "--quiet", "--no-dashboard"]) == 2
        err = _one_line(capsys)
        assert "already being run by another driver" in err and f"pid {holder.pid}" in err, err
        assert main(["study", "create", "--name", "done", "--root", str(root), *TINY]) == 2
        assert "exists" in _one_line(capsys)
    finally:
        holder.send_signal(signal.SIGKILL)   # a driver killed -9: the kernel drops its flock
        holder.wait()
    assert str(holder.pid) in (folder / DRIVER_LOCK).read_text()   # its line stays, but the lock is free
    assert main(["study", "resume", "done", "--root", str(root), "--quiet", "--no-dashboard"]) == 0
    assert StudyStore(folder).trials().to_pylist() == before
    assert (folder / DRIVER_LOCK).read_text() == ""   # a driver that ended cleanly leaves no holder line


def _ray_processes(session: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if session in line]


def test_resume_during_create_is_refused_and_ctrl_c_settles_running_trials_names_resume_and_exits_130(tmp_path, capsys):
    """A real driver: a second driver is refused while it runs; Ctrl-C stops it cleanly (its running trials
    settled as interrupted, Ray's processes gone, exit 130); resume then completes the budget."""
    root = tmp_path / "studies"
    folder = root / "cc"
    cmd = [sys.executable, "-m", "lab.cli.main", "study", "create", "--name", "cc", "--root", str(root),
           "--trials", "1", "--scheduler", "fifo", *TINY, "--epochs", "30"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not glob.glob(f"{folder}/ray/*/run_trial*/progress.csv"):
            time.sleep(0.3)
        assert glob.glob(f"{folder}/ray/*/run_trial*"), "no trial started"
        assert main(["study", "resume", "cc", "--root", str(root), "--quiet", "--no-dashboard"]) == 2
        err = _one_line(capsys)
        assert f"pid {driver.pid}" in err and "lab study create cc" in err, err
        sessions = {Path(p).name for p in glob.glob("/tmp/ray/session_2*")}
        driver.send_signal(signal.SIGINT)
        _, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert "interrupted" in last and "`lab study resume cc`" in last and "Traceback" not in stderr, stderr[-2000:]
    rows = StudyStore(folder).trials().to_pylist()
    interrupted = [r for r in rows if r["state"] == "failed"]
    assert interrupted and all(r["error"] == INTERRUPTED and r["text"] and r["arch_id"] for r in interrupted), rows
    study = optuna.load_study(study_name="cc", storage=f"sqlite:///{folder}/optuna.db")
    assert not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    time.sleep(1)
    own = [s for s in sessions if s.endswith(f"_{driver.pid}")]   # the driver's own Ray session
    assert own and not any(_ray_processes(s) for s in own), [_ray_processes(s) for s in own]
    # resumed (here: on a shared Ray, as test workers run studies), the budget is met, not exceeded
    config = yaml.safe_load((folder / "study.yaml").read_text())
    config["epochs"] = 1
    (folder / "study.yaml").write_text(yaml.safe_dump(config))
    from lab.study.cluster import start_ray

    start_ray()
    resume("cc", root=root, verbose=0)
    rows = StudyStore(folder).trials().to_pylist()
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert sum(r["state"] == "complete" for r in rows) == 1, rows
    for r in rows:   # Parquet and Optuna agree (a duplicate repeats its original trial's outcome)
        if r["state"] == "rejected" and r["error"].startswith(DUPLICATE):
            expected = states[int(r["error"].split()[3].rstrip(":"))].name
        else:
            expected = {"complete": "COMPLETE", "failed": "FAIL", "rejected": "COMPLETE", "pruned": "PRUNED"}[r["state"]]
        assert states[r["number"]].name == expected, (r, states[r["number"]])


class _Web(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_an_address_that_is_not_a_ray_head_fails_in_seconds_and_leaves_nothing(tmp_path, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Web)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        start = time.perf_counter()
        rc = main(["study", "create", "--name", "web", "--root", str(tmp_path / "studies"), "--address",
                   f"127.0.0.1:{server.server_address[1]}", "--trials", "1", *TINY])
        elapsed = time.perf_counter() - start
    finally:
        server.shutdown()
    err = _one_line(capsys)
    assert rc == 2 and "not a Ray head" in err and "--address" in err, err
    assert elapsed < 30   # Ray's own retry loop took 14 minutes
    assert not (tmp_path / "studies" / "web").exists()


@pytest.mark.slow
def test_a_cluster_with_token_authentication_names_the_token(tmp_path, capsys):
    """A head started by `ray start` with token authentication, and a driver with another token."""
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 32)
    with ray_head("--num-cpus", "1", env=env) as port:
        os.environ["RAY_AUTH_TOKEN"] = "1" * 32
        try:
            rc = main(["study", "create", "--name", "auth", "--root", str(tmp_path / "studies"), "--address",
                       f"127.0.0.1:{port}", "--trials", "1", *TINY])
        finally:
            del os.environ["RAY_AUTH_TOKEN"]
    err = _one_line(capsys)
    assert rc == 2 and "RAY_AUTH_MODE" in err and "RAY_AUTH_TOKEN" in err, err
    assert not (tmp_path / "studies" / "auth").exists()


def test_a_missing_database_driver_names_the_package_and_url_form(tmp_path, capsys):
    rc = main(["study", "create", "--name", "pg", "--root", str(tmp_path / "studies"), "--storage",
               "postgresql://u:p@127.0.0.1/db", "--trials", "1", *TINY])
    err = _one_line(capsys)
    assert rc == 2 and "pip install" in err and ("postgresql+psycopg://" in err or "postgresql+psycopg2://" in err), err
    assert not (tmp_path / "studies" / "pg").exists()


def test_gpus_per_trial_without_gpus_is_refused_before_the_study_exists(tmp_path, capsys, local_ray):
    capsys.readouterr()   # what the shared Ray printed when it started
    rc = main(["study", "create", "--name", "gpu", "--root", str(tmp_path / "studies"), "--gpus-per-trial", "0.5",
               "--trials", "1", *TINY])
    err = _one_line(capsys)
    assert rc == 2 and "--gpus-per-trial 0.5" in err and "0 GPU" in err, err
    assert not (tmp_path / "studies" / "gpu").exists()


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_no_room_for_the_optuna_database_is_one_line_and_leaves_no_folder(tmp_path, capsys, monkeypatch, local_ray):
    capsys.readouterr()   # what the shared Ray printed when it started
    import sqlalchemy.exc

    class Full(optuna.storages.RDBStorage):   # a subclass: Optuna's isinstance checks still hold
        def __init__(self, url, *args, **kwargs):
            if url.startswith("sqlite:///") and "studies" in url:
                raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("database or disk is full"))
            super().__init__(url, *args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", Full)
    rc = main(["study", "create", "--name", "full", "--root", str(tmp_path / "studies"), "--trials", "1", *TINY])
    err = _one_line(capsys)
    assert rc == 2 and "Optuna database" in err and "no space left" in err and "--storage" not in err, err
    assert not (tmp_path / "studies" / "full").exists()


def test_a_disk_that_fills_mid_study_is_one_line_and_resume_completes_it(tmp_path, capsys, monkeypatch, local_ray):
    capsys.readouterr()   # what the shared Ray printed when it started
    root = tmp_path / "studies"
    real, calls = StudyStore.write_trial, []

    def fills(self, row):
        calls.append(row["number"])
        if len(calls) >= 2:   # the first trial is recorded, then the disk is full
            _no_space()
        real(self, row)

    monkeypatch.setattr(StudyStore, "write_trial", fills)
    rc = main(["study", "create", "--name", "fill", "--root", str(root), "--trials", "2", "--concurrency", "1", *TINY])
    err = _one_line(capsys)
    assert rc == 2 and "no space left" in err and "`lab study resume fill`" in err, err
    assert StudyStore(root / "fill").trials().num_rows == 1   # what was recorded stays
    monkeypatch.setattr(StudyStore, "write_trial", real)   # space freed
    resume("fill", root=root, verbose=0)
    rows = StudyStore(root / "fill").trials().to_pylist()
    assert sum(r["state"] in ("complete", "pruned") for r in rows) == 2, rows
    study = optuna.load_study(study_name="fill", storage=f"sqlite:///{root / 'fill'}/optuna.db")
    assert not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))


def test_a_study_whose_every_trial_failed_exits_2_with_the_first_reason(tmp_path, capsys, local_ray):
    capsys.readouterr()   # what the shared Ray printed when it started
    space = tmp_path / "bad.yaml"
    space.write_text(BAD_RECIPE_SPACE)
    rc = main(["study", "create", "--name", "allfail", "--root", str(tmp_path / "studies"), "--trials", "1",
               *TINY, "--space", str(space)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "no trial completed" in err and "diverged" in err, err


def test_a_failed_create_before_any_trial_leaves_no_folder(tmp_path, monkeypatch, local_ray):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("lab.study.runner._tune", boom)
    with pytest.raises(KeyboardInterrupt):
        create(StudyConfig(name="gone", space="conv", trials=1, fraction=0.05, epochs=1), root=tmp_path, verbose=0)
    assert not (tmp_path / "gone").exists()


def _searcher(tmp_path, fits=None, storage=None):
    from lab.study.search import LabSearch
    from lab.study.space import load_space

    return LabSearch(load_space("conv"), StudyStore(tmp_path), [("val_top1", "max"), ("macs", "min")],
                     optuna.samplers.RandomSampler(seed=0), "unit", storage or optuna.storages.InMemoryStorage(),
                     {"dataset": "mnist5k"}, 10, 1, fits=fits)


def test_points_predicted_over_a_trials_memory_are_rejected_untrained(tmp_path):
    from lab.memory import training_memory
    from lab.study.runner import _memory_check

    data = type("Data", (), {"num_classes": 10, "in_chans": 1})()
    check = _memory_check(StudyConfig(name="m", space="conv", max_memory="30MB"), data)
    searcher = _searcher(tmp_path, fits=check)
    trained = [searcher.suggest(f"t{i}") for i in range(12)]
    rows = StudyStore(tmp_path).trials().to_pylist()
    over = [r for r in rows if r["state"] == "rejected" and r["error"].startswith("over memory")]
    assert over and all("--max-memory, per trial" in r["error"] for r in over), rows
    from lab.grammar import parse

    for r in rows:   # the verdict agrees with the estimate, computed here (points outside the space's budget aside)
        if r["error"] and not r["error"].startswith("over memory"):
            continue
        need = training_memory(parse(r["text"]), 64, 10, 1).total
        assert (r in over) == (need > 30e6), (r["text"], need)
    assert all(training_memory(parse(c["text"]), 64, 10, 1).total <= 30e6 for c in trained)


def test_a_study_memory_limit_is_a_checked_setting(tmp_path):
    with pytest.raises(Exception, match="study max_memory 'lots'"):
        StudyConfig(name="m", max_memory="lots")
    assert StudyConfig(name="m", address="10.0.0.1:6379").memory_limit() == (None, None)   # workers check their own
    limit, source = StudyConfig(name="m", concurrency=4).memory_limit()
    assert limit and "/ 4 trials" in source


def test_a_killed_drivers_running_trial_is_settled_with_its_point(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    first = _searcher(tmp_path, storage=storage)
    config = first.suggest("t0")            # running when the driver is killed: no row, RUNNING in Optuna
    second = _searcher(tmp_path, storage=storage)   # the resumed driver's searcher
    assert second.reconcile() == 1
    row = StudyStore(tmp_path).trials().to_pylist()[0]
    assert row["state"] == "failed" and row["error"] == INTERRUPTED
    assert row["text"] == config["text"] and row["arch_id"] and row["kinds"] and row["params"] == config["params"]
    assert json_vars(row) == first.study.trials[0].params
    assert second.study.trials[0].state == optuna.trial.TrialState.FAIL


def json_vars(row: dict) -> dict:
    import json

    return json.loads(row["hparams"])["vars"]


def _strict(text: str):
    import json

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_list_and_show_read_the_readmes_synthetic_demo_studies_as_strict_json(tmp_path, capsys):
    from lab.dashboard.synthetic import write_scaling_study

    root = tmp_path / "studies"
    write_synthetic_study(root / "demo", 30, fractions=[0.1, 1.0])
    write_scaling_study(root / "scaling-demo", fractions=[0.1, 1.0], seeds=1)
    assert main(["study", "list", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "scaling-demo" in out
    assert main(["study", "list", "--root", str(root), "--json"]) == 0
    assert {i["name"] for i in _strict(capsys.readouterr().out)} == {"demo", "scaling-demo"}
    for name in ("demo", "scaling-demo"):
        assert main(["study", "show", name, "--root", str(root), "--json"]) == 0
        info = _strict(capsys.readouterr().out)
        assert info["pareto"] and all(isinstance(r["kinds"], list) for r in info["pareto"]), info["pareto"][:1]
        assert any(v is None for r in info["pareto"] for v in r.values())   # missing values are null, not NaN


def test_a_trial_whose_worker_died_says_so(tmp_path):
    from lab.study.search import WORKER_LOST

    searcher = _searcher(tmp_path)
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", None, error=True)   # what Tune reports for a worker killed -9
    row = StudyStore(tmp_path).trials().to_pylist()[-1]
    assert row["state"] == "failed" and row["error"] == WORKER_LOST and "died" in row["error"]
