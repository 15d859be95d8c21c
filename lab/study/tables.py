"""The one reader of studies' tables for everything above the store (dashboards, scaling fits,
frontiers, reports): the trials (and epochs) of one or more studies as data frames, each row
tagged with its study, and what makes one curve among them.

    rows = read_studies(["hybrid-mnist5k", "conv-f1"])   # names under the studies root, or folders
    rows.trials, rows.epochs, rows.studies[0].objectives
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lab.catalog import named_ids
from lab.errors import StudyError
from lab.pareto import parse_objectives
from lab.study.config import find_study
from lab.study.store import StudyStore


@dataclass
class StudyInfo:
    """One study: its folder, frozen settings, objectives and trials by state."""

    name: str
    folder: Path
    config: dict
    objectives: list[tuple[str, str]]
    states: dict[str, int]


@dataclass
class StudyRows:
    """The rows of several studies: `trials` (TRIAL_SCHEMA columns and `study`), `epochs`
    (EPOCH_SCHEMA columns and `study`; None unless asked for)."""

    studies: list[StudyInfo]
    trials: pd.DataFrame
    epochs: pd.DataFrame | None = None

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.studies]

    @property
    def folders(self) -> list[Path]:
        return [s.folder for s in self.studies]


def read_studies(studies: Sequence[str | Path], root: str | Path | None = None, epochs: bool = False) -> StudyRows:
    """The trials (and with `epochs` the per-epoch curves) of `studies`: names under `root` (as
    `lab study show` finds them) or study folders. StudyError for a missing study or one given twice."""
    infos: list[StudyInfo] = []
    trial_frames, epoch_frames = [], []
    for study in studies:
        folder = find_study(str(study), root)
        store = StudyStore(folder)
        config = store.load_config()
        name = str(config.get("name") or folder.name)
        if name in (s.name for s in infos):
            raise StudyError(f"study {name!r} is given twice")
        try:
            objectives = parse_objectives(str(config.get("objectives", "val_acc:max,macs:min")))
        except ValueError as e:
            raise StudyError(f"{store.config_path}: {e}") from None
        trial_table, epoch_table = store.tables()
        trials = trial_table.to_pandas()
        trials.insert(0, "study", name)
        states = {str(k): int(v) for k, v in trials["state"].value_counts().items()}
        infos.append(StudyInfo(name, folder, config, objectives, states))
        trial_frames.append(trials)
        if epochs:
            curve = epoch_table.to_pandas()
            curve.insert(0, "study", name)
            epoch_frames.append(curve)
    if not infos:
        raise StudyError("no study given")
    return StudyRows(infos, pd.concat(trial_frames, ignore_index=True),
                     pd.concat(epoch_frames, ignore_index=True) if epochs else None)


def grid_arm(hparams: object) -> str | None:
    """The arm a scaling study's trial belongs to (its hparams' vars.arch), if any."""
    if not isinstance(hparams, str) or '"arch"' not in hparams:
        return None
    try:
        arch = json.loads(hparams).get("vars", {}).get("arch")
    except (ValueError, AttributeError):
        return None
    return arch if isinstance(arch, str) and arch else None


def curve_keys(rows: pd.DataFrame) -> pd.Series:
    """What makes one curve: a scaling study's arm (one architecture trained one way), else the
    arch_id (else the text)."""
    ids = rows["arch_id"] if "arch_id" in rows else pd.Series(None, index=rows.index, dtype=object)
    ids = ids.fillna(rows["text"] if "text" in rows else "").astype(str)
    if "hparams" not in rows:
        return ids
    arms = pd.Series([grid_arm(h) for h in rows["hparams"]], index=rows.index, dtype=object)
    return arms.where(arms.notna(), ids)


def arch_labels(rows: pd.DataFrame) -> dict[str, str]:
    """curve key (arch_id, or a scaling study's arm) -> a name: the arm's name (`--archs
    resnet18@28px,w=0.25`, or the label a recipe file gave it) unless it is grammar text, else the
    named architecture it is, natively or rescaled (as the dashboard labels it)."""
    labels: dict[str, str] = {}
    if "hparams" in rows:
        for h in rows["hparams"]:
            arm = grid_arm(h)
            if arm and "|" not in arm:
                labels.setdefault(arm, arm)
    if "label" in rows:
        named = {a: lab for a, lab in zip(rows["arch_id"], rows["label"]) if isinstance(lab, str) and lab}
    else:
        resolutions = tuple(sorted({int(r) for r in pd.to_numeric(rows["res"], errors="coerce").dropna()}))
        named = named_ids(resolutions)
    if "hparams" in rows:   # a grammar-text arm is named as its architecture is
        for a, h in zip(rows["arch_id"], rows["hparams"]):
            arm = grid_arm(h)
            if arm and "|" in arm and a in named:
                labels.setdefault(arm, named[a])
    return {**named, **labels}
