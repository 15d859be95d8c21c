"""Scaling studies: a grid of architectures x nested training fractions x seeds, run by the same
Ray runner and stored in the same tables as a search.

The grid plays the part of a search space: `ScalingGrid.sample` turns an Optuna trial (proposed by
a GridSampler over the grid's cells) into a Point whose `run` carries the cell's fraction, seed and
epochs. Epoch policies: `constant-steps` keeps the optimizer steps of the largest fraction at every
fraction (epochs x largest / fraction, as the MLP-Mixer dataset-size study did); `constant-epochs`
trains every fraction for the same epochs.
"""

from __future__ import annotations

import re
from typing import Any

from lab.study.config import StudyError
from lab.study.space import Point

EPOCH_POLICIES = ("constant-steps", "constant-epochs")
_MULTIPLIER = re.compile(r"^\s*[a-z]+\s*=")   # "w=0.5" continues the name before it


def split_archs(text: str) -> list[str]:
    """--archs: names with multipliers separated by commas (`resnet18@28px,w=0.5,vit_ti16`: a
    `k=v` piece belongs to the name before it), or anything (grammar text too) separated by ';'."""
    if ";" in text:
        return [a.strip() for a in text.split(";") if a.strip()]
    archs: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if _MULTIPLIER.match(piece) and archs:
            archs[-1] += "," + piece
        else:
            archs.append(piece)
    return archs


def epochs_for(fraction: float, fractions: list[float], epochs: int, policy: str) -> int:
    """Epochs a cell at `fraction` trains under `policy` (see the module doc)."""
    if policy == "constant-epochs":
        return epochs
    return max(1, round(epochs * max(fractions) / fraction))


class ScalingGrid:
    """The cells (arch, fraction, seed) of a scaling study, as a space LabSearch can sample."""

    name = "scaling"
    max_macs = max_params = None

    def __init__(self, archs: list[str], fractions: list[float], seeds: list[int], epochs: int, policy: str,
                 res: int | None, image_size: int, num_classes: int, in_chans: int):
        from lab.catalog import entries
        from lab.cost import totals
        from lab.errors import LabError
        from lab.train.run import resolve_arch

        self.archs, self.fractions, self.seeds = archs, fractions, seeds
        self.epochs, self.policy = epochs, policy
        self.where = "--archs"
        self.points: dict[str, tuple[Any, int, int, str | None]] = {}
        for arch in archs:
            try:
                spec = resolve_arch(arch, res, image_size)   # as `lab train` would: a bare name adopts the data's size
                total = totals(spec, num_classes, in_chans)
            except LabError as e:
                raise StudyError(f"--archs {arch!r}: {e}") from None
            entry = entries().get(arch.partition("@")[0].strip())
            self.points[arch] = (spec, total.params, total.macs, entry.family if entry else None)

    def sampler(self, seed: int):
        """Optuna's GridSampler over the cells (arch, fraction, seed): each once, in a seeded order."""
        import optuna

        return optuna.samplers.GridSampler(
            {"arch": list(self.archs), "fraction": list(self.fractions), "seed": list(self.seeds)}, seed=seed)

    def sample(self, trial: Any, num_classes: int = 10, in_chans: int = 1) -> Point:
        arch = trial.suggest_categorical("arch", self.archs)
        fraction = trial.suggest_categorical("fraction", self.fractions)
        seed = trial.suggest_categorical("seed", self.seeds)
        spec, params, macs, family = self.points[arch]
        run = {"fraction": fraction, "seed": seed, "epochs": epochs_for(fraction, self.fractions, self.epochs, self.policy)}
        return Point(spec, spec.text, {}, params, macs, None, {"arch": arch, **run}, run=run, family=family)

    def over_budget(self, macs: int, params: int) -> str | None:
        return None   # a grid trains what it names

    def check_feasible(self, num_classes: int = 10, in_chans: int = 1) -> float:
        return 1.0
