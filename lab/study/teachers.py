"""Teachers of a scaling study's distilling arms: trained once per (teacher arm, fraction, seed,
epochs) and cached in the study's `teachers/` folder, so that every student of that cell, and a
resumed study, distils from the same weights.

Two workers asking for the same teacher take turns (a file lock): the second finds the first's
checkpoint. On a Ray cluster without a shared filesystem each machine keeps its own cache.
"""

from __future__ import annotations

import re
from pathlib import Path

from lab.data import Dataset
from lab.errors import TrainError
from lab.files import file_lock
from lab.train.recipes import Recipe
from lab.train.record import read_records
from lab.train.run import RUNS_TABLE, train


def cache_folder(root: str | Path, teacher: str, fraction: float, seed: int, epochs: int) -> Path:
    """Where the teacher `teacher` of a cell is kept: one folder per (arm, fraction, seed, epochs)."""
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", teacher).strip("_") or "teacher"
    return Path(root) / f"{slug}-f{fraction:g}-s{seed}-e{epochs}"


def cached_checkpoint(folder: Path) -> Path | None:
    """The checkpoint of the teacher run recorded in `folder`, if one finished."""
    table = folder / RUNS_TABLE
    if not table.exists():
        return None
    for row in reversed(read_records(table).to_pylist()):
        if row["state"] == "complete" and row["checkpoint"] and Path(row["checkpoint"]).exists():
            return Path(row["checkpoint"])
    return None


def teacher_checkpoint(root: str | Path, teacher: dict, data: Dataset, recipe: Recipe, seed: int, device: str) -> Path:
    """The checkpoint of `teacher` ({"name", "text"}) trained on `data` (the cell's fraction) with
    `recipe` and `seed`: from the cache, else trained now and cached."""
    folder = cache_folder(root, teacher["name"], data.fraction, seed, recipe.epochs)
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".lock"):
        found = cached_checkpoint(folder)
        if found is not None:
            return found
        try:
            result = train(teacher["text"], data, recipe=recipe, seed=seed, device=device, out=folder)
        except TrainError as e:
            raise TrainError(f"teacher {teacher['name']!r}: {e}") from None
        assert result.checkpoint is not None  # an ok run with `out` saves its checkpoint
        return result.checkpoint
