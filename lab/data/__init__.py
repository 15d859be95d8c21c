"""Datasets for the lab: fixed train/val/test splits of uint8 images, nested training
fractions, batches served from memory (or streamed from files), and batched augmentation.

    ds = load_dataset("mnist5k", seed=0, fraction=0.25)
    aug = Augment(ds, res=32, train=True, crop="pad")
    for images, labels in ds.train.batches(128, shuffle=True, seed=0, epoch=0):
        x = aug(images, generator)  # float32 (B, C, 32, 32), normalized

Video datasets (`ds.frames` T > 1, e.g. "moving-digits") hold uint8 clips (N, C, T, S, S); their
batches are (B, C, T, S, S) and `Augment(ds, res, frames=F)` gives float32 (B, C, F, res, res).
"""

from lab.data.augment import Augment
from lab.data.dataset import Dataset
from lab.data.load import DATASETS, load_dataset
from lab.data.split import Split

__all__ = ["DATASETS", "Augment", "Dataset", "Split", "load_dataset"]
