"""`imagefolder:PATH`: PATH/CLASS_NAME/**/*.png|jpg|..., classes sorted by folder name."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lab.data.decode import EXTENSIONS, Scan, decode_many
from lab.errors import DataError


@dataclass
class Files:
    """What a file-backed source hands to `assemble`: labels, names, and how to get images."""

    labels: torch.Tensor
    classes: tuple[str, ...]
    num_classes: int
    size: int
    mode: str  # "L" or "RGB"
    reader: object  # a lab.data.split.Reader
    images: torch.Tensor | None  # all images decoded, when they fit the memory budget


def fits(n: int, mode: str, size: int, memory_budget: int) -> bool:
    return n * (1 if mode == "L" else 3) * size * size <= memory_budget


class FolderReader:
    """Decodes image files by item index (picklable, so DataLoader workers can use it)."""

    def __init__(self, paths: Sequence[str], size: int, mode: str):
        self.paths, self.size, self.mode = list(paths), size, mode

    def read(self, items: Sequence[int], threads: int = 1) -> torch.Tensor:
        items = list(items)
        return decode_many(len(items), lambda j: (self.paths[items[j]], self.paths[items[j]]), self.size, self.mode, threads)


def _images_under(folder: str) -> list[str]:
    found = []
    for here, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(here, f) for f in sorted(files) if f.lower().endswith(EXTENSIONS) and not f.startswith(".")]
    return found


def load(name: str, path: str, size: int | None, memory_budget: int) -> Files:
    """Lists, checks (every header is read: a file that is no image fails here, by name) and,
    within the memory budget, decodes the folder. Images are stored as RGB, or as one gray
    channel when every image is grayscale."""
    if not os.path.exists(path):
        raise DataError(f"{name}: no such directory {path}")
    if not os.path.isdir(path):
        raise DataError(f"{name}: {path} is not a directory (expected {path}/CLASS_NAME/*.png)")
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{name}: no class folders in {path} (expected {path}/CLASS_NAME/*.png, one folder per class)")
    paths: list[str] = []
    labels: list[int] = []
    for c, cls in enumerate(classes):
        found = _images_under(os.path.join(path, cls))
        if not found:
            raise DataError(
                f"{name}: class folder {os.path.join(path, cls)} has no images ({'/'.join(e[1:] for e in EXTENSIONS)})"
            )
        paths += found
        labels += [c] * len(found)

    scan = Scan()
    scan.add(len(paths), lambda i: (paths[i], paths[i]))
    side, mode = scan.square(size, name), scan.mode
    reader = FolderReader(paths, side, mode)
    images = reader.read(range(len(paths)), threads=0) if fits(len(paths), mode, side, memory_budget) else None
    return Files(torch.tensor(labels, dtype=torch.int64), tuple(classes), len(classes), side, mode, reader, images)
