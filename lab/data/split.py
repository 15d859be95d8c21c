"""Fixed stratified splits, nested training fractions, and the `Split` that serves batches."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterator, Sequence
from typing import Protocol, cast

import numpy as np
import torch

from lab.data.decode import decode_on
from lab.errors import DataError

# Every dataset's train/val/test split is made with this seed, whatever the run's seed, so all
# runs evaluate on the same images.
SPLIT_SEED = 20240531


def mix(*parts: int) -> int:
    """One 63-bit seed from several integers (seed, epoch, class...), well mixed."""
    state = np.random.SeedSequence([p & (2**64 - 1) for p in parts]).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def _by_class(labels: torch.Tensor) -> dict[int, torch.Tensor]:
    """Positions of each class, ascending, for the classes present."""
    order = torch.argsort(labels, stable=True)
    classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
    return {int(c): idx for c, idx in zip(classes.tolist(), torch.split(order, counts.tolist()))}


def _shuffled(idx: torch.Tensor, seed: int) -> torch.Tensor:
    return idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]


def stratified_split(labels: torch.Tensor, val: float, test: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions (ascending) of train/val/test: per class, a fixed shuffle, then round(val * n_c)
    to val and round(test * n_c) to test; every class keeps at least one training image."""
    parts: tuple[list, list, list] = ([], [], [])
    for c, idx in _by_class(labels).items():
        idx = _shuffled(idx, mix(SPLIT_SEED, c))
        n_val = math.floor(val * len(idx) + 0.5)
        n_test = min(math.floor(test * len(idx) + 0.5), len(idx) - 1 - n_val)
        n_val, n_test = max(0, min(n_val, len(idx) - 1)), max(0, n_test)
        for part, sel in zip(parts, (idx[n_val + n_test :], idx[:n_val], idx[n_val : n_val + n_test])):
            part.append(sel)
    return tuple(torch.sort(torch.cat(p)).values if p else torch.empty(0, dtype=torch.int64) for p in parts)


def check_fraction(fraction: object) -> float:
    """`fraction` as a float in (0, 1]; DataError otherwise (NaN included)."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < cast(float, fraction) <= 1:
        raise DataError(f"fraction must be a number in (0, 1], got {fraction!r}")
    return float(fraction)


def nested_fraction(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Positions (ascending) of a stratified subset: per class, one permutation seeded by
    (seed, class) and its first round(fraction * n_c) entries, at least one. The permutation
    does not depend on `fraction`, so a smaller fraction's subset lies inside a larger one's."""
    fraction = check_fraction(fraction)
    if fraction == 1:
        return torch.arange(len(labels))
    keep = []
    for c, idx in _by_class(labels).items():
        k = max(1, math.floor(fraction * len(idx) + 0.5))
        keep.append(_shuffled(idx, mix(seed, c))[:k])
    return torch.sort(torch.cat(keep)).values if keep else torch.empty(0, dtype=torch.int64)


def few_shot(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Positions of k examples of every class in `labels`, drawn without replacement (seeded),
    class by class: a k-shot support set (BiT's few-shot transfer)."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).flatten()
        picks.append(members[torch.randperm(len(members), generator=gen)[:k]])
    return torch.cat(picks)


def order(n: int, shuffle: bool, seed: int, epoch: int) -> torch.Tensor:
    """The positions an epoch visits: a permutation seeded by (seed, epoch), or 0..n-1."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix(seed, epoch)))


class Reader(Protocol):
    """Decodes items of a file-backed dataset on demand (picklable: it travels to workers).
    A reader whose `decoder` is "cuda" also has `encoded(items)` (the undecoded bytes, what its
    workers hand over) and `size`, `mode`: its batches are decoded on the GPU in this process."""

    def read(self, items: Sequence[int], threads: int = 1) -> torch.Tensor:
        """uint8 (len(items), C, S, S) images of those dataset items, decoded by `threads`
        threads (0: one per CPU)."""
        ...


def _device(device: str | torch.device) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


class Split:
    """One split of a dataset: labels always in memory; images either in memory as one uint8
    tensor or decoded on access by a `Reader` (streaming).

    `indices` are the images' positions in the dataset's full item list (file order, row order),
    which is what tests and records use to compare splits.
    """

    def __init__(self, labels: torch.Tensor, indices: torch.Tensor, images: torch.Tensor | None = None,
                 reader: Reader | None = None):
        if (images is None) == (reader is None):
            raise ValueError("a Split needs exactly one of images or reader")
        self.labels = labels.to(torch.int64).contiguous()
        self.indices = indices.to(torch.int64).contiguous()
        self.images = images.contiguous() if images is not None else None
        self.reader = reader
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, {'in memory' if self.in_memory else 'streaming'})"

    def subset(self, positions: torch.Tensor) -> Split:
        """The split restricted to some of its positions (ascending)."""
        images = self.images[positions] if self.images is not None else None
        return Split(self.labels[positions], self.indices[positions], images, self.reader)

    def tensors(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of an in-memory split on `device`, moved there once and cached."""
        if self.images is None:
            raise DataError("this split streams from files; iterate split.batches(...) instead")
        d = _device(device)
        if d not in self._on:
            self._on[d] = (self.images.to(d), self.labels.to(d))
        return self._on[d]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        workers: int | None = None,
    ) -> Batches:
        """(uint8 images (B,C,H,W) or clips (B,C,T,H,W), int64 labels (B,)) on `device`, in the order of
        `order(len, shuffle, seed, epoch)`. `workers` (streaming splits only) defaults to
        min(4, CPU count) decoding processes; 0 decodes in this process."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
        return Batches(self, int(batch_size), shuffle, seed, epoch, _device(device), drop_last, workers)


class Batches:
    """An epoch of batches: iterable (again and again, same order) and sized."""

    def __init__(self, split: Split, batch_size: int, shuffle: bool, seed: int, epoch: int, device: torch.device, drop_last: bool,
                 workers: int | None):
        self.split, self.batch_size, self.device = split, batch_size, device
        self.shuffle, self.seed, self.epoch, self.drop_last = shuffle, seed, epoch, drop_last
        self.workers = min(4, os.cpu_count() or 1) if workers is None else workers

    def __len__(self) -> int:
        n, b = len(self.split), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _slices(self) -> Iterator[torch.Tensor]:
        perm = order(len(self.split), self.shuffle, self.seed, self.epoch)
        for i in range(len(self)):
            yield perm[i * self.batch_size : (i + 1) * self.batch_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.split.in_memory:
            return self._from_memory()
        return self._streaming()

    def _from_memory(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self.split.tensors(self.device)
        if not self.shuffle:  # contiguous views, no copy
            for i in range(len(self)):
                s = slice(i * self.batch_size, (i + 1) * self.batch_size)
                yield images[s], labels[s]
            return
        perm = order(len(self.split), True, self.seed, self.epoch).to(self.device)
        for i in range(len(self)):
            idx = perm[i * self.batch_size : (i + 1) * self.batch_size]
            yield images.index_select(0, idx), labels.index_select(0, idx)

    def _streaming(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from torch.utils.data import DataLoader

        cuda = self.device.type == "cuda"
        reader = self.split.reader
        on_gpu = getattr(reader, "decoder", "pil") == "cuda"  # workers read bytes; nvjpeg decodes here
        loader = DataLoader(
            _Stream(self.split, encoded=on_gpu),
            batch_sampler=[s.tolist() for s in self._slices()],
            num_workers=self.workers,
            collate_fn=_as_is,
            pin_memory=cuda,
        )
        failed = None
        it = iter(loader)
        try:
            for images, labels in it:
                if on_gpu:
                    images = decode_on(images, reader.size, reader.mode, self.device if cuda else "cuda")  # type: ignore[union-attr]
                yield images.to(self.device, non_blocking=cuda), labels.to(self.device, non_blocking=cuda)
        except DataError as e:
            # a worker's DataError comes back wrapped with its traceback; keep its one line
            failed = str(e).strip().splitlines()[-1].split("DataError: ", 1)[-1]
        finally:
            # Stop the workers now, also when the caller leaves the epoch early: left to the
            # garbage collector, the iterator's shutdown stalls ~5 s. (A private method, so guarded.)
            getattr(it, "_shutdown_workers", lambda: None)()
        if failed:  # raised out here, outside the handler: no traceback holding the iterator
            raise DataError(failed)


def _as_is(batch):
    return batch


class _Stream(torch.utils.data.Dataset):
    """Map-style view of a streaming split whose fetches are whole batches (`__getitems__`)."""

    def __init__(self, split: Split, encoded: bool = False):
        self.reader, self.indices, self.labels = split.reader, split.indices, split.labels
        self.encoded = encoded  # hand over the files' bytes, not decoded images

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.as_tensor(positions, dtype=torch.int64)
        assert self.reader is not None  # a streaming split: its reader is set
        items = self.indices[pos].tolist()
        if self.encoded:
            return self.reader.encoded(items), self.labels[pos]  # type: ignore[attr-defined]
        return self.reader.read(items), self.labels[pos]

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.__getitems__([position])
        return images[0], labels[0]
