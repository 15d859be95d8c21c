"""Where lab's own data lives: the search_spaces folder (``named.yaml`` and the searchable spaces),
and the benchmark tables it ships (``lab/nasbench/*.parquet``: what a replayed study reads).

The folder is the source tree's top-level ``search_spaces/``; the wheel ships it as the package
``lab.search_spaces`` (pyproject.toml maps the one to the other) and it is read through
`importlib.resources`, so an editable install, an installed wheel and Ray workers all find it
the same way. The environment variable ``LAB_SPACES`` (a folder) overrides it; it is read at
every call, not at import.

    from lab.resources import shipped_spaces, space_file, spaces_dir
    spaces_dir()          # Path(.../lab/search_spaces), or $LAB_SPACES
    shipped_spaces()      # ['conv', 'hierarchical', 'hybrid', 'isotropic', 'video']
    space_file("hybrid")  # spaces_dir() / "hybrid.yaml"

This module is the bottom layer: it imports nothing of lab but `lab.errors`.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from lab.errors import LabError

ENV = "LAB_SPACES"
PACKAGE = "lab.search_spaces"
NAMED = "named"   # named.yaml: the named architectures, not a searchable space


def spaces_override() -> Path | None:
    """The folder ``LAB_SPACES`` names, or None when it is unset (or empty)."""
    value = os.environ.get(ENV)
    return Path(value).expanduser() if value else None


def spaces_dir() -> Path:
    """The search_spaces folder: ``$LAB_SPACES`` when set, else the one shipped with lab."""
    override = spaces_override()
    if override is not None:
        return override
    try:
        folder = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise LabError(f"lab's search spaces ({PACKAGE}) are not installed: reinstall lab, or set {ENV} "
                       "to a search_spaces folder") from None
    if not isinstance(folder, Path):   # lab imported from a zip archive: no folder on disk
        raise LabError(f"lab's search spaces ({PACKAGE}) are not a folder on disk ({folder}); set {ENV} "
                       "to a search_spaces folder")
    return folder


def named_file() -> Path:
    """``named.yaml``: the named architectures."""
    return spaces_dir() / f"{NAMED}.yaml"


def space_file(name: str) -> Path:
    """The file of the space `name` (``NAME.yaml`` in `spaces_dir()`); it may not exist."""
    return spaces_dir() / f"{name}.yaml"


def shipped_spaces() -> list[str]:
    """The names of the searchable spaces in `spaces_dir()`, sorted: every ``*.yaml`` but named.yaml."""
    folder = spaces_dir()
    return sorted(p.stem for p in folder.glob("*.yaml") if p.stem != NAMED and p.is_file())


BENCH_FOLDER = "nasbench"   # lab/nasbench/NAME.parquet: the shipped benchmark tables (package data of lab)


def shipped_benches() -> dict[str, Path]:
    """The benchmark tables shipped with lab: name -> file."""
    folder = importlib.resources.files("lab") / BENCH_FOLDER
    if not isinstance(folder, Path) or not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.parquet")) if p.is_file()}
