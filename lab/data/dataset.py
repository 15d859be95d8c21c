"""The `Dataset` record and `assemble`, which every source goes through: fixed split,
normalization statistics on the full training split, then the seeded training fraction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from lab.data.split import SPLIT_SEED, Reader, Split, few_shot, mix, nested_fraction
from lab.errors import DataError

STATS_SAMPLE = 2000  # images a streaming dataset's mean/std are estimated on


@dataclass(eq=False)
class Dataset:
    """A loaded dataset: fixed train/val/test splits of uint8 images (N, C, S, S), or of clips
    (N, C, T, S, S) where `frames` T > 1, and what a trainer needs to know about them. `train`
    holds only the `fraction` of the training split this run uses."""

    name: str  # canonical: "mnist5k", "synthetic:20000", "imagefolder:/abs/path"
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]  # per channel, [0, 1] units, over the full (un-fractioned) train split
    std: tuple[float, ...]
    hflip: bool  # whether a horizontal flip keeps labels right
    fraction: float
    seed: int
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...] = field(default=())  # class names, where the source has them
    shots: int | None = None  # k of a k-shot training split (with_shots); None for a fraction
    frames: int = 1  # frames per clip: 1 for images, T for video (split images are then (N, C, T, S, S))

    @property
    def n_train(self) -> int:
        return len(self.train)

    def with_fraction(self, fraction: float, seed: int) -> Dataset:
        """This dataset with the nested, stratified `fraction` of the full training split drawn with
        `seed`: the same training images `load_dataset(name, seed=seed, fraction=fraction)` holds,
        without loading again (a scaling study's workers hold the full split once)."""
        if self.fraction != 1:
            raise DataError(
                f"{self.name}: with_fraction needs the full training split (this one holds fraction {self.fraction:g})"
            )
        train = self.train.subset(nested_fraction(self.train.labels, fraction, seed))
        return dataclasses.replace(self, fraction=float(fraction), seed=seed, train=train)

    def with_shots(self, k: int, seed: int) -> Dataset:
        """This dataset with a k-shot training split: k images of every class of the full training
        split, drawn with `seed` (the support set a k-shot probe with that seed fits on)."""
        if self.fraction != 1:
            raise DataError(f"{self.name}: with_shots needs the full training split (this one holds fraction {self.fraction:g})")
        smallest = int(torch.unique(self.train.labels, return_counts=True)[1].min())
        if not 1 <= k <= smallest:
            raise DataError(f"{self.name}: {k}-shot needs 1 to {smallest} images per class (its smallest class has {smallest})")
        picks = torch.sort(few_shot(self.train.labels, k, seed)).values
        return dataclasses.replace(self, fraction=len(picks) / len(self.train), seed=seed,
                                   train=self.train.subset(picks), shots=k)

    def __repr__(self) -> str:
        where = "in memory" if self.train.in_memory else "streaming"
        shape = f"{self.in_chans}x{self.frames}" if self.frames > 1 else f"{self.in_chans}"
        return (
            f"Dataset({self.name!r}, {self.num_classes} classes, {shape}x{self.image_size}x{self.image_size}, "
            f"train/val/test {len(self.train)}/{len(self.val)}/{len(self.test)} "
            f"(fraction {self.fraction:g}, seed {self.seed}), {where})"
        )


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of uint8 images (N, C, H, W) or clips
    (N, C, T, H, W) (over all frames), exactly, from one 256-bin histogram per channel (no float
    copy of the images)."""
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        h = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = h.sum().clamp(min=1)
        m = (h * values).sum() / n
        var = (h * (values - m) ** 2).sum() / n
        means.append(float(m))
        stds.append(max(float(var.sqrt()), 1e-3))  # a constant channel must not divide by zero
    return tuple(means), tuple(stds)


def assemble(
    name: str,
    labels: torch.Tensor,
    parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    images: torch.Tensor | None = None,
    reader: Reader | None = None,
    num_classes: int,
    in_chans: int,
    image_size: int,
    hflip: bool,
    seed: int,
    fraction: float,
    classes: tuple[str, ...] = (),
    frames: int = 1,
) -> Dataset:
    """The Dataset over `images` (uint8 (N, C, S, S), or clips (N, C, frames, S, S); in memory)
    or `reader` (streaming), whose items `parts` = (train, val, test) positions divide."""

    def split(idx: torch.Tensor) -> Split:
        return Split(labels[idx], idx, images[idx] if images is not None else None, reader)

    full_train, val, test = (split(p) for p in parts)
    if full_train.images is not None:
        mean, std = channel_stats(full_train.images)
    else:  # a fixed sample (same for every run) of the training split, decoded once
        g = torch.Generator().manual_seed(mix(SPLIT_SEED, len(full_train)))
        pick = torch.randperm(len(full_train), generator=g)[:STATS_SAMPLE].sort().values
        mean, std = channel_stats(reader.read(full_train.indices[pick].tolist(), threads=0))  # type: ignore[union-attr]
    train = full_train.subset(nested_fraction(full_train.labels, fraction, seed))
    return Dataset(name, num_classes, in_chans, image_size, mean, std, hflip, fraction, seed, train, val, test, classes,
                   frames=frames)
