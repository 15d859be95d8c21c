"""The replay backend: a study whose trials are not trained but read from a benchmark table
(lab.tabular.table), in simulated time.

`lab study create --backend replay:BENCH` runs the same searcher (LabSearch: the sampler, the cost
model's rejections, duplicates), the same scheduler (Pareto-rank ASHA) and the same store as a live
study. Only the trainer changes: a trial's epochs come from the table when the point was trained
there (its recorded curve, seconds and proxies), else from the table's surrogate (its predicted
curve and seconds; test accuracy and proxies unknown). A discrete-event loop stands in for Ray Tune:
`concurrency` trials run at once, each reports its epochs at the simulated times its recorded (or
predicted) seconds give, the scheduler decides at every epoch as it would live, and a free slot
asks the searcher for the next point. Rows are stamped with the simulated clock.

Simulated time of a trial started at t: epoch e reports at t + LAUNCH_SECONDS + worker_seconds *
seconds[e] / train_seconds (the worker's set-up and evaluation spread over its epochs in proportion),
the final result at t + LAUNCH_SECONDS + worker_seconds.
"""

from __future__ import annotations

import heapq
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from lab.errors import StudyError
from lab.study.config import StudyConfig
from lab.study.space import Space
from lab.tabular.table import Bench, BenchError, load_bench

BACKEND_PREFIX = "replay:"
LAUNCH_SECONDS = 0.45   # Ray's actor start, scheduling and reporting per trial: the median measured (BENCHMARKS.md, issue 5)
# what a replay predicts new points with: lab.tabular.surrogate.DEFAULT_MODEL, the best measured
# (named here: importing that module imports scikit-learn, which a study only needs once it predicts)
SURROGATE = "gp"
# the study settings a replay must share with the table's training: its rows are only valid under them
MATCHED = ("dataset", "fraction", "epochs", "recipe", "batch_size")


def bench_of(config: StudyConfig) -> Bench | None:
    """The benchmark table a study replays, or None for a live study (backend "ray")."""
    return bench_of_name(config.backend) if config.backend.startswith(BACKEND_PREFIX) else None


def bench_of_name(backend: str) -> Bench:
    """The table of backend "replay:BENCH" (BenchError, naming --backend, when it cannot be read)."""
    try:
        return load_bench(backend[len(BACKEND_PREFIX):])
    except BenchError as e:
        raise BenchError(f"--backend {backend}: {e}") from None


@dataclass(frozen=True)
class DataInfo:
    """What a replayed study needs of its dataset (the table's): no images are loaded."""
    name: str
    fraction: float
    n_train: int
    num_classes: int
    in_chans: int
    frames: int = 1


def check_config(config: StudyConfig, bench: Bench) -> None:
    """StudyError naming the first setting in which the study and the table's training differ."""
    if config.kind != "search":
        raise StudyError(f"--backend {config.backend}: only a search study can be replayed (not {config.kind})")
    settings = bench.meta["settings"]
    space = bench.meta["space"]["name"]
    if config.space != space:
        raise StudyError(f"--backend {config.backend}: the table was built on space {space!r}, the study samples "
                         f"{config.space!r} (--space {space})")
    for name in MATCHED:
        if getattr(config, name) != settings[name]:
            raise StudyError(f"--backend {config.backend}: the table was trained with {name} = {settings[name]!r}, the "
                             f"study asks for {getattr(config, name)!r} (--{name.replace('_', '-')} {settings[name]})")
    res = settings.get("res")
    if config.res not in (None, res):
        raise StudyError(f"--backend {config.backend}: the table was trained at res {res!r}, the study asks for "
                         f"{config.res!r} (--res {res})")


def replay_defaults(bench: Bench) -> dict:
    """The study settings a replay of `bench` takes when not given: those of the table's training."""
    settings = bench.meta["settings"]
    return {"space": bench.meta["space"]["name"], **{name: settings[name] for name in MATCHED}}


def prepared(config: StudyConfig, bench: Bench) -> tuple[Space, DataInfo]:
    """The space the table was built on (its frozen definition) and the table's data, for a replayed study."""
    check_config(config, bench)
    space = Space.from_dict(bench.meta["space"]["definition"], where=f"benchmark {bench.source}")
    data = bench.meta["data"]
    info = DataInfo(name=data["name"], fraction=data["fraction"], n_train=data["n_train"],
                    num_classes=data["num_classes"], in_chans=data["in_chans"], frames=data.get("frames", 1))
    return space, info


# --- traces: what one trial reports ----------------------------------------------------------

@dataclass
class Trace:
    """One replayed trial: its epoch results and final result, with their simulated offsets (seconds).
    A pruned row's trace holds its recorded epochs only, and `more` gives the whole trace (the rest
    predicted) should the scheduler let the trial go past them."""
    epochs: list[dict]
    offsets: list[float]
    final: dict
    end: float
    more: Callable[[], Trace] | None = None
    carried: dict = field(default_factory=dict)   # what every result of the trial carries (its proxies)


class Traces:
    """The trace of any point of the table's space: recorded (exact point) or predicted (surrogate)."""

    def __init__(self, bench: Bench, epochs: int, surrogate: str = SURROGATE):
        self.bench, self.epochs, self.model = bench, epochs, surrogate
        self._surrogate = None
        rows = [r for r in bench.rows() if r["state"] == "complete" and r["train_seconds"]]
        ratios = [r["worker_seconds"] / r["train_seconds"] for r in rows if r["worker_seconds"]]
        self.overhead = statistics.median(ratios) if ratios else 1.0   # worker seconds per training second

    def surrogate(self):
        if self._surrogate is None:   # fitted on first need (a replay of the table's own points needs none)
            from lab.tabular.surrogate import fit_surrogate  # lazy: start-up time (scikit-learn)

            self._surrogate = fit_surrogate(self.bench.table, model=self.model)
        return self._surrogate

    def __call__(self, config: dict) -> Trace:
        row = self.bench.lookup(config["text"], config["key"])
        if row is None or not row["epochs_done"]:
            return self._predicted(config, None)
        trace = self._recorded(config, row)
        if row["epochs_done"] < self.epochs:
            trace.more = lambda: self._predicted(config, row)
        return trace

    def _recorded(self, config: dict, row: dict) -> Trace:
        epochs = [{"epoch": e + 1, "loss": row["curve_loss"][e], "val_top1": row["curve_val_top1"][e],
                   "seconds": row["curve_seconds"][e]} for e in range(min(self.epochs, row["epochs_done"]))]
        final = {k: row.get(k) for k in ("val_top1", "val_top5", "test_top1", "test_top5", "loss", "train_seconds",
                                          "images_per_second", "peak_memory", "family", "worker_seconds")}
        final.update({k: v for k, v in row.items() if k.startswith("zc_")})
        final.update(epochs_done=self.epochs, worker=f"{BACKEND_PREFIX}{self.bench.name}/table")
        trace = self._trace(config, epochs, final, row["worker_seconds"] or row["train_seconds"] * self.overhead,
                            row["train_seconds"])
        trace.carried = {k: v for k, v in row.items() if k.startswith("zc_")}
        return trace

    def _predicted(self, config: dict, row: dict | None) -> Trace:
        values = json.loads(config["key"])["vars"]
        curves = self.surrogate().predict([values], [config["params"]], [config["macs"]], self.epochs)
        val, loss, seconds = curves.val_top1[0], curves.loss[0], curves.seconds[0]
        if row is not None:   # a pruned row of the table: its recorded epochs, then the prediction
            k = row["epochs_done"]
            val = np.concatenate([row["curve_val_top1"], val[k:]])
            loss = np.concatenate([row["curve_loss"], loss[k:]])
            shift = row["curve_seconds"][-1] - seconds[k - 1] if k else 0.0
            seconds = np.concatenate([row["curve_seconds"], seconds[k:] + shift])
        epochs = [{"epoch": e + 1, "loss": float(loss[e]), "val_top1": float(val[e]), "seconds": float(seconds[e])}
                  for e in range(self.epochs)]
        train_seconds = float(seconds[-1])
        final = {"val_top1": float(val[-1]), "loss": float(loss[-1]), "train_seconds": train_seconds,
                 "images_per_second": self.bench.meta["data"]["n_train"] * self.epochs / train_seconds,
                 "epochs_done": self.epochs, "worker": f"{BACKEND_PREFIX}{self.bench.name}/surrogate"}
        worker_seconds = train_seconds * self.overhead
        final["worker_seconds"] = worker_seconds
        return self._trace(config, epochs, final, worker_seconds, train_seconds)

    def _trace(self, config: dict, epochs: list[dict], final: dict, worker_seconds: float, train_seconds: float) -> Trace:
        scale = worker_seconds / train_seconds if train_seconds else 1.0
        offsets = [LAUNCH_SECONDS + e["seconds"] * scale for e in epochs]
        end = LAUNCH_SECONDS + worker_seconds
        final.update(number=config["number"], kind="final", state="complete", device="replay",
                     n_train=self.bench.meta["data"]["n_train"], params=config["params"], macs=config["macs"])
        return Trace(epochs, offsets, final, max(end, offsets[-1]))


_TRACES: dict[tuple[str, int], Traces] = {}


def traces(bench: Bench, epochs: int) -> Traces:
    """The traces of `bench` at `epochs`, kept per process: its surrogate is fitted once however many studies replay it."""
    key = (bench.source, epochs)
    if key not in _TRACES or _TRACES[key].bench is not bench:
        _TRACES[key] = Traces(bench, epochs)
    return _TRACES[key]


# --- the event loop ------------------------------------------------------------------------

class SimClock:
    """A clock that starts at the wall time of its creation and advances only when told."""

    def __init__(self) -> None:
        self.start = datetime.now().astimezone()
        self.t = 0.0

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=self.t)


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    run: _Running = field(compare=False)


@dataclass
class _Running:
    trial_id: str
    config: dict
    trace: Trace
    start: float
    next: int = 0


def simulate(searcher, scheduler, remaining: int, concurrency: int, traces: Callable[[dict], Trace],
             clock: SimClock) -> int:
    """Run up to `remaining` trials, `concurrency` at a time, as Tune would: the scheduler sees every epoch
    result (and may stop the trial), the searcher every result and each trial's end. Returns trials run."""
    events: list[_Event] = []
    seq = launched = running = 0
    finished = False

    def push(at: float, run: _Running) -> None:
        nonlocal seq
        heapq.heappush(events, _Event(at, seq, run))
        seq += 1

    while True:
        while not finished and running < concurrency and launched < remaining:
            trial_id = f"replay_{launched:05d}"
            config = searcher.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                finished = True
                break
            run = _Running(trial_id, config, traces(config), clock.t)
            push(run.start + run.trace.offsets[0], run)
            launched += 1
            running += 1
        if not events:
            break
        event = heapq.heappop(events)
        clock.t, run = event.time, event.run
        if run.next < len(run.trace.epochs):
            result = {"number": run.config["number"], "kind": "epoch", "macs": run.config["macs"],
                      "params": run.config["params"], "worker_seconds": clock.t - run.start,
                      "training_iteration": run.next + 1, **run.trace.carried, **run.trace.epochs[run.next]}
            run.next += 1
            if scheduler.on_trial_result(None, run, result) == TrialScheduler.STOP:
                searcher.on_trial_complete(run.trial_id, result)   # Tune hands the stopping result to this only
                running -= 1
                continue
            searcher.on_trial_result(run.trial_id, result)
            if run.next == len(run.trace.epochs) and run.trace.more is not None:   # past a pruned row's epochs
                run.trace = run.trace.more()
            more = run.next < len(run.trace.epochs)
            push(run.start + (run.trace.offsets[run.next] if more else run.trace.end), run)
        else:
            final = dict(run.trace.final, training_iteration=len(run.trace.epochs) + 1)
            scheduler.on_trial_result(None, run, final)
            searcher.on_trial_result(run.trial_id, final)
            searcher.on_trial_complete(run.trial_id, final)
            running -= 1
        if getattr(searcher, "fatal", None) is not None:
            break
    return launched
