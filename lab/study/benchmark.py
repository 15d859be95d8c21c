"""`lab bench build`: a benchmark table made of the lab's own training. A study of the space with the
random sampler and no early stopping (FIFO) trains `points` points at a cheap fidelity; its trained
trials, with their learning curves, seconds and zero-cost proxies, become one Parquet table
(lab.tabular.table) that replayed studies and `lab bench proxies|search` read.

The study is an ordinary study (`lab study show bench-hybrid` reads it): a build that is stopped
resumes where it stopped when run again with the same settings, and `--points` can grow it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from lab import __version__
from lab.data import load_dataset
from lab.errors import StudyError
from lab.study.config import StudyConfig
from lab.study.progress import View
from lab.study.runner import create, folder_of, resume
from lab.study.space import load_space
from lab.study.store import StudyStore
from lab.tabular.table import make_table, save_bench

# the study settings a build fixes (random points, each trained to the end) and those its table records
BUILD = ("sampler", "scheduler")
SETTINGS = ("dataset", "fraction", "epochs", "recipe", "batch_size", "res", "seed", "objectives")


def build_bench(space: str, points: int, out: str | Path, *, name: str | None = None, root: str | Path | None = None,
                verbose: int = 0, view: View | None = None, **settings) -> Path:
    """Train (or finish training) `points` random points of `space` in the study `name` (default
    bench-SPACE) and write their benchmark table to `out`. `settings` are StudyConfig fields
    (dataset, fraction, epochs, seed, concurrency, ...). Returns the table's path."""
    name = name or f"bench-{Path(space).stem}"
    config = StudyConfig(name=name, space=space, trials=points, sampler="random", scheduler="fifo", **settings)
    folder = folder_of(name, root)
    if (folder / "study.yaml").exists():
        saved = StudyConfig(**StudyStore(folder).load_config())
        for key in (*BUILD, *SETTINGS, "space", "kind"):
            if getattr(saved, key) != getattr(config, key):
                raise StudyError(f"study {name!r} exists with {key} = {getattr(saved, key)!r}, not "
                                 f"{getattr(config, key)!r}: give the build another --name, or the same settings")
        resume(name, root, verbose, trials=points, view=view)
    else:
        create(config, root, verbose, view=view)
    return save_bench(export(folder), out)


def export(folder: Path):
    """The benchmark table of the study in `folder`: its trained trials and what they were trained under."""
    store = StudyStore(folder)
    config = StudyConfig(**store.load_config())
    trials, epochs = store.tables()
    curves: dict[int, list[dict]] = {}
    for e in epochs.to_pylist():
        curves.setdefault(e["number"], []).append(e)
    rows = trials.to_pylist()
    data = load_dataset(config.dataset, seed=config.seed, fraction=config.fraction)
    space = load_space(config.space)
    meta = {
        "settings": {key: getattr(config, key) for key in SETTINGS} | {"res": config.res or space.res},
        "data": {"name": data.name, "fraction": data.fraction, "n_train": data.n_train, "num_classes": data.num_classes,
                 "in_chans": data.in_chans, "frames": data.frames},
        "space": {"name": space.name, "definition": space.to_dict()},
        "study": {"name": config.name, "sampler": config.sampler, "scheduler": config.scheduler,
                  "trained": sum(r["state"] in ("complete", "pruned") for r in rows), "recorded": len(rows)},
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"), "lab_version": __version__,
    }
    return make_table(rows, curves, meta)
