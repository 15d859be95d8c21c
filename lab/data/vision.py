"""torchvision's CIFAR-10/100, MNIST and Fashion-MNIST, read from a local root (downloaded
there once if possible), as uint8 arrays plus a fixed split."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import numpy as np
import torch

from lab.data.split import stratified_split
from lab.errors import DataError

VAL = 0.1  # of the official training set, held out (stratified, fixed) as validation


@dataclass(frozen=True)
class Entry:
    cls: str  # torchvision.datasets class name
    folder: str  # what torchvision expects under root
    url: str
    hflip: bool


ENTRIES = {
    "cifar10": Entry("CIFAR10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", True),
    "cifar100": Entry("CIFAR100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", True),
    "mnist": Entry("MNIST", "MNIST/raw (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-*)",
                   "http://yann.lecun.com/exdb/mnist/", False),
    "fashion-mnist": Entry("FashionMNIST", "FashionMNIST/raw (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-*)",
                           "https://github.com/zalandoresearch/fashion-mnist", False),
}


def default_root(root: str | os.PathLike | None) -> str:
    """`root`, else $LAB_DATA, else ~/.cache/lab/data."""
    chosen = root if root is not None else os.environ.get("LAB_DATA") or os.path.join("~", ".cache", "lab", "data")
    return os.path.abspath(os.path.expanduser(os.fspath(chosen)))


def _open(name: str, root: str, train: bool):
    """The torchvision dataset: local files first; if missing, one download attempt."""
    import torchvision.datasets as tvd

    entry = ENTRIES[name]
    cls = getattr(tvd, entry.cls)
    try:
        return cls(root, train=train, download=False)
    except RuntimeError:  # torchvision's "Dataset not found or corrupted"
        pass
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(previous or 30.0)  # a dead network must fail, not hang forever
    try:
        return cls(root, train=train, download=True)
    except Exception as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or ["no detail"]
        why = lines[-1][:200]  # torchvision's MNIST puts the root cause (urlopen error) last
        raise DataError(
            f"{name}: not found in {root} and the download failed ({type(e).__name__}: {why}); "
            f"put torchvision's {entry.folder} there ({entry.url}), "
            "or point root= / $LAB_DATA / --data-root at a folder holding it"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def _arrays(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, C, H, W) images and int64 labels of a torchvision dataset's in-memory arrays."""
    data = ds.data
    x = torch.from_numpy(np.ascontiguousarray(data)) if isinstance(data, np.ndarray) else torch.as_tensor(data)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # MNIST (N,H,W); CIFAR (N,H,W,C)
    return x.to(torch.uint8).contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)


def combine(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor]):
    """One item list (official train, then official test) and the fixed parts: train/val a
    stratified split of the official training set, test the official test set."""
    (xtr, ytr), (xte, yte) = train, test
    tr, va, _ = stratified_split(ytr, VAL, 0.0)
    te = torch.arange(len(ytr), len(ytr) + len(yte))
    return torch.cat([xtr, xte]), torch.cat([ytr, yte]), (tr, va, te)


def load(name: str, root: str | os.PathLike | None):
    """(images, labels, parts, classes, hflip) of a torchvision dataset."""
    where = default_root(root)
    train, test = _open(name, where, True), _open(name, where, False)
    images, labels, parts = combine(_arrays(train), _arrays(test))
    return images, labels, parts, tuple(train.classes), ENTRIES[name].hflip
