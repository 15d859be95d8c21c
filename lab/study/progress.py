"""A study's progress as the lab shows it: trials counted by state out of the budget, the time spent
and the time left, the best point so far and the size of the Pareto front.

The model (`Progress`) is told of each trial that starts (`started`) and of each row the study
writes (`finished`: complete, pruned, failed, interrupted, and rejected points, which never reach
Ray Tune); a `View` (lab.cli.console draws one on the terminal) is told after each change. It knows
nothing of terminals, so it is tested on synthetic events, and runs the same for live studies (the
wall clock) and replayed ones (their simulated clock).

    progress = Progress(budget=20, objectives=[("val_top1", "max"), ("macs", "min")], concurrency=2)
    progress.started(0); progress.finished(row); progress.snapshot().eta
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np

from lab.pareto import pareto_mask, row_values
from lab.study.search import INTERRUPTED

PERCENT = ("val_top1", "val_top5", "test_top1", "test_top5", "pred_top1")   # fractions shown as %


class View(Protocol):
    """What shows a study's progress: opened before its first trial, told of every change, closed at
    its end (also by an error or Ctrl-C)."""

    def open(self, progress: Progress) -> None: ...

    def update(self, progress: Progress, row: dict | None) -> None:
        """`row`: the trial row just written (None: a trial started)."""

    def close(self, progress: Progress) -> None: ...


@dataclass(frozen=True)
class Snapshot:
    """The study's progress at one moment. `done` counts what the budget counts: complete, pruned and
    failed trials (not rejected points, nor trials an interrupted driver left)."""

    budget: int
    complete: int
    pruned: int
    failed: int
    rejected: int
    interrupted: int
    running: int
    elapsed: float            # seconds since this run started (simulated seconds for a replay)
    eta: float | None         # seconds left, estimated; None before any trial finished
    mean_seconds: float | None
    best: dict | None         # the best complete row by the first objective (then the next ones)
    front: int                # complete rows on the Pareto front of the objectives
    simulated: bool

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed


class Progress:
    """Counts and estimates for a study of `budget` counted trials, `concurrency` at a time, under
    `objectives` ((column, sense) pairs). `rows` are the rows recorded before this run (a resumed
    study); `clock` gives seconds (the wall clock, or a replay's simulated time)."""

    def __init__(self, budget: int, objectives: Sequence[tuple[str, str]], concurrency: int,
                 rows: Iterable[dict] = (), clock: Callable[[], float] = time.monotonic, simulated: bool = False,
                 name: str = "", logs: str = "", view: View | None = None):
        self.budget, self.objectives, self.concurrency = budget, list(objectives), max(1, concurrency)
        self.clock, self.simulated, self.view = clock, simulated, view
        self.name, self.logs = name, logs   # the study's name and where Ray's own logs go, for a view to say
        self.rows: dict[int, dict] = {r["number"]: r for r in rows}   # the latest row of each trial, by number
        self.running: dict[int, float] = {}   # trial number -> when it started (on `clock`)
        self.start = clock()
        self._lock = threading.Lock()   # a view may read from its own thread (rich's refresh)

    # --- events ---------------------------------------------------------------------------

    def started(self, number: int) -> None:
        with self._lock:
            self.running[number] = self.clock()
        if self.view is not None:
            self.view.update(self, None)

    def finished(self, row: dict) -> None:
        """A trial's row was written: it replaces any earlier row of the trial, which stops running."""
        with self._lock:
            self.running.pop(row["number"], None)
            self.rows[row["number"]] = row
        if self.view is not None:
            self.view.update(self, row)

    # --- what it shows --------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self._lock:
            rows = list(self.rows.values())
            ages = [self.clock() - t for t in self.running.values()]
            elapsed = self.clock() - self.start
        counts = {state: 0 for state in ("complete", "pruned", "failed", "rejected", "interrupted")}
        for r in rows:
            counts[state_of(r)] += 1
        done = counts["complete"] + counts["pruned"] + counts["failed"]
        durations = [d for r in rows if state_of(r) in ("complete", "pruned", "failed")
                     and (d := duration_of(r)) is not None]
        mean = sum(durations) / len(durations) if durations else None
        complete = [r for r in rows if r.get("state") == "complete"]
        return Snapshot(budget=self.budget, running=len(ages), elapsed=elapsed, mean_seconds=mean,
                        eta=estimate(self.budget - done, mean, ages, self.concurrency),
                        best=best_row(complete, self.objectives), front=front_size(complete, self.objectives),
                        simulated=self.simulated, **counts)


def state_of(row: dict) -> str:
    """complete, pruned, failed, rejected, or interrupted (a failed row of a stopped driver: not counted)."""
    if row.get("state") == "failed" and row.get("error") == INTERRUPTED:
        return "interrupted"
    return str(row.get("state"))


def duration_of(row: dict) -> float | None:
    """Seconds from a row's start to its finish (None when either is missing)."""
    start, end = row.get("started_at"), row.get("finished_at")
    if not isinstance(start, datetime) or not isinstance(end, datetime):
        return None
    return max(0.0, (end - start).total_seconds())


def estimate(remaining: int, mean: float | None, ages: Sequence[float], concurrency: int) -> float | None:
    """Seconds until `remaining` more trials are done (the running ones among them), each taking `mean`
    seconds, `concurrency` at a time; a running trial has already spent its age (up to `mean`).
    Exact when every trial takes `mean` and the running ones started together."""
    if remaining <= 0:
        return 0.0
    if mean is None:
        return None
    work = remaining * mean - sum(min(age, mean) for age in ages[:remaining])
    return max(0.0, work) / min(concurrency, remaining)


def _values(rows: Sequence[dict], objectives: Sequence[tuple[str, str]]) -> np.ndarray:
    return row_values(rows, [column for column, _ in objectives])


def front_size(rows: Sequence[dict], objectives: Sequence[tuple[str, str]]) -> int:
    """How many of `rows` are on their Pareto front (lab.pareto: a NaN objective is never on it)."""
    if not rows:
        return 0
    return int(pareto_mask(_values(rows, objectives), [s for _, s in objectives]).sum())


def best_row(rows: Sequence[dict], objectives: Sequence[tuple[str, str]]) -> dict | None:
    """The row best in the first objective, ties broken by the next ones; rows missing one are skipped."""
    scored = [(tuple(-v if sense == "max" else v for v, (_, sense) in zip(values, objectives)), i)
              for i, values in enumerate(_values(rows, objectives)) if not any(math.isnan(v) for v in values)]
    return rows[min(scored)[1]] if scored else None


# --- text -------------------------------------------------------------------------------------

def clock_text(seconds: float | None) -> str:
    """1:02:03, 2:31; ? when unknown."""
    if seconds is None:
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def value_text(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column in PERCENT:
        return f"{100 * value:.1f}%"
    if column == "macs":
        return f"{value / 1e6:.2f} MMACs"
    if column == "params":
        return f"{value / 1e6:.3f}M params"
    if column == "train_seconds":
        return f"{value:.1f} s"
    if column == "images_per_second":
        return f"{value:.0f} img/s"
    return f"{value:.4g}"


def objectives_text(row: dict, objectives: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{column} {value_text(column, row.get(column))}" for column, _ in objectives)


def counts_text(s: Snapshot) -> str:
    """3/20 trials (2 complete, 1 pruned, 0 failed), 2 running, 5 rejected"""
    parts = [f"{s.done}/{s.budget} trials ({s.complete} complete, {s.pruned} pruned, {s.failed} failed)",
             f"{s.running} running", f"{s.rejected} rejected"]
    if s.interrupted:
        parts.append(f"{s.interrupted} interrupted")
    return ", ".join(parts)


def time_text(s: Snapshot) -> str:
    """elapsed 2:31, about 5:10 left (simulated)"""
    left = "done" if s.done >= s.budget else f"about {clock_text(s.eta)} left"
    return f"elapsed {clock_text(s.elapsed)}, {left}" + (" (simulated)" if s.simulated else "")


def best_text(s: Snapshot, objectives: Sequence[tuple[str, str]]) -> str:
    """best: trial 4 [a1b2c3d4] val_top1 97.1%, macs 1.23 MMACs; Pareto front 3"""
    if s.best is None:
        return "best: none complete yet; Pareto front 0"
    return f"best: trial {s.best['number']} [{s.best.get('arch_id') or '?'}] {objectives_text(s.best, objectives)}; " \
           f"Pareto front {s.front}"


def status_line(s: Snapshot, objectives: Sequence[tuple[str, str]]) -> str:
    return f"{counts_text(s)}; {time_text(s)}; {best_text(s, objectives)}"


def trial_line(s: Snapshot, row: dict, objectives: Sequence[tuple[str, str]], full_text: bool) -> str:
    """One finished trial: `trial 4 complete [a1b2c3d4] val_top1 97.1%, macs 1.23 MMACs in 41 s (3/20 done)`,
    with its grammar text when `full_text`, or why it is not complete."""
    state = state_of(row)
    line = f"trial {row['number']} {state} [{row.get('arch_id') or '?'}]"
    if state == "complete":
        line += f" {objectives_text(row, objectives)}"
    seconds = duration_of(row)
    if seconds is not None and state != "rejected":
        line += f" in {clock_text(seconds)}"
    line += f" ({s.done}/{s.budget} done)"
    if state != "complete" and row.get("error"):
        line += f": {row['error']}"
    if full_text and row.get("text"):
        line += f"  {row['text']}"
    return line
