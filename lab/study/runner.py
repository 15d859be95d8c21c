"""Run a study: the driver loads the dataset once, binds LabSearch to the persistent Optuna study,
and lets Ray Tune run `lab.train.run.train` trials (locally or on a cluster) until the budget is met.

    folder = create(StudyConfig(name="demo", trials=4))   # or resume("demo")
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import optuna
import ray
import torch
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from lab import __version__
from lab.data import Dataset, load_dataset
from lab.errors import StudyError, TrainError
from lab.pareto import parse_objectives
from lab.study.config import StudyConfig, find_study, studies_root
from lab.study.grid import ScalingGrid
from lab.study.scheduler import ParetoASHA
from lab.study.search import LabSearch, counted, reconcile
from lab.study.space import SearchSpace, load_space
from lab.study.store import StudyStore
from lab.study.teachers import teacher_checkpoint
from lab.train.recipes import recipe
from lab.train.run import train

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

    def on_epoch(epoch: dict) -> None:   # the scheduler may stop the trial on any of these
        tune.report({"number": number, "kind": "epoch", "macs": config["macs"], "params": config["params"],
                     "worker_seconds": time.perf_counter() - start, **epoch})

    final = {"number": number, "kind": "final", "worker": worker}
    run = config.get("run") or {}   # a scaling cell's fraction, seed, epochs and teacher
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
        result = train(config["text"], data, recipe=rec, seed=seed, device=settings["device"], out=None,
                       distill_from=teacher, on_epoch=on_epoch)
        final.update({k: result.record.get(k) for k in TRIAL_RESULT_KEYS}, state="complete")
    except TrainError as e:   # diverged (the record comes along) or a bad recipe
        record = getattr(e, "record", None) or {}
        final.update({k: record.get(k) for k in TRIAL_RESULT_KEYS}, state="failed", error=str(e))
    except Exception as e:
        final.update(state="failed", error=f"{type(e).__name__}: {e}")
    final["worker_seconds"] = time.perf_counter() - start
    tune.report({k: v for k, v in final.items() if v is not None})


# --- the driver -------------------------------------------------------------------------------

def _open_storage(url: str):
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0]
        raise StudyError(f"--storage {url}: cannot open it ({type(e).__name__}: {first})") from None


def _check_address(address: str) -> None:
    """Fail fast on an unreachable Ray address instead of Ray's long retry loop."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
            pass
    except (OSError, ValueError) as e:
        raise StudyError(f"--address {address}: no Ray head answers there ({e})") from None


def start_ray(address: str | None = None) -> bool:
    """Connect to the Ray cluster at `address`, or start Ray on this machine, unless this process is
    connected already (a notebook's own Ray, or one a test worker shares among its studies: a study
    then runs on it and leaves it running). Returns whether it was started here."""
    if ray.is_initialized():
        return False
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
    if address:
        _check_address(address)
        ray.init(address=address, runtime_env=env, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env=env)
    return True


def folder_of(name: str, root: str | Path | None = None) -> Path:
    return studies_root(root) / name


def create(config: StudyConfig, root: str | Path | None = None, verbose: int = 1) -> Path:
    """Create the study `config.name` (an error if it exists) and run it to its trial budget.
    Everything that can be checked is checked before the study's folder is made."""
    folder = folder_of(config.name, root)
    if (folder / "study.yaml").exists():
        raise StudyError(f"study {config.name!r} exists in {folder}: `lab study resume {config.name}` continues it")
    prepared = _prepare(config)
    store = StudyStore(folder)
    store.save_config(config.to_dict())
    return _run(config, store, prepared, verbose)


def resume(name: str, root: str | Path | None = None, verbose: int = 1) -> Path:
    """Continue the study `name` to its trial budget with its frozen settings."""
    store = StudyStore(find_study(name, root))
    config = StudyConfig(**store.load_config())
    return _run(config, store, _prepare(config), verbose)


def _prepare(config: StudyConfig) -> tuple[list, object, object]:
    """The objectives, the space (or a scaling study's grid) and the dataset (loaded once, in the
    driver), after every check that needs no study folder: objectives, space file or archs,
    dataset, a feasible point, storage URL, Ray address."""
    try:
        objectives = parse_objectives(config.objectives)
    except ValueError as e:
        raise StudyError(f"--objectives: {e}") from None
    data = load_dataset(config.dataset, seed=config.seed, fraction=config.fraction)
    space = SPACES[config.kind](config, data)
    space.check_feasible(num_classes=data.num_classes, in_chans=data.in_chans, frames=data.frames)
    if config.storage:
        _open_storage(config.storage)
    if config.address:
        _check_address(config.address)
    return objectives, space, data


def _run(config: StudyConfig, store, prepared, verbose: int) -> Path:
    objectives, space, data = prepared
    storage = _open_storage(config.storage or store.optuna_url)
    base_row = {"dataset": data.name, "fraction": data.fraction, "n_train": data.n_train, "epochs": config.epochs,
                "recipe": config.recipe, "seed": config.seed, "lab_version": __version__}
    searcher = LabSearch(space, store, objectives, space.sampler(config.sampler, config.seed, config.trials),
                         config.name, storage, base_row, data.num_classes, data.in_chans, config.res)
    reconcile(searcher.study, store, objectives, base_row)
    assert config.trials is not None  # StudyConfig resolves it
    remaining = config.trials - counted(store.trials().to_pylist())
    if remaining > 0:
        _tune(config, searcher, data, objectives, store, remaining, verbose)
    store.compact()
    return store.folder


def _tune(config: StudyConfig, searcher, data, objectives, store, remaining: int, verbose: int) -> None:
    # failed trials report no accuracy, epochs report no test accuracy: LabSearch reads what each
    # result has, so Tune must not insist that every result carries every objective
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    started = start_ray(config.address)
    try:
        scheduler = (ParetoASHA(objectives, config.epochs, grace_period=1, reduction_factor=3)
                     if config.scheduler == "asha" else FIFOScheduler())
        settings = {"recipe": config.recipe, "epochs": config.epochs, "batch_size": config.batch_size,
                    "seed": config.seed, "device": "cuda" if config.gpus_per_trial > 0 else "cpu",
                    "cpus": config.cpus_per_trial, "teachers": str(store.folder / "teachers")}
        trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, settings=settings),
                                        {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=config.concurrency),
                                        scheduler=scheduler, num_samples=remaining, reuse_actors=True),
            run_config=tune.RunConfig(name=f"run-{datetime.now():%Y%m%d-%H%M%S}", storage_path=str(store.folder / "ray"),
                                      verbose=verbose, log_to_file=True),
        )
        tuner.fit()
    finally:
        if started:
                    ray.shutdown()
