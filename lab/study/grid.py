"""Scaling studies: a grid of arms x nested training fractions x seeds, run by the same Ray
runner and stored in the same tables as a search.

An arm is an architecture (a name with multipliers, or grammar text) trained one way: it may
override fields of the study's recipe (`mixup_alpha: 0.8`) and distil from another arm as its
teacher (DeiT hard distillation: the teacher is trained at the cell's fraction, seed and epochs
first, and cached in the study's folder). A plain `--archs` entry is an arm named by its text.

The grid plays the part of a search space: `ScalingGrid.sample` turns an Optuna trial (proposed by
a GridSampler over the grid's cells) into a Point whose `run` carries the cell's fraction, seed and
epochs (and its teacher). Epoch policies: `constant-steps` keeps the optimizer steps of the largest fraction at every
fraction (epochs x largest / fraction, as the MLP-Mixer dataset-size study did); `constant-epochs`
trains every fraction for the same epochs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna

from lab.catalog import family_of
from lab.cost import totals
from lab.data import Dataset
from lab.errors import LabError, StudyError, check_mapping
from lab.study.space import Point
from lab.train.recipes import recipe
from lab.train.run import resolve_arch

if TYPE_CHECKING:   # the settings that hold a grid's arms (lab.study.config imports this module)
    from lab.study.config import StudyConfig

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


ARM_KEYS = ("name", "arch", "recipe", "teacher")


@dataclass(frozen=True)
class Arm:
    """One row of a scaling grid: `arch` trained with the study's recipe changed by `recipe`,
    distilling from the arm named `teacher` when there is one. `name` labels its curve."""

    name: str
    arch: str
    recipe: dict = field(default_factory=dict)
    teacher: str | None = None

    def to_setting(self) -> str | dict:
        """As the study's settings keep it: the bare text for a plain arm, else a mapping."""
        if not self.recipe and self.teacher is None and self.name == self.arch:
            return self.arch
        out: dict = {"name": self.name, "arch": self.arch}
        if self.recipe:
            out["recipe"] = dict(self.recipe)
        if self.teacher is not None:
            out["teacher"] = self.teacher
        return out


def parse_arms(entries: list, base_recipe: str = "default") -> list[Arm]:
    """The arms of `archs` settings: strings (an arm named by its text) or mappings with keys
    name, arch, recipe (fields of `base_recipe` to change) and teacher (another arm's name).
    StudyError names the entry (`archs[2].recipe`) and what is wrong."""
    arms: list[Arm] = []
    for i, entry in enumerate(entries):
        where = f"study archs[{i}]"
        if isinstance(entry, str) and entry.strip():
            arms.append(Arm(entry.strip(), entry.strip()))
            continue
        check_mapping(entry, ARM_KEYS, where, f"a name, grammar text or a mapping with keys {', '.join(ARM_KEYS)}")
        arch = entry.get("arch")
        if not isinstance(arch, str) or not arch.strip():
            raise StudyError(f"{where}.arch: expected a name with multipliers or grammar text")
        name = entry.get("name", arch)
        if not isinstance(name, str) or not name.strip() or "|" in name:
            raise StudyError(f"{where}.name = {name!r}: expected a short label (no '|')")
        changes = entry.get("recipe") or {}
        if not isinstance(changes, dict):
            raise StudyError(f"{where}.recipe: expected a mapping of recipe fields, e.g. {{mixup_alpha: 0.8}}")
        try:
            recipe(base_recipe, **changes)
        except LabError as e:
            raise StudyError(f"{where}.recipe: {e}") from None
        teacher = entry.get("teacher")
        if teacher is not None and (not isinstance(teacher, str) or not teacher.strip()):
            raise StudyError(f"{where}.teacher: expected the name of another arm")
        arms.append(Arm(name.strip(), arch.strip(), dict(changes), teacher.strip() if teacher else None))
    names = [a.name for a in arms]
    for i, arm in enumerate(arms):
        if names.index(arm.name) != i:
            raise StudyError(f"study archs[{i}].name: {arm.name!r} names two arms")
        if arm.teacher is None:
            continue
        if arm.teacher not in names or arm.teacher == arm.name:
            raise StudyError(f"study archs[{i}].teacher = {arm.teacher!r}: expected another arm's name "
                             f"(one of {', '.join(n for n in names if n != arm.name)})")
        if arms[names.index(arm.teacher)].teacher is not None:
            raise StudyError(f"study archs[{i}].teacher = {arm.teacher!r}: a teacher arm distils from no one")
    return arms


def epochs_for(fraction: float, fractions: list[float], epochs: int, policy: str) -> int:
    """Epochs a cell at `fraction` trains under `policy` (see the module doc)."""
    if policy == "constant-epochs":
        return epochs
    return max(1, round(epochs * max(fractions) / fraction))


class ScalingGrid:
    """The cells (arm, fraction, seed) of a scaling study, as a space LabSearch can sample."""

    name = "scaling"
    max_macs = max_params = None

    def __init__(self, arms: list[Arm], fractions: list[float], seeds: list[int], epochs: int, policy: str,
                 res: int | None, image_size: int, num_classes: int, in_chans: int, frames: int = 1):
        self.arms = {arm.name: arm for arm in arms}
        self.fractions, self.seeds = fractions, seeds
        self.epochs, self.policy = epochs, policy
        self.where = "--archs"
        self.points: dict[str, tuple[Any, int, int, str]] = {}
        for i, arm in enumerate(arms):
            try:
                # as `lab train` would: a bare name adopts the data's size
                spec = resolve_arch(arm.arch, res, image_size, frames)
                total = totals(spec, num_classes, in_chans)
            except LabError as e:
                where = f"--archs {arm.arch!r}" if arm.name == arm.arch else f"study archs[{i}].arch"
                raise StudyError(f"{where}: {e}") from None
            self.points[arm.name] = (spec, total.params, total.macs, family_of(spec, arm.arch))

    @property
    def archs(self) -> list[str]:
        return list(self.arms)

    @classmethod
    def for_study(cls, config: StudyConfig, data: Dataset) -> ScalingGrid:
        """The grid of a scaling study's settings, on its dataset."""
        return cls(config.arms(), config.fractions or [], [config.seed + i for i in range(config.seeds)], config.epochs,
                   config.epochs_policy, config.res, data.image_size, data.num_classes, data.in_chans, data.frames)

    def sampler(self, name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
        """Optuna's GridSampler over the cells (arm, fraction, seed): each once, in a seeded order
        (a grid is walked, not searched: `name` does not apply)."""
        return _GridSampler({"arch": list(self.arms), "fraction": list(self.fractions), "seed": list(self.seeds)},
                            seed=seed)

    def sample(self, trial: Any, num_classes: int = 10, in_chans: int = 1) -> Point:
        name = trial.suggest_categorical("arch", list(self.arms))
        fraction = trial.suggest_categorical("fraction", self.fractions)
        seed = trial.suggest_categorical("seed", self.seeds)
        arm = self.arms[name]
        spec, params, macs, family = self.points[name]
        run = {"fraction": fraction, "seed": seed, "epochs": epochs_for(fraction, self.fractions, self.epochs, self.policy)}
        values = {"arch": name, **run}
        if arm.teacher is not None:
            teacher = self.arms[arm.teacher]
            run["teacher"] = {"name": teacher.name, "text": self.points[teacher.name][0].text,
                              "recipe": dict(teacher.recipe)}
            values["teacher"] = teacher.name
        return Point(spec, spec.text, dict(arm.recipe), params, macs, None, values, run=run, family=family)

    def over_budget(self, macs: int, params: int) -> str | None:
        return None   # a grid trains what it names

    def check_feasible(self, num_classes: int = 10, in_chans: int = 1, frames: int = 1) -> float:
        return 1.0   # every arm was resolved and costed for the data when the grid was made



class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler without its stop at the last cell: `Study.stop` raises outside
    `optimize`, and Ray Tune (not Optuna) ends the study after the grid's size in trials."""

    def after_trial(self, study, trial, state, values) -> None:
        pass
