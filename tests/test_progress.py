"""The lab's own console: the progress model on synthetic events, its plain-line view, Ray's output
kept in the study folder, and the Pareto table that wraps the grammar text."""

import io
import itertools
import logging
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from lab.cli.console import PlainView, study_view
from lab.cli.main import main
from lab.pareto import pareto_mask
from lab.report.table import render, wrap_cell
from lab.study.progress import Progress, estimate, front_size
from lab.study.runner import _ray_quieted
from lab.study.search import INTERRUPTED

OBJECTIVES = [("val_top1", "max"), ("macs", "min")]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TEXT = "@28 | conv(c=48),bn,relu | bottleneck(e=2,gw=8) 1x48, 1x64/2, 1x80/2 | mhsa(hd=16) 2x96 | gap,ln,fc"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def row(number: int, state: str, start: float = 0.0, end: float = 60.0, error: str | None = None, **values) -> dict:
    return {"number": number, "state": state, "error": error, "arch_id": f"id{number}", "text": TEXT,
            "started_at": T0 + timedelta(seconds=start), "finished_at": T0 + timedelta(seconds=end), **values}


def test_trials_are_counted_by_state_out_of_the_budget():
    clock = Clock()
    progress = Progress(10, OBJECTIVES, concurrency=3, clock=clock,
                        rows=[row(0, "complete", val_top1=0.5, macs=1e6), row(1, "failed", error=INTERRUPTED)])
    for n in (2, 3, 4, 5, 6, 7):
        progress.started(n)
    progress.finished(row(2, "complete", val_top1=0.6, macs=2e6))
    progress.finished(row(3, "pruned"))
    progress.finished(row(4, "failed", error="TrainError: diverged"))
    progress.finished(row(8, "rejected", error="over budget"))   # never started: never trained
    progress.finished(row(9, "rejected", error="duplicate of trial 2"))
    s = progress.snapshot()
    assert (s.complete, s.pruned, s.failed, s.rejected, s.interrupted, s.running) == (2, 1, 1, 2, 1, 3)
    assert s.done == 4 and s.budget == 10   # interrupted and rejected trials are not counted
    progress.finished(row(5, "complete", val_top1=0.7, macs=3e6))
    progress.finished(row(5, "complete", val_top1=0.7, macs=3e6))   # a row written again replaces it
    assert (progress.snapshot().complete, progress.snapshot().running) == (3, 2)


def _true_finish(budget: int, concurrency: int, seconds: float, now: float, starts: list[float]) -> float:
    """When the last of `budget` trials of `seconds` each ends, `concurrency` at a time, the running ones
    (among them) started at `starts` and the others started as slots free up: the reference for `estimate`."""
    ends = [s + seconds for s in starts]
    free = sorted(ends + [now] * (concurrency - len(starts)))
    for _ in range(budget - len(starts)):
        ends.append(free.pop(0) + seconds)
        free = sorted(free + [ends[-1]])
    return max(ends)


def test_the_time_left_follows_from_the_mean_trial_time_and_the_concurrency():
    clock = Clock()
    progress = Progress(8, OBJECTIVES, concurrency=2, clock=clock)
    progress.started(0), progress.started(1)
    clock.t = 30
    assert progress.snapshot().eta is None and progress.snapshot().elapsed == 30   # no trial has finished yet
    clock.t = 60
    progress.finished(row(0, "complete", 0, 60, val_top1=0.5, macs=1e6))
    progress.finished(row(1, "pruned", 0, 60))
    progress.started(2), progress.started(3)
    clock.t = 90
    s = progress.snapshot()
    assert s.mean_seconds == 60
    # 2 running trials (30 s in) and 4 to start: the last of the 6 ends at 240
    assert s.eta == pytest.approx(_true_finish(6, 2, 60, 90, [60, 60]) - 90) == pytest.approx(150)
    # exact whenever the running trials started together (or none runs)
    for remaining, concurrency, ages in [(6, 2, [30, 30]), (1, 2, [10]), (9, 3, [20, 20, 20]), (4, 2, []), (2, 4, [5, 5])]:
        assert estimate(remaining, 50.0, ages, concurrency) == pytest.approx(
            _true_finish(remaining, concurrency, 50.0, 100.0, [100.0 - a for a in ages]) - 100), (remaining, ages)
    assert estimate(0, 50.0, [], 2) == 0.0 and estimate(3, None, [], 2) is None


def test_the_best_point_and_the_front_size_agree_with_lab_pareto():
    rng = random.Random(0)
    rows = [row(i, "complete", val_top1=round(rng.uniform(0.1, 0.9), 2), macs=rng.choice([1e6, 2e6, 3e6, 4e6]))
            for i in range(40)]
    rows += [row(40, "complete", val_top1=None, macs=1e5),        # no accuracy: never on the front, never best
             row(41, "pruned", val_top1=0.99, macs=1e5),          # pruned: not a front point
             row(42, "rejected", val_top1=None, macs=1e3)]
    progress = Progress(50, OBJECTIVES, concurrency=2, rows=rows)
    s = progress.snapshot()
    complete = [r for r in rows if r["state"] == "complete"]
    values = np.array([[r["val_top1"] if r["val_top1"] is not None else np.nan, r["macs"]] for r in complete])
    assert s.front == int(pareto_mask(values, ["max", "min"]).sum()) == front_size(complete, OBJECTIVES)

    def dominated(a, b):   # b dominates a: the definition, an independent count
        return b[0] >= a[0] and b[1] <= a[1] and (b[0] > a[0] or b[1] < a[1])

    valid = [v for v in values if not np.isnan(v).any()]
    assert s.front == sum(not any(dominated(a, b) for b in valid) for a in valid)
    top = max(r["val_top1"] for r in complete if r["val_top1"] is not None)
    assert s.best["val_top1"] == top
    assert s.best["macs"] == min(r["macs"] for r in complete if r["val_top1"] == top)   # ties: the cheaper


def test_off_a_terminal_the_progress_is_plain_lines():
    assert study_view(quiet=True) is None
    out = io.StringIO()
    assert isinstance(study_view(stream=out), PlainView)   # a StringIO is no terminal
    for verbose in (False, True):
        out = io.StringIO()
        clock = Clock()
        progress = Progress(3, OBJECTIVES, concurrency=2, clock=clock, name="demo", view=PlainView(out, verbose))
        progress.view.open(progress)
        progress.started(0), progress.started(1)
        progress.finished(row(2, "rejected", error="over budget: 9 MMACs > 5 MMACs"))
        clock.t = 60
        progress.finished(row(0, "complete", 0, 60, val_top1=0.875, macs=2.5e6))
        progress.finished(row(1, "pruned", 0, 60, error="stopped by the scheduler after 1 epoch(s)"))
        progress.view.close(progress)
        lines = out.getvalue().splitlines()
        assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()
        assert lines[0] == "study demo: 3 trials to go of 3, 2 at a time"
        finished = [line for line in lines if line.startswith("trial ")]
        assert len(finished) == (3 if verbose else 2)   # a rejected point only when verbose
        done = next(line for line in finished if line.startswith("trial 0 complete"))
        assert "val_top1 87.5%" in done and "macs 2.50 MMACs" in done and "(1/3 done)" in done
        assert (TEXT in done) == verbose   # the full grammar text only when verbose
        assert lines[-1].startswith("2/3 trials (1 complete, 1 pruned, 0 failed), 0 running, 1 rejected")
        assert "best: trial 0 [id0] val_top1 87.5%" in lines[-1] and "Pareto front 1" in lines[-1]


def test_ray_log_lines_go_to_the_study_folder_and_trial_errors_stay_one_line(tmp_path, capsys):
    import ray  # noqa: F401  (its logger's handler to the terminal is what is swapped)

    log = tmp_path / "ray" / "driver.log"
    ray_logger = logging.getLogger("ray")
    before = list(ray_logger.handlers)
    with _ray_quieted(log):
        logging.getLogger("ray.tune.utils.util").warning("The `x` operation took 2.1 s, which may be a performance "
                                                         "bottleneck.")
        logging.getLogger("ray.tune.execution.tune_controller").error("Trial task failed for trial t1",
                                                                      exc_info=(ValueError, ValueError("x"), None))
    err = capsys.readouterr().err
    assert "performance bottleneck" not in err and "performance bottleneck" in log.read_text()
    assert err.count("\n") == 1 and "lab: warning: a trial failed in its worker (ValueError)" in err
    assert ray_logger.handlers == before   # the terminal handler is back after the study


def test_the_pareto_table_wraps_the_text_whole_and_aligned():
    headers = ["#", "val top-1", "text"]
    texts = [TEXT, "@28 | patch(p=4,c=48),pos | nat(hd=16) 1x48 | mixer 1x96/(conv(s=2),ln), 1x192/merge | ln,gap,fc", ""]
    table = render(headers, [[str(i), "91.0%", t] for i, t in enumerate(texts)], align="<><", wrap=-1, width=60)
    lines = table.splitlines()
    start = lines[0].index("text")
    assert all(len(line) <= 60 for line in lines)
    pieces: list[list[str]] = []
    for line in lines[2:]:
        if line[:start].strip():   # a row's first line; continuation lines are blank before the text column
            pieces.append([])
        assert line[:start].strip() == "" or line[:start].split()[0].isdigit()
        pieces[-1].append(line[start:])
    assert [" ".join(p).strip() for p in pieces] == texts
    assert render(headers, [["1", "9%", TEXT]]).endswith(TEXT)   # no width: one line, as before
    for width in (5, 17, 40):
        assert " ".join(wrap_cell(TEXT, width)) == TEXT


def test_a_replayed_study_shows_the_same_progress(tmp_path):
    from lab.study.config import StudyConfig
    from lab.study.replay import bench_of_name, replay_defaults
    from lab.study.runner import create
    from lab.study.store import StudyStore

    out = io.StringIO()
    settings = replay_defaults(bench_of_name("replay:hybrid"))   # the table's training settings, as the CLI takes them
    folder = create(StudyConfig(name="r", backend="replay:hybrid", trials=6, sampler="random", **settings),
                    root=tmp_path, view=PlainView(out))
    rows = StudyStore(folder).trials().to_pylist()
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "failed", "rejected")}
    last = out.getvalue().splitlines()[-1]
    assert last.startswith(f"6/6 trials ({counts['complete']} complete, {counts['pruned']} pruned, "
                           f"{counts['failed']} failed), 0 running, {counts['rejected']} rejected")
    assert "(simulated)" in last and "simulated trials to go" in out.getvalue().splitlines()[0]


# not slow (~16 s): the one test of `lab study create` through the CLI, Tune and its pickled state, the
# quick start's main job (a slow mark let issue 22 ship it broken)
def test_a_live_study_prints_the_labs_lines_and_no_ray_boxes(tmp_path, capsys, local_ray):
    capsys.readouterr()   # what the shared Ray printed when it started
    root = tmp_path / "studies"
    rc = main(["study", "create", "--name", "quiet", "--root", str(root), "--space", "hybrid", "--res", "16",
               "--fraction", "0.05", "--epochs", "1", "--batch-size", "32", "--trials", "2", "--scheduler", "fifo",
               "--sampler", "random", "--no-dashboard", "--verbose"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    for ray_box in ("Trial status", "╭", "Configuration for experiment", "View detailed results", "tensorboard"):
        assert ray_box not in out and ray_box not in err, ray_box
    assert out.startswith("study quiet: 2 trials to go of 2, 2 at a time")
    finished = [line for line in out.splitlines() if line.startswith("trial ")]
    assert len([line for line in finished if "rejected" not in line]) == 2
    assert any("2/2 trials (" in line for line in out.splitlines()) and "Pareto set" in out
    rows = [line for line in itertools.dropwhile(lambda line: not line.startswith("#"), out.splitlines())][2:]
    assert rows and all("@16 |" in line for line in rows)   # the table's text whole, on one line off a terminal


def test_ray_log_lines_stay_in_the_file_when_rays_logger_has_no_handler(tmp_path, capsys):
    # a process where Ray's own terminal handler is gone and the root logger prints (a library's basicConfig):
    # records would propagate to the terminal
    import sys

    import ray  # noqa: F401

    ray_logger = logging.getLogger("ray")
    before = list(ray_logger.handlers)
    for h in before:
        ray_logger.removeHandler(h)
    root = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(root)
    try:
        with _ray_quieted(tmp_path / "driver.log"):
            logging.getLogger("ray.tune.utils.util").warning("The `y` operation may be a performance bottleneck.")
    finally:
        logging.getLogger().removeHandler(root)
        for h in before:
            ray_logger.addHandler(h)
    assert "performance bottleneck" not in capsys.readouterr().err
    assert "performance bottleneck" in (tmp_path / "driver.log").read_text()
