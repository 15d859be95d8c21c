"""`imagefolder:PATH`: PATH/CLASS_NAME/**/*.png|jpg|..., classes sorted by folder name."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lab.data import index
from lab.data.decode import DEVICE_CHUNK, EXTENSIONS, Scan, decode_many, decode_on, headers
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
    """Decodes image files by item index (picklable, so DataLoader workers can use it): by PIL,
    or, with decoder "cuda", by torchvision on the GPU (workers then only read the files' bytes:
    `encoded`; the training process decodes them, see `lab.data.split`)."""

    def __init__(self, paths: Sequence[str], size: int, mode: str, decoder: str = "pil"):
        self.paths, self.size, self.mode, self.decoder = list(paths), size, mode, decoder

    def encoded(self, items: Sequence[int]) -> list[tuple[bytes, str]]:
        """(file bytes, path) of those items: no decoding (what a worker does for decoder "cuda")."""
        out = []
        for i in items:
            path = self.paths[i]
            try:
                with open(path, "rb") as f:
                    out.append((f.read(), path))
            except OSError as e:
                raise DataError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
        return out

    def read(self, items: Sequence[int], threads: int = 1) -> torch.Tensor:
        items = list(items)
        if self.decoder == "cuda":
            return on_device(self, items)
        return decode_many(len(items), lambda j: (self.paths[items[j]], self.paths[items[j]]), self.size, self.mode, threads)


def on_device(reader, items: list[int]) -> torch.Tensor:
    """A reader's items decoded on the GPU, a chunk at a time, returned on the CPU."""
    parts = [decode_on(reader.encoded(items[i : i + DEVICE_CHUNK]), reader.size, reader.mode, "cuda").cpu()
             for i in range(0, len(items), DEVICE_CHUNK)]
    c = 1 if reader.mode == "L" else 3
    return torch.cat(parts) if parts else torch.empty(0, c, reader.size, reader.size, dtype=torch.uint8)


def load(name: str, path: str, size: int | None, memory_budget: int, decoder: str = "pil") -> Files:
    """Lists and checks the folder (every header is read, once: a file that is no image fails
    here, by name; later loads take the headers of unchanged files from the index cache, see
    `lab.data.index`) and, within the memory budget, decodes it. Images are stored as RGB, or as
    one gray channel when every image is grayscale."""
    if not os.path.exists(path):
        raise DataError(f"{name}: no such directory {path}")
    if not os.path.isdir(path):
        raise DataError(f"{name}: {path} is not a directory (expected {path}/CLASS_NAME/*.png)")
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{name}: no class folders in {path} (expected {path}/CLASS_NAME/*.png, one folder per class)")
    listing, counts = index.walk(path, classes)
    for cls, count in zip(classes, counts, strict=True):
        if not count:
            raise DataError(
                f"{name}: class folder {os.path.join(path, cls)} has no images ({'/'.join(e[1:] for e in EXTENSIONS)})"
            )
    prefix = os.path.join(path, "")
    paths = [prefix + p for p in listing.paths]  # os.path.join's result, without its cost per file

    def read(positions: list[int]) -> list[tuple[int, int, str]]:
        return headers(len(positions), lambda j: (paths[positions[j]], paths[positions[j]]))

    heads = index.headers(path, listing, read)
    scan = Scan()
    scan.note(*index.summary(heads, paths))
    side, mode = scan.square(size, name), scan.mode
    reader = FolderReader(paths, side, mode, decoder)
    images = reader.read(range(len(paths)), threads=0) if fits(len(paths), mode, side, memory_budget) else None
    return Files(torch.tensor(listing.labels, dtype=torch.int64), tuple(classes), len(classes), side, mode, reader, images)
