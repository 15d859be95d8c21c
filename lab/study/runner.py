"""Run a study: the driver loads the dataset once, binds LabSearch to the persistent Optuna study,
and lets Ray Tune run `lab.train.run.train` trials (locally or on a cluster) until the budget is met.

    folder = create(StudyConfig(name="demo", trials=4))   # or resume("demo")
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import torch
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from lab import __version__
from lab.data import Dataset, load_dataset
from lab.errors import LabError, StudyError, StudyInterrupted, TrainError, first_line
from lab.files import NO_SPACE_TEXT, LockHeld, hold_lock, is_no_space
from lab.grammar import Spec, parse
from lab.memory import check_fits
from lab.pareto import parse_objectives
from lab.study import replay
from lab.study.cluster import check_address, connected
from lab.study.config import StudyConfig, find_study, studies_root
from lab.study.fidelity import SizeFidelity, ladder
from lab.study.grid import ScalingGrid
from lab.study.packing import AUTO, gpu_check, packing_for, placement, worker_device
from lab.study.progress import Progress, View
from lab.study.scheduler import ParetoASHA, SizeASHA
from lab.study.search import LabSearch, counted, now, trial_memory
from lab.study.space import SearchSpace, load_space
from lab.study.store import StudyStore
from lab.study.teachers import teacher_checkpoint
from lab.study.warm import warm_start
from lab.study.weights import keeper_for, save_trial, worker_settings
from lab.train.loggers import make_logger
from lab.train.loggers import require as require_logger
from lab.train.proxies import columns as proxy_columns
from lab.train.proxies import score_point
from lab.train.recipes import recipe
from lab.train.run import train

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

TRIAL_RESULT_KEYS = ("val_top1", "val_top5", "test_top1", "test_top5", "loss", "train_seconds",
                     "images_per_second", "peak_memory", "device", "family", "n_train", "params", "macs",
                     "epochs_done")


# the space a study of each kind samples: its YAML space, or a scaling study's grid of cells
SPACES: dict[str, Callable[[StudyConfig, Dataset], SearchSpace]] = {
    "search": lambda config, data: load_space(config.space),
    "scaling": ScalingGrid.for_study,
}


# --- the trial: runs in a Ray worker ----------------------------------------------------------

def run_trial(config: dict, data: Dataset | None = None, settings: dict | None = None) -> None:
    """One trial: train the sampled point, report every epoch and a final result."""
    assert data is not None and settings is not None  # tune.with_parameters passes both (see _tune)
    start = time.perf_counter()
    torch.set_num_threads(max(1, int(settings["cpus"])))
    number = config["number"]
    worker = f"{socket.gethostname()}/{os.getpid()}"

    proxies: dict = {}   # the zero-cost proxies ride on every report: a trial the scheduler stops keeps them

    def on_epoch(epoch: dict) -> None:   # the scheduler may stop the trial on any of these
        tune.report({"number": number, "kind": "epoch", "macs": config["macs"], "params": config["params"],
                     "worker_seconds": time.perf_counter() - start, **proxies, **epoch})

    final = {"number": number, "kind": "final", "worker": worker, **placement()}
    run = config.get("run") or {}   # a scaling cell's fraction, seed, epochs and teacher
    ladder = settings.get("ladder")   # a --target-size study's nested fractions, smallest first
    sizes: dict[str, list] = {"sizes": [], "sizes_top1": [], "sizes_seconds": []}
    try:
        epochs = run.get("epochs", settings["epochs"])
        hparams = {k: v for k, v in config["hparams"].items() if k not in ("epochs", "batch_size")}
        rec = recipe(settings["recipe"], batch_size=settings["batch_size"], epochs=epochs, **hparams)
        seed = run.get("seed", settings["seed"])
        if "fraction" in run:
            data = data.with_fraction(run["fraction"], seed)
        teacher = None
        if "teacher" in run:   # trained (or found) first, at this cell's data, seed and epochs
            teacher_recipe = recipe(settings["recipe"], batch_size=settings["batch_size"], epochs=epochs,
                                    **run["teacher"]["recipe"])
            teacher = teacher_checkpoint(settings["teachers"], run["teacher"], data, teacher_recipe, seed,
                                         settings["device"])
        proxies.update(_proxies(config["text"], data, seed))   # before training, whose random numbers it leaves alone
        final.update(proxies)
        if ladder:
            def on_size(rung: int, record: dict) -> None:   # the scheduler may stop the trial on any of these
                final.update(sizes, fraction=record["fraction"])
                tune.report({"number": number, "kind": "size", "rung": rung, "macs": config["macs"],
                             "params": config["params"], "worker_seconds": time.perf_counter() - start, **proxies, **sizes,
                             **{k: v for k, v in record.items() if v is not None}})

            result = _climb(config["text"], data, rec, seed, settings["device"], ladder, sizes, on_epoch, on_size,
                            logger=functools.partial(_trial_logger, settings, number), speed=settings.get("speed"))
            final.update(sizes, fraction=ladder[-1])
        else:
            result = train(config["text"], data, recipe=rec, seed=seed, device=settings["device"], out=None,
                           distill_from=teacher, on_epoch=on_epoch, logger=_trial_logger(settings, number),
                           **(settings.get("speed") or {}))
        final.update({k: result.record.get(k) for k in TRIAL_RESULT_KEYS}, state="complete")
        if settings.get("weights") and result.model is not None:   # the driver keeps or deletes them (lab.study.weights)
            final.update(save_trial(settings["weights"], number, result.model, result.record, data))
    except TrainError as e:   # diverged (the record comes along) or a bad recipe
        record = getattr(e, "record", None) or {}
        final.update({k: record.get(k) for k in TRIAL_RESULT_KEYS}, state="failed", error=str(e))
    except Exception as e:
        final.update(state="failed", error=f"{type(e).__name__}: {e}")
    final["worker_seconds"] = time.perf_counter() - start
    final["ended"] = time.time()
    tune.report({k: v for k, v in final.items() if v is not None})


def _climb(text: str, data: Dataset, rec, seed: int, device: str, ladder: list[float], sizes: dict[str, list],
           on_epoch: Callable[[dict], None], on_size: Callable[[int, dict], None],
           logger: Callable[[str], Logger | None] | None = None, speed: dict | None = None):
    """A --target-size trial: `text` trained from scratch on each nested fraction of `ladder` in turn,
    each size's n_train, val top-1 and training seconds appended to `sizes`; every size but the last
    is reported (`on_size`, with the size's record), the last one's result is returned. `logger(suffix)`
    makes each size's --logger run (suffix -nN_TRAIN); `speed` holds train()'s precision, compile, channels_last."""
    result = None
    for rung, fraction in enumerate(ladder, 1):
        part = data.with_fraction(fraction, seed)
        size = {"n_train": part.n_train, "fraction": fraction}
        result = train(text, part, recipe=rec, seed=seed, device=device, out=None,
                       on_epoch=functools.partial(_with_size, on_epoch, size),
                       logger=logger(f"-n{part.n_train}") if logger is not None else None, **(speed or {}))
        record = result.record
        for key, value in zip(sizes, (part.n_train, record.get("val_top1"), record.get("train_seconds"))):
            sizes[key].append(value)
        if rung < len(ladder):
            on_size(rung, {**{k: record.get(k) for k in TRIAL_RESULT_KEYS}, **size})
    return result


def _trial_logger(settings: dict, number: int, suffix: str = "") -> Logger | None:
    """The trial's --logger run (None without one): trial-NNNNNN in STUDY/logs, in the study's MLflow
    experiment, W&B project and group."""
    if not settings.get("logger"):
        return None
    return make_logger(settings["logger"], settings["logs"], settings["study"], f"trial-{number:06d}{suffix}",
                       group=settings["study"])


def _with_size(on_epoch: Callable[[dict], None], size: dict, epoch: dict) -> None:
    on_epoch({**epoch, **size})   # a ladder's epochs say which size they belong to


def _proxies(text: str, data: Dataset, seed: int) -> dict:
    """The trial's zero-cost proxy columns (lab.train.proxies); none when they cannot be computed: a
    proxy is a record of the point, never a reason for its trial to fail."""
    try:
        return proxy_columns(score_point(parse(text), data, seed))
    except Exception:
        return {}


# --- the driver -------------------------------------------------------------------------------

DRIVER_LOCK = ".driver.lock"   # held by the one driver of a study (create or resume) for its whole run


def folder_of(name: str, root: str | Path | None = None) -> Path:
    return studies_root(root) / name


@contextlib.contextmanager
def _driver(folder: Path, name: str, command: str) -> Iterator[None]:
    """This process as the study's only driver for the block; StudyError naming the holder when another
    driver runs it. A driver that died (kill -9, a crash) released its flock with its process."""
    with contextlib.ExitStack() as stack:
        try:   # only taking the lock is guarded here: the block's own errors pass through
            stack.enter_context(hold_lock(folder / DRIVER_LOCK, f"lab study {command} {name}"))
        except LockHeld as e:
            raise StudyError(f"study {name!r} is already being run by another driver: {e.holder}; wait for it to "
                             f"finish or stop it (Ctrl-C) before `lab study {command}`") from None
        except OSError as e:   # a filesystem without flock (some network mounts), a read-only folder
            raise StudyError(f"study {name!r}: cannot take its driver lock {folder / DRIVER_LOCK} "
                             f"({e.strerror or e}); run studies on a filesystem with flock (--root)") from None
        yield


def create(config: StudyConfig, root: str | Path | None = None, verbose: int = 0, view: View | None = None) -> Path:
    """Create the study `config.name` (an error if it exists) and run it to its trial budget.
    Everything that can be checked is checked before the study's folder is made (Ray joined or
    started included), and a create that fails before its first trial leaves no folder behind.
    `view` shows its progress (lab.study.progress; None: nothing is shown). `verbose` is Ray Tune's
    own console verbosity: 0, the default, sends Tune's reporter and Ray's log lines to the study's
    ray/ folder; 1 or 2 print them as Ray does (for debugging Ray itself)."""
    folder = folder_of(config.name, root)
    if (folder / "study.yaml").exists():
        raise StudyError(f"study {config.name!r} exists in {folder}: `lab study resume {config.name}` continues it")
    prepared = _prepare(config)
    existed = folder.exists()
    with _cluster(config):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StudyError(f"study {config.name!r}: cannot make its folder {folder} ({e.strerror or e})") from None
        with _driver(folder, config.name, "create"):
            if (folder / "study.yaml").exists():   # another create finished first
                raise StudyError(f"study {config.name!r} exists in {folder}: `lab study resume {config.name}` continues it")
            store = StudyStore(folder)
            try:
                _no_space_is_one_line(lambda: store.save_config(config.to_dict()), config.name, str(store.config_path))
                return _run(config, store, prepared, verbose, view)
            except BaseException as e:
                if not _discard_unstarted(store, config, existed) or not isinstance(e, NoSpace):
                    raise
                raise StudyError(f"study {config.name!r}: no space left on the device writing {e.where}; "
                                 f"nothing of the study was kept: free space and create it again") from None


def resume(name: str, root: str | Path | None = None, verbose: int = 0, trials: int | None = None,
           view: View | None = None) -> Path:
    """Continue the study `name` to its trial budget with its frozen settings; `trials` sets a new
    budget first (a search study's: more trials extend it, fewer stop it sooner). `view` and
    `verbose` as for `create`."""
    store = StudyStore(find_study(name, root))
    with _driver(store.folder, name, "resume"):
        config = StudyConfig(**store.load_config())
        if trials is not None and trials != config.trials:
            if config.kind != "search":
                raise StudyError(f"--trials: a {config.kind} study's budget is its grid ({config.trials} trials)")
            config = StudyConfig(**dict(config.to_dict(), trials=trials))
            store.save_config(config.to_dict())
        return _run(config, store, _prepare(config), verbose, view)


def _discard_unstarted(store: StudyStore, config: StudyConfig, existed: bool) -> bool:
    """After a create that failed: remove what it made unless a trial was recorded (then the study
    started, and `lab study resume` continues it). Returns whether it removed the study."""
    try:
        if store.trials().num_rows:
            return False
    except LabError:
        pass
    if config.storage:   # a study this create made in the user's own database
        with contextlib.suppress(Exception):
            optuna.delete_study(study_name=config.name, storage=config.storage)
    if not existed:
        shutil.rmtree(store.folder, ignore_errors=True)
    else:
        for name in ("study.yaml", "optuna.db", JOURNAL, "trials", "epochs", "ray", DRIVER_LOCK, ".store.lock"):
            path = store.folder / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return True


def _cluster(config: StudyConfig) -> contextlib.AbstractContextManager:
    """Ray, joined or started, for a live study; nothing for a replayed one."""
    return contextlib.nullcontext() if replay.bench_of(config) else connected(config.address, config.gpus_per_trial,
                                                                              config.device)


def _prepare(config: StudyConfig) -> tuple[list, object, object]:
    """The objectives, the space (or a scaling study's grid) and the dataset (loaded once, in the
    driver), after every check that needs no study folder: objectives, space file or archs,
    dataset, a feasible point, storage URL, Ray address. A replayed study takes the space and
    the data's description from its benchmark table (which shows the space feasible)."""
    try:
        objectives = parse_objectives(config.objectives)
    except ValueError as e:
        raise StudyError(f"--objectives: {e}") from None
    bench = replay.bench_of(config)
    if bench is not None:
        table_space, info = replay.prepared(config, bench)
        if config.storage:
            open_storage(config.storage)
        return objectives, table_space, info
    # a --target-size study's trials take their ladder's fractions from the full training split
    data = load_dataset(config.dataset, seed=config.seed, fraction=1.0 if config.target_size else config.fraction)
    if config.target_size:
        ladder(config.fraction, config.rungs, data.n_train)
    if config.logger:   # its package, before the first trial
        require_logger(config.logger)
    space = SPACES[config.kind](config, data)
    space.check_feasible(num_classes=data.num_classes, in_chans=data.in_chans, frames=data.frames)
    if config.storage:
        open_storage(config.storage)
    if config.address:
        check_address(config.address)
    return objectives, space, data


def _run(config: StudyConfig, store: StudyStore, prepared, verbose: int, view: View | None = None) -> Path:
    objectives, space, data = prepared
    optuna.logging.set_verbosity(optuna.logging.WARNING)   # "A new study created in RDB" is no news to the user
    bench = replay.bench_of(config)
    storage: optuna.storages.BaseStorage
    if config.storage or bench is None:
        storage = open_storage(config.storage, store.folder / "optuna.db")
    else:   # a replay's trials take milliseconds: SQLite's per-write commits would be most of its time
        storage = open_journal(store.folder / JOURNAL)
    clock = replay.SimClock() if bench is not None else now
    fidelity = make_fidelity(config, data, store)

    def run() -> None:
        searcher = make_searcher(config, space, data, store, storage, objectives, bench, clock, fidelity)
        searcher.reconcile()
        if bench is None:   # a replay trains nothing and keeps nothing
            keeper = keeper_for(store.folder, config, objectives, store.trials().to_pylist())
            if keeper is not None:
                searcher.listeners.append(keeper.settle)
        warm_start(searcher, config, bench, data)
        assert config.trials is not None  # StudyConfig resolves it
        rows = store.trials().to_pylist()
        remaining = config.trials - counted(rows)
        progress = _progress(config, store, objectives, rows, view, clock) if view is not None and remaining > 0 else None
        if progress is not None:   # every row, rejected points included
            searcher.listeners.append(lambda row, result: progress.finished(row))
        with _shown(progress):
            if remaining > 0 and bench is not None:
                replay_trials(config, searcher, bench, objectives, remaining, clock, progress)
            elif remaining > 0:
                with connected(config.address, config.gpus_per_trial, config.device):
                    _tune(config, searcher, data, objectives, store, remaining, verbose, fidelity, progress)
        store.compact()

    # a replay's rows are written once, at its end (StudyStore.buffered): its trials take milliseconds
    with store.buffered() if bench is not None else contextlib.nullcontext():
        _no_space_is_one_line(run, config.name, str(store.folder))
    return store.folder


def _progress(config: StudyConfig, store: StudyStore, objectives, rows: list[dict], view: View,
              clock: Callable[[], datetime]) -> Progress:
    """The progress model of this run: on the wall clock, or a replay's simulated one (no Ray logs then)."""
    assert config.trials is not None  # StudyConfig resolves it
    if isinstance(clock, replay.SimClock):
        sim = clock
        return Progress(config.trials, objectives, config.concurrency, rows, clock=lambda: sim.t, simulated=True,
                        name=config.name, view=view)
    return Progress(config.trials, objectives, config.concurrency, rows, name=config.name,
                    logs=str(store.folder / "ray"), view=view)


@contextlib.contextmanager
def _shown(progress: Progress | None) -> Iterator[None]:
    """The progress's view open for the block (closed however it ends)."""
    if progress is None or progress.view is None:
        yield
        return
    view = progress.view
    view.open(progress)
    try:
        yield
    finally:
        view.close(progress)


class _Starts:
    """A replay's searcher telling `progress` of each trial it starts (live trials: `_Started`)."""

    def __init__(self, searcher: LabSearch, progress: Progress):
        self._searcher, self._progress = searcher, progress

    def suggest(self, trial_id: str):
        config = self._searcher.suggest(trial_id)
        if isinstance(config, dict):
            self._progress.started(config["number"])
        return config

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._searcher, name)


class _Started(tune.Callback):
    """Tells `progress` of each live trial Tune starts."""

    def __init__(self, progress: Progress):
        self.progress: Progress | None = progress

    def __getstate__(self) -> dict:   # Tune pickles its run config (tuner.pkl): the progress stays here
        return {"progress": None}

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        if self.progress is not None:
            self.progress.started(trial.config["number"])


def _memory_check(config: StudyConfig, data: Dataset) -> Callable[[Spec], str | None] | None:
    """Why a point would not fit in a trial's memory (lab.memory; None when it fits), or None when the
    driver cannot know the workers' memory (then each trial's own check applies)."""
    on_gpu = gpu_check(config, data.num_classes, data.in_chans) if config.gpus_per_trial == AUTO else None
    limit, source = config.memory_limit()
    if limit is None:
        return on_gpu
    base = recipe(config.recipe, batch_size=config.batch_size, epochs=config.epochs)

    def check(spec: Spec) -> str | None:
        reason = check_fits(spec, config.batch_size, data.num_classes, data.in_chans, limit, optimizer=base.optimizer,
                            ema=base.ema > 0, limit_from=source,
                            precision="32" if config.precision == "auto" else config.precision)   # auto: fp32, the larger
        if reason is None:   # and, packed by memory, within one GPU
            return on_gpu(spec) if on_gpu is not None else None
        return f"over memory: {reason}"

    return check


def _no_space_is_one_line(step: Callable[[], object], name: str, where: str) -> None:
    """Run `step`; a full disk (or quota) anywhere in it (the store, optuna.db, Ray's files) becomes one
    StudyError saying what to do. What was recorded before stays: resume continues from it."""
    try:
        step()
    except LabError:
        raise
    except Exception as e:
        if not is_no_space(e):
            raise
        raise NoSpace(f"study {name!r}: no space left on the device writing {where}; free space, then "
                      f"`lab study resume {name}` continues it (trials recorded so far are kept)", where) from None


class NoSpace(StudyError):
    """A full disk (or quota) stopped the study while writing `where`."""

    def __init__(self, message: str, where: str):
        super().__init__(message)
        self.where = where


JOURNAL = "optuna.journal"   # a replayed study's default Optuna storage (an append-only journal file)


def open_journal(path: Path) -> optuna.storages.JournalStorage:
    """Optuna's journal storage in the file `path` (created when absent)."""
    from optuna.storages.journal import JournalFileBackend  # lazy: start-up time

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


# the missing module of a storage URL's database driver -> what to install and the URL that names it
DRIVERS = {"psycopg2": ("psycopg2-binary", "postgresql+psycopg2://USER:PASSWORD@HOST/DB"),
           "psycopg": ('"psycopg[binary]"', "postgresql+psycopg://USER:PASSWORD@HOST/DB"),
           "MySQLdb": ("PyMySQL", "mysql+pymysql://USER:PASSWORD@HOST/DB"),
           "pymysql": ("PyMySQL", "mysql+pymysql://USER:PASSWORD@HOST/DB")}


def open_storage(url: str | None, default: Path | None = None) -> optuna.storages.RDBStorage:
    """The study's Optuna storage: `url` (the user's --storage), else the SQLite file `default` in the
    study folder; StudyError naming which, and why it cannot be opened."""
    what = f"--storage {url}" if url else f"the study's Optuna database {default}"
    target = url or f"sqlite:///{default}"
    try:
        return optuna.storages.RDBStorage(target)
    except ImportError as e:   # Optuna wraps SQLAlchemy's ModuleNotFoundError of the dialect's driver
        missing = next((c.name for c in (e, e.__cause__, e.__context__) if isinstance(c, ModuleNotFoundError)), None)
        dialect = target.split(":", 1)[0].split("+", 1)[0]
        package, form = DRIVERS.get(missing or "", (missing or "the driver", f"{dialect}+DRIVER://..."))
        raise StudyError(f"{what}: its database driver is not installed (no module {missing or '?'}): "
                         f"`pip install {package}`, with the URL {form}") from None
    except Exception as e:
        if is_no_space(e):
            raise StudyError(f"{what}: no space left on the device to create it; free space and retry") from None
        first = first_line(e)
        raise StudyError(f"{what}: cannot open it ({type(e).__name__}: {first})") from None


def make_fidelity(config: StudyConfig, data, store: StudyStore) -> SizeFidelity | None:
    """A --target-size study's ladder and predictions (None for other studies); the trials it already
    holds (a resumed study) pool the noise from the start."""
    if not config.target_size:
        return None
    fidelity = SizeFidelity(config.target_size, ladder(config.fraction, config.rungs, data.n_train))
    for row in store.trials().to_pylist():
        if row.get("sizes"):
            fidelity.observe(row["number"], row["sizes"], row["sizes_top1"])
    return fidelity


def make_scheduler(config: StudyConfig, objectives: list[tuple[str, str]],
                   fidelity: SizeFidelity | None = None) -> FIFOScheduler:
    """The study's trial scheduler: Pareto-rank ASHA (rungs at epochs 1, 3, 9, ...; over data sizes for a
    --target-size study) or FIFO (train every trial fully)."""
    if config.scheduler == "asha" and fidelity is not None:
        return SizeASHA(objectives, fidelity, reduction_factor=3)
    if config.scheduler == "asha":
        return ParetoASHA(objectives, config.epochs, grace_period=1, reduction_factor=3)
    return FIFOScheduler()


def make_searcher(config: StudyConfig, space, data, store: StudyStore, storage: optuna.storages.BaseStorage,
                  objectives: list[tuple[str, str]], bench, clock: Callable[[], datetime],
                  fidelity: SizeFidelity | None = None) -> LabSearch:
    """The study's searcher over `storage`, writing to `store`: its sampler, its rows' shared columns, and
    (live only: a replay trains nothing) the memory check of sampled points."""
    base_row = {"dataset": data.name, "fraction": data.fraction, "n_train": data.n_train, "epochs": config.epochs,
                "recipe": config.recipe, "seed": config.seed, "lab_version": __version__}
    if fidelity is not None:   # a trial's size is the largest it reached (from its results); its ladder's top by default
        base_row.update(fraction=fidelity.fractions[-1], n_train=None, target_size=fidelity.target)
    assert config.trials is not None  # StudyConfig resolves it
    base = recipe(config.recipe, batch_size=config.batch_size, epochs=config.epochs)
    memory = trial_memory(config.batch_size, data.num_classes, data.in_chans, optimizer=base.optimizer, ema=base.ema > 0,
                          precision="32" if config.precision == "auto" else config.precision)   # auto: fp32, the larger
    return LabSearch(space, store, objectives, space.sampler(config.base_sampler, config.seed, config.trials),
                     config.name, storage, base_row, data.num_classes, data.in_chans, config.res,
                     fits=None if bench is not None else _memory_check(config, data), clock=clock, fidelity=fidelity,
                     memory=memory)


def replay_trials(config: StudyConfig, searcher: LabSearch, bench, objectives, remaining: int, clock,
                  progress: Progress | None = None) -> None:
    """The trials of a replayed study, from its benchmark table in simulated time (lab.study.replay)."""
    traces = replay.traces(bench, config.epochs)
    try:
        replay.simulate(searcher if progress is None else _Starts(searcher, progress), make_scheduler(config, objectives),
                        remaining, config.concurrency, traces, clock)
    except KeyboardInterrupt:
        n = searcher.interrupt()
        raise StudyInterrupted(f"study {config.name!r} interrupted; {n} running trial(s) settled as interrupted "
                               f"(not counted): `lab study resume {config.name}` continues it") from None
    if searcher.fatal is not None:
        raise searcher.fatal


def _tune(config: StudyConfig, searcher: LabSearch, data, objectives, store, remaining: int, verbose: int,
          fidelity: SizeFidelity | None = None, progress: Progress | None = None) -> None:
    # failed trials report no accuracy, epochs report no test accuracy: LabSearch reads what each
    # result has, so Tune must not insist that every result carries every objective
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Ctrl-C is the lab's to handle (Tune's handler would stop, save its own state and say
    # `Tuner.restore`): it reaches fit() as KeyboardInterrupt, and SIGTERM is made the same
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if config.logger:   # the trials log themselves (STUDY/logs): no second copy from Tune's CSV, JSON, TensorBoard loggers
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    scheduler = make_scheduler(config, objectives, fidelity)
    settings = {"recipe": config.recipe, "epochs": config.epochs, "batch_size": config.batch_size,
                "seed": config.seed, "device": worker_device(config),
                "cpus": config.cpus_per_trial, "teachers": str(store.folder / "teachers"),
                "ladder": fidelity.fractions if fidelity is not None else None,
                "logger": config.logger, "logs": str(store.folder / "logs"), "study": config.name,
                "weights": worker_settings(store.folder, config),
                "speed": {"precision": config.precision, "compile": config.compile, "channels_last": config.channels_last}}
    # --gpus-per-trial auto: each trial's GPU fraction from its predicted memory (lab.study.packing)
    packing = packing_for(config, data.num_classes, data.in_chans) if config.gpus_per_trial == AUTO else None
    if config.gpus_per_trial == AUTO and packing is None:
        raise StudyError("--gpus-per-trial auto: the GPUs' memory is not known (Ray is not connected); give --gpu-memory")
    trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, settings=settings),
                                    packing or {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=config.concurrency),
                                    scheduler=scheduler, num_samples=remaining, reuse_actors=True),
        run_config=tune.RunConfig(name=f"run-{datetime.now():%Y%m%d-%H%M%S}", storage_path=str(store.folder / "ray"),
                                  verbose=verbose, log_to_file=True, stop=searcher.stopper(),
                                  callbacks=[_Started(progress)] if progress is not None else None),
    )
    # Tune silent (verbose 0): its reporter prints nothing, and Ray's log lines go to the study's ray/ folder
    logs = store.folder / "ray" / RAY_LOG if verbose == 0 else None
    with _sigterm_as_interrupt(), _ray_quieted(logs) as ray_noise, _tune_silent(verbose == 0):
        try:
            tuner.fit()
            if searcher.fatal is not None:   # recording failed: Tune was stopped (see LabSearch.fatal)
                raise searcher.fatal
        except KeyboardInterrupt:
            n = searcher.interrupt()
            raise StudyInterrupted(f"study {config.name!r} interrupted; {n} running trial(s) settled as interrupted "
                                   f"(not counted): `lab study resume {config.name}` continues it") from None
    if ray_noise.dropped:
        print(f"lab: warning: Ray could not write its trial logs under {store.folder / 'ray'} ({ray_noise.dropped} "
              f"times: no space left on the device); the study's own tables are complete", file=sys.stderr)


# Ray's loggers whose records the driver condenses: its writers of trial logs and experiment state (a
# traceback per failed write on a full disk) and Tune's reports of trial errors (a traceback per trial)
_RAY_LOGGERS = ("ray.train._internal.syncer", "ray.train._internal.storage", "ray.tune.execution.tune_controller",
                "ray.tune.execution.experiment_state", "ray.tune.logger", "ray.tune.utils.callback", "ray.tune.tune")


class _RayNoise(logging.Filter):
    """Drops Ray's records about a full disk (counted: the study reports a full disk once, itself) and
    turns its trial-error tracebacks into one line (the trial's row keeps the reason)."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        error = record.exc_info[1] if record.exc_info else None
        if is_no_space(error) or any(words in text for words in NO_SPACE_TEXT):
            self.dropped += 1
            return False
        if text.startswith("Trials did not complete"):
            return False   # the summary counts failed trials
        if text.startswith("Trial task failed for trial"):
            what = type(error).__name__ if error is not None else "an error"
            print(f"lab: warning: a trial failed in its worker ({what}); it is recorded as failed and the study "
                  f"goes on", file=sys.stderr)
            return False
        return True


@contextlib.contextmanager
def _tune_silent(silent: bool) -> Iterator[None]:
    """Tune's legacy output engine for the block when `silent`: its new one prints the experiment's
    configuration box, its folder and a TensorBoard hint even at verbose=0; the legacy one prints
    nothing at verbose=0 (its reporter reports only from verbosity 1)."""
    previous = os.environ.get("RAY_AIR_NEW_OUTPUT")
    if silent:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if silent and previous is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        elif silent and previous is not None:
            os.environ["RAY_AIR_NEW_OUTPUT"] = previous


RAY_LOG = "driver.log"   # Ray's driver-side log lines of a study (in its ray/ folder), instead of the terminal


class _LogFile(logging.FileHandler):
    """Ray's records in a file, made at its first record; a record it cannot write (a full disk) is
    dropped without logging's traceback on stderr."""

    def __init__(self, path: Path):
        super().__init__(path, delay=True, encoding="utf-8")
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def _to_terminal(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


@contextlib.contextmanager
def _ray_quieted(log: Path | None = None) -> Iterator[_RayNoise]:
    """Ray's records condensed (`_RayNoise`) for the block, and with `log` every Ray logger that writes
    to the terminal (the `ray` logger, which Tune's and Ray's modules propagate to) writes to `log`
    instead: Tune's notices (a slow operation "may be a performance bottleneck", token authentication,
    where its results are) stay with the study."""
    quiet = _RayNoise()
    loggers = [logging.getLogger(name) for name in _RAY_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    swapped: list[tuple[logging.Logger, list[logging.Handler]]] = []   # each logger with its handlers as they were
    handler = None
    if log is not None:
        with contextlib.suppress(OSError):   # a folder it cannot make: the handler drops what it cannot write
            log.parent.mkdir(parents=True, exist_ok=True)
        handler = _LogFile(log)
        handler.addFilter(quiet)   # full-disk records of any Ray logger are counted, not written
        names = ["ray", *(n for n in list(logging.root.manager.loggerDict) if n.startswith("ray."))]
        for logger in (logging.getLogger(n) for n in names):
            terminal = [h for h in logger.handlers if _to_terminal(h)]
            if terminal or logger.name == "ray":   # the top one always: without a handler, Python's last resort prints
                swapped.append((logger, list(logger.handlers)))
                for h in terminal:
                    logger.removeHandler(h)
                logger.addHandler(handler)
    ray_logger = logging.getLogger("ray")
    propagates = ray_logger.propagate
    if log is not None:   # nothing reaches the root logger's handlers (or the last resort's stderr) either
        ray_logger.propagate = False
    try:
        yield quiet
    finally:
        ray_logger.propagate = propagates
        for logger in loggers:
            logger.removeFilter(quiet)
        for logger, handlers in swapped:
            logger.handlers[:] = handlers
        if handler is not None:
            handler.close()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's or `kill`'s stop) handled as Ctrl-C for the block, in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
