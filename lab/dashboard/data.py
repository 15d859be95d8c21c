"""A dashboard's rows: the trials and epochs of one or more studies, read from their Parquet
tables only (never the Optuna database, never a live trainer), with the columns the views group
and label by (mixer kind, named architecture, flattened sampled choices, the study's own Pareto set).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lab.catalog import named_ids
from lab.kinds import REGISTRY, is_token_mixer
from lab.pareto import pareto_mask
from lab.study.tables import StudyInfo, curve_keys, read_studies

ACCURACIES = ("val_top1", "val_top5", "test_top1", "test_top5")
TRAINED = ("complete", "pruned")                   # states whose accuracy means something
ABSENT = "—"                                       # a choice a trial did not sample (conditional)
MAX_GROUPS = 10                                    # colour groups; rarer ones share "other"
OTHER = "other"


@dataclass
class DashboardData:
    """Every trial of the studies, one row each, and their per-epoch curves.

    `rows` holds the trial table's columns plus: study, key (study#number), mixer (the kinds of
    token mixing it uses: conv, mhsa, conv+swin, ...), group (what points are coloured by: the
    mixer label, or the family when every trial has the same mixer label; beyond MAX_GROUPS, the
    rarest share "other"), label (the named
    architecture it is, if any), choices (its sampled choices, flattened), acc (the accuracy the
    views plot), on_front (in its study's own Pareto set) and hover (the text its points show).
    """

    studies: list[StudyInfo]
    rows: pd.DataFrame
    epochs: pd.DataFrame
    accuracy: str                     # the accuracy column the views plot (val_top1 unless chosen)
    group_by: str                     # "mixer kind" or "family"
    groups: list[str] = field(default_factory=list)   # colour groups, most frequent first
    choices: list[str] = field(default_factory=list)  # the sampled choices seen in trained trials

    @property
    def name(self) -> str:
        """The page's name: the study's, or the studies' joined with '+'."""
        names = [s.name for s in self.studies]
        joined = "+".join(names)
        return joined if len(joined) <= 100 else f"{names[0]}+{len(names) - 1}-more"

    @property
    def trained(self) -> pd.DataFrame:
        """Complete and pruned trials with a finite accuracy."""
        r = self.rows
        return r[r["state"].isin(TRAINED) & np.isfinite(r["acc"].astype(float))]

    @property
    def complete(self) -> pd.DataFrame:
        """Complete trials with a finite accuracy: the only ones a front or a distribution counts."""
        r = self.rows
        return r[(r["state"] == "complete") & np.isfinite(r["acc"].astype(float))]


def flatten_choices(hparams: str | None) -> dict:
    """A trial's sampled choices as one flat mapping. Studies store {"recipe": {...}, "vars": {...}}
    (grammar variables and hyperparameters); any other JSON object is taken as it is."""
    if not isinstance(hparams, str) or not hparams:
        return {}
    try:
        data = json.loads(hparams)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    if data and set(data) <= {"recipe", "vars"} and all(isinstance(v, dict) for v in data.values()):
        out = dict(data.get("vars", {}))
        for k, v in data.get("recipe", {}).items():
            out[f"recipe.{k}" if k in out else k] = v
        return out
    return data


def mixer_label(kinds) -> str:
    """The kinds of token mixing a net uses: 'conv' for every conv kind, then each token mixer (a
    kind this lab does not know, as a table written with a plugin's kinds, shows as itself)."""
    kinds = [] if kinds is None else list(kinds)
    if not kinds:
        return "unknown"
    conv = {k for k in kinds if k in REGISTRY and not is_token_mixer(k)}
    return "+".join((["conv"] if conv else []) + sorted(set(kinds) - conv))


def _wrap(text: str, width: int = 64) -> str:
    """Grammar text broken at its ' | ' joints into lines of about `width` characters, for hovers."""
    lines: list[str] = []
    for part in text.split(" | "):
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " | " + part
        else:
            lines.append(part)
    return "<br>".join(html.escape(line) for line in lines)


def _num(value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x


def _str(value) -> str:
    """A string cell as text: '' for a null (None or NaN, as pandas gives them)."""
    return value if isinstance(value, str) else ""


def _hover(row: dict, accuracy: str, several: bool) -> str:
    acc, params, macs = _num(row.get("acc")), _num(row.get("params")), _num(row.get("macs"))
    head = f"<b>#{row['number']}</b>"
    if _str(row.get("label")):
        head += f" <b>{html.escape(row['label'])}</b>"
    if _str(row.get("arch_id")):
        head += f" · {html.escape(row['arch_id'])}"
    lines = [head]
    if _str(row.get("text")):
        lines.append(_wrap(row["text"]))
    lines.append(f"{accuracy.replace('_', ' ').replace('top1', 'top-1').replace('top5', 'top-5')} "
                 + ("–" if math.isnan(acc) else f"{100 * acc:.2f}%") + f" · {row['state']}")
    cost = []
    if not math.isnan(params):
        cost.append(f"{params / 1e6:.3g} M params")
    if not math.isnan(macs):
        cost.append(f"{macs / 1e6:.4g} MMACs")
    if cost:
        lines.append(" · ".join(cost))
    frac, n_train = _num(row.get("fraction")), _num(row.get("n_train"))
    if not math.isnan(frac):
        lines.append(f"data fraction {frac:g}" + ("" if math.isnan(n_train) else f" ({int(n_train)} images)"))
    if several:
        lines.append(f"study {html.escape(row['study'])}")
    return "<br>".join(lines)


def _study_front(frame: pd.DataFrame, objectives: list[tuple[str, str]]) -> np.ndarray:
    """Rows of `frame` (one study) in its own Pareto set: complete, under all its objectives."""
    mask = np.zeros(len(frame), dtype=bool)
    complete = (frame["state"] == "complete").to_numpy()
    if not complete.any():
        return mask
    values = frame.loc[complete, [c for c, _ in objectives]].apply(pd.to_numeric, errors="coerce")
    mask[np.flatnonzero(complete)] = pareto_mask(values.to_numpy(dtype=float), [s for _, s in objectives])
    return mask


def load(folders: Sequence[str | Path]) -> DashboardData:
    """Read the studies in `folders` (study folders, as `find_study` gives them)."""
    read = read_studies(folders, epochs=True)
    studies, rows, epochs = read.studies, read.trials, read.epochs
    # the studies' rows follow each other in order: each study's own Pareto set, one after the other
    rows["on_front"] = np.concatenate([_study_front(rows[rows["study"] == s.name], s.objectives) for s in studies])

    first = studies[0].objectives
    accuracy = next((c for c, _ in first if c in ACCURACIES), "val_top1")
    several = len(studies) > 1
    rows["key"] = [f"{s}#{n}" if several else str(n) for s, n in zip(rows["study"], rows["number"])]
    rows["acc"] = pd.to_numeric(rows[accuracy], errors="coerce").astype(float)
    rows["mixer"] = [mixer_label(k) for k in rows["kinds"]]
    rows["choices"] = [flatten_choices(h) for h in rows["hparams"]]
    resolutions = tuple(sorted({int(r) for r in rows["res"].dropna()}))
    named = named_ids(resolutions) if len(rows) else {}
    rows["label"] = [named.get(a, "") if isinstance(a, str) else "" for a in rows["arch_id"]]
    rows["curve"] = curve_keys(rows) if len(rows) else pd.Series(dtype=object)   # a scaling study's arm, else arch_id

    trained = rows[rows["state"].isin(TRAINED) & np.isfinite(rows["acc"])]
    group_by = "mixer kind" if trained["mixer"].nunique() > 1 or trained.empty else "family"
    column = "mixer" if group_by == "mixer kind" else "family"
    rows["group"] = rows[column].fillna("unknown").astype(str)
    counts = rows.loc[trained.index, "group"].value_counts()
    groups = sorted(counts.index, key=lambda g: (-counts[g], g))
    if len(groups) > MAX_GROUPS:   # beyond a legend's worth of colours, the rarest groups share one
        rare = set(groups[MAX_GROUPS - 1:])
        rows["group"] = [OTHER if g in rare else g for g in rows["group"]]
        groups = groups[:MAX_GROUPS - 1] + [OTHER]
    groups += sorted(set(rows["group"]) - set(groups))

    records = rows[["number", "label", "arch_id", "text", "acc", "state", "params", "macs", "fraction", "n_train",
                    "study"]].to_dict("records")
    rows["hover"] = [_hover(r, accuracy, several) for r in records]

    seen: dict[str, None] = {}
    for choices in rows.loc[trained.index, "choices"]:
        seen.update(dict.fromkeys(choices))
    return DashboardData(studies=studies, rows=rows, epochs=epochs, accuracy=accuracy, group_by=group_by,
                         groups=groups, choices=list(seen))
