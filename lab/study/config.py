"""A study's settings: what `lab study create` takes as flags or from a study recipe (studies/*.yaml),
frozen into the study's folder so that `lab study resume` continues exactly the same study."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from lab.errors import LabError

SAMPLERS = ("tpe", "nsga2", "random")
SCHEDULERS = ("asha", "fifo")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class StudyError(LabError):
    """A study that cannot be created or resumed as asked."""


@dataclass(frozen=True)
class StudyConfig:
    name: str
    space: str = "hybrid"
    dataset: str = "mnist5k"
    trials: int = 20                       # trained trials (rejected points do not count)
    objectives: str = "val_acc:max,macs:min"
    epochs: int = 8
    fraction: float = 1.0
    res: int | None = None                 # None: the space's resolution
    recipe: str = "default"
    batch_size: int = 64
    sampler: str = "tpe"
    scheduler: str = "asha"
    storage: str | None = None             # None: sqlite in the study's folder
    address: str | None = None             # None: Ray on this machine
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    concurrency: int = 2
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            ("name", bool(_NAME.match(self.name)), "letters, digits, '_', '.', '-'"),
            ("trials", self.trials >= 1, "at least 1"),
            ("epochs", self.epochs >= 1, "at least 1"),
            ("fraction", 0 < self.fraction <= 1, "in (0, 1]"),
            ("res", self.res is None or self.res >= 1, "positive"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("sampler", self.sampler in SAMPLERS, f"one of {', '.join(SAMPLERS)}"),
            ("scheduler", self.scheduler in SCHEDULERS, f"one of {', '.join(SCHEDULERS)}"),
            ("cpus_per_trial", self.cpus_per_trial > 0, "positive"),
            ("gpus_per_trial", self.gpus_per_trial >= 0, "non-negative"),
            ("concurrency", self.concurrency >= 1, "at least 1"),
        ]
        for field, ok, expected in checks:
            if not ok:
                raise StudyError(f"study {field} = {getattr(self, field)!r}: expected {expected}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def read_recipe_file(path: str | Path) -> dict:
    """The settings of a study recipe (studies/NAME.yaml): a mapping of StudyConfig fields."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise StudyError(f"--recipe-file {path}: no such file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise StudyError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise StudyError(f"{path}: a study recipe is a mapping of settings")
    unknown = sorted(set(data) - set(StudyConfig.fields()))
    if unknown:
        raise StudyError(f"{path}: unknown setting {unknown[0]!r} (known: {', '.join(StudyConfig.fields())})")
    return data


def studies_root(root: str | Path | None = None) -> Path:
    """Where study folders live: `root`, else $LAB_HOME/studies, else ./studies."""
    if root is not None:
        return Path(root).expanduser().resolve()
    home = os.environ.get("LAB_HOME")
    return (Path(home).expanduser() / "studies").resolve() if home else Path("studies").resolve()
