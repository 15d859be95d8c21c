"""`lab bench search`: samplers compared over many seeds of replayed studies.

Each (sampler, seed) is one replayed study (lab.study.replay) of the benchmark table: the same
searcher, scheduler and simulated concurrency as `lab study create --backend replay:BENCH`, kept in
memory (Optuna's in-memory storage and a list of rows instead of a study folder: the comparison
keeps only its hypervolumes). The anytime hypervolume of a study at N is that of its first N trained
trials (lab.tabular.stats.anytime_hypervolume), normalized by the space's MAC budget.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import optuna
import pyarrow as pa

from lab.errors import StudyError
from lab.pareto import parse_objectives
from lab.study import replay
from lab.study.config import StudyConfig
from lab.study.runner import make_searcher, replay_trials
from lab.study.warm import warm_start
from lab.tabular.stats import anytime_hypervolume, mean_interval
from lab.tabular.table import load_bench


class MemoryStore:
    """The part of StudyStore a searcher writes to, kept in memory."""

    def __init__(self) -> None:
        self.rows: dict[int, dict] = {}

    def write_trial(self, row: dict) -> None:
        self.rows[row["number"]] = dict(row)

    def write_epochs(self, number: int, rows: list[dict]) -> None:
        pass

    def trials(self) -> pa.Table:
        return pa.Table.from_pylist(list(self.rows.values()))


def replay_rows(bench: str, sampler: str, seed: int, trials: int, scheduler: str = "asha",
                concurrency: int = 2) -> list[dict]:
    """The trial rows of one replayed study of `bench` (in memory), `trials` trained trials long."""
    table = load_bench(bench)
    config = StudyConfig(name=f"{sampler.replace('+', '-')}-s{seed}", backend=f"{replay.BACKEND_PREFIX}{bench}",
                         sampler=sampler, seed=seed, trials=trials, scheduler=scheduler, concurrency=concurrency,
                         **replay.replay_defaults(table))
    space, info = replay.prepared(config, table)
    objectives = parse_objectives(config.objectives)
    store = MemoryStore()
    clock = replay.SimClock()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = make_searcher(config, space, info, store,  # type: ignore[arg-type]  # a MemoryStore stands in
                             optuna.storages.InMemoryStorage(), objectives, table, clock)
    warm_start(searcher, config, table, info)
    replay_trials(config, searcher, table, objectives, trials, clock)
    return sorted(store.rows.values(), key=lambda r: r["number"])


def _run_one(job: tuple) -> tuple[str, int, dict[int, float | None]]:
    bench, sampler, seed, trials, at, scheduler, concurrency, max_macs = job
    rows = replay_rows(bench, sampler, seed, trials, scheduler, concurrency)
    return sampler, seed, anytime_hypervolume(rows, at, max_macs)


@dataclass
class Comparison:
    """Every (sampler, seed) study's anytime hypervolume, and their summary per sampler."""
    bench: str
    samplers: list[str]
    seeds: int
    at: list[int]
    level: float
    runs: list[dict]          # {"sampler", "seed", "trials", "hypervolume"}
    wall_seconds: float

    def summary(self) -> list[dict]:
        """Per sampler and N: the mean hypervolume over seeds and its interval (Student t at `level`)."""
        out = []
        for sampler in self.samplers:
            for n in self.at:
                values = [r["hypervolume"] for r in self.runs if r["sampler"] == sampler and r["trials"] == n
                          and r["hypervolume"] is not None]
                mean, lo, hi = mean_interval(values, self.level) if values else (None, None, None)
                out.append({"sampler": sampler, "trials": n, "mean": mean, "lo": lo, "hi": hi, "seeds": len(values)})
        return out

    def to_dict(self) -> dict:
        return {"bench": self.bench, "samplers": self.samplers, "seeds": self.seeds, "at": self.at, "level": self.level,
                "wall_seconds": self.wall_seconds, "summary": self.summary()}


def compare_samplers(bench: str, samplers: list[str], seeds: int = 30, trials: int = 80, at: list[int] | None = None,
                     scheduler: str = "asha", concurrency: int = 2, workers: int | None = None,
                     level: float = 0.95) -> Comparison:
    """Replay `seeds` studies (seeds 0, 1, ...) of each sampler on `bench` and collect their anytime hypervolumes."""
    import time

    at = sorted(at or [10, 20, 40, 80])
    table = load_bench(bench)
    for sampler in samplers:   # a bad sampler is one line before any process starts
        StudyConfig(name="check", sampler=sampler, trials=trials, **replay.replay_defaults(table))
    space = replay.prepared(StudyConfig(name="check", backend=f"{replay.BACKEND_PREFIX}{bench}",
                                        **replay.replay_defaults(table)), table)[0]
    if space.max_macs is None:
        raise StudyError(f"benchmark {bench}: its space has no max_macs budget, which the hypervolume's reference needs")
    jobs = [(bench, s, seed, trials, at, scheduler, concurrency, space.max_macs) for s in samplers for seed in range(seeds)]
    start = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        results = [_run_one(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_run_one, jobs, chunksize=max(1, len(jobs) // (workers * 4))))
    runs = [{"sampler": s, "seed": seed, "trials": n, "hypervolume": hv}
            for s, seed, hvs in results for n, hv in sorted(hvs.items())]
    return Comparison(bench, samplers, seeds, at, level, runs, time.perf_counter() - start)
