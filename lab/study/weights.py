"""The weights a study keeps: its Pareto-set trials' (and optionally the top k by a metric), within a
disk cap, in the study's folder::

    weights/trial-000042.safetensors   a kept trial's final weights (EMA when the recipe keeps one) and
                                       the metadata lab.train.checkpoint.META_KEYS names (text,
                                       num_classes, in_chans, res, dataset, mean, std, recipe, ...)
    weights/index.json                 the ledger: each kept trial and why, each dropped one and why

Each trial's worker writes its own file when it completes (`save_trial`, atomically, skipped when the
weights alone exceed the cap); the driver then keeps the wanted files (`WeightKeeper.settle`, after each
settled trial) and deletes the others. Wanted, in order: the Pareto set on the study's objectives (the
set `lab study show` prints; a --target-size study ranks on pred_acc), best first objective first, then
the top `keep_top` complete trials by `keep_metric`; the cap keeps the longest prefix of that order whose
files fit. A dominated trial never returns to the front, so a deleted file is never wanted again (only a
trial dropped for the cap could have been, had the front shrunk: its file is gone too).

Workers write into the study folder as they write teachers (lab.study.teachers): on a Ray cluster the
study folder must be shared for the driver to see (and keep) the files. The trial rows' `checkpoint`
column stays null: `kept()` / `trial_weights()` resolve a trial's file from the ledger.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from lab import __version__
from lab.data import Dataset
from lab.errors import StudyError, first_line
from lab.files import atomic_write
from lab.interop.weights import cpu_state, write_safetensors
from lab.memory import format_size, parse_size
from lab.pareto import ALIASES, OBJECTIVE_COLUMNS, pareto_mask, row_values

WEIGHTS_DIR = "weights"
INDEX = "index.json"
DEFAULT_CAP = "1GiB"
_FILE = re.compile(r"^trial-(\d+)\.safetensors$")
# the sense a --keep-metric without one is ranked in: accuracies and throughput up, the rest down
_MAXIMIZED = ("val_top1", "val_top5", "test_top1", "test_top5", "pred_top1", "images_per_second")


def weights_file(folder: str | Path, number: int) -> Path:
    """Where trial `number` of the study in `folder` keeps its weights."""
    return Path(folder) / WEIGHTS_DIR / f"trial-{number:06d}.safetensors"


def parse_cap(text: str | int, flag: str = "--weights-cap") -> int:
    """Bytes of a weights cap such as 2GiB or 500MB (lab.memory.parse_size); 0 keeps no weights."""
    if str(text).strip() in ("0", "0B", "0b"):
        return 0
    return parse_size(str(text), flag)


def parse_metric(text: str, flag: str = "--keep-metric") -> tuple[str, str]:
    """(column, sense) of a ranking metric: "val_acc", "val_top1:max", "loss" (min: see _MAXIMIZED)."""
    name, colon, sense = (s.strip().lower() for s in str(text).partition(":"))
    column = ALIASES.get(name, name)
    if column not in OBJECTIVE_COLUMNS:
        raise StudyError(f"{flag} {text!r}: unknown column {name!r} (known: {', '.join(OBJECTIVE_COLUMNS)}, "
                         f"aliases {', '.join(ALIASES)}; optionally :max or :min)")
    if colon and sense not in ("max", "min"):
        raise StudyError(f"{flag} {text!r}: the sense after ':' is max or min")
    return column, sense if colon else ("max" if column in _MAXIMIZED else "min")


# --- the worker's side --------------------------------------------------------------------

def save_trial(settings: dict, number: int, model: nn.Module, record: dict, data: Dataset) -> dict:
    """Write a completed trial's weights (`model`, trained on `data`; `record` its run row) where `settings`
    ({"folder", "cap", "study"}: `worker_settings`) says; returns what its final result carries:
    weights_bytes, and weights_error when they were not written (over the cap, a full disk). Never
    raises: keeping weights is never a reason for a trial to fail."""
    state = cpu_state(model)
    size = sum(t.numel() * t.element_size() for t in state.values())
    if size > settings["cap"]:
        return {"weights_bytes": size, "weights_error": f"over the cap: its weights take {format_size(size)}, "
                                                        f"--weights-cap is {format_size(settings['cap'])}"}
    meta = {"text": record["text"], "num_classes": data.num_classes, "in_chans": data.in_chans, "res": record["res"],
            "dataset": data.name, "mean": [float(v) for v in data.mean], "std": [float(v) for v in data.std],
            "recipe": record.get("recipe"), "run_id": f"{settings['study']}:{number}", "lab_version": __version__,
            "study": settings["study"], "trial": number}
    path = weights_file(settings["folder"], number)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: write_safetensors(p, state, meta))
    except Exception as e:   # a full disk, a folder the worker cannot write (a cluster without the shared folder)
        return {"weights_bytes": size, "weights_error": f"not written ({type(e).__name__}: {first_line(e)[:200]})"}
    return {"weights_bytes": size}


# --- the driver's side: which files stay --------------------------------------------------

@dataclass(frozen=True)
class KeepPolicy:
    objectives: list[tuple[str, str]]   # the study's (column, sense): its Pareto set is kept
    keep_top: int = 0                   # and the best `keep_top` complete trials by `metric`
    metric: tuple[str, str] = ("val_top1", "max")
    cap: int = 1 << 30                  # bytes the kept files may take together

    @property
    def top_label(self) -> str:
        return f"top {self.keep_top} by {self.metric[0]}"


def wanted(rows: list[dict], policy: KeepPolicy) -> list[tuple[int, str]]:
    """The trials whose weights the study wants, in the order the cap honours: (number, why)."""
    done = [r for r in rows if r.get("state") == "complete"]
    if not done:
        return []
    columns, senses = [c for c, _ in policy.objectives], [s for _, s in policy.objectives]
    values = row_values(done, columns)
    front = [r for r, on in zip(done, pareto_mask(values, senses)) if on]
    sign = -1.0 if senses[0] == "max" else 1.0   # best first objective first, then the trial number
    order = [(r["number"], "pareto set") for r in sorted(front, key=lambda r: (sign * float(r[columns[0]]), r["number"]))]
    if policy.keep_top > 0:
        column, sense = policy.metric
        scored = [r for r in done if r.get(column) is not None and float(r[column]) == float(r[column])]
        sign = -1.0 if sense == "max" else 1.0
        best = sorted(scored, key=lambda r: (sign * float(r[column]), r["number"]))[:policy.keep_top]
        on_front = {n for n, _ in order}
        order += [(r["number"], policy.top_label) for r in best if r["number"] not in on_front]
    return order


def choose(rows: list[dict], files: dict[int, int], policy: KeepPolicy) -> tuple[dict[int, str], dict[int, str]]:
    """(kept, dropped): number -> why, for the trials that have a weights file (`files`: number -> bytes).
    Kept: the wanted trials (see `wanted`) while their files fit in the cap together; dropped: every
    other file."""
    kept: dict[int, str] = {}
    dropped: dict[int, str] = {}
    used = 0
    for number, why in wanted(rows, policy):
        if number not in files:
            continue
        size = files[number]
        if used + size > policy.cap:
            dropped[number] = (f"over the cap: better-ranked trials' weights take {format_size(used)}, its own "
                               f"{format_size(size)}, --weights-cap is {format_size(policy.cap)}")
            continue
        kept[number], used = why, used + size
    states = {r["number"]: r.get("state") for r in rows}
    for number in files:
        if number in kept or number in dropped:
            continue
        state = states.get(number)
        dropped[number] = ("not on the Pareto set" + (f" nor in the {policy.top_label}" if policy.keep_top else "")
                           if state == "complete" else f"the trial is {state}")
    return kept, dropped


class WeightKeeper:
    """The driver's keeper of a study's weights: `settle(row, result)` after each settled trial (LabSearch's
    listener: every recorded row) keeps the files the policy wants and deletes the others, and rewrites the ledger.
    Problems (a file it cannot delete, a cap too small) are warnings, said once each: never a failed study."""

    def __init__(self, folder: str | Path, policy: KeepPolicy, rows: list[dict],
                 warn: Callable[[str], None] | None = None):
        self.folder, self.policy = Path(folder), policy
        self.dir = self.folder / WEIGHTS_DIR
        self.rows = {r["number"]: r for r in rows}
        self.warn = warn or (lambda text: print(f"lab: warning: {text}", file=sys.stderr))
        self._warned: set[str] = set()
        index = read_index(self.folder)
        self.dropped: dict[int, str] = {int(n): why for n, why in index.get("dropped", {}).items()}
        self.kept: dict[int, dict] = {}
        if self.dir.is_dir():   # no worker of this study runs yet: a temporary file is a killed writer's
            for tmp in self.dir.glob(".trial-*.tmp"):
                tmp.unlink(missing_ok=True)
        self.refresh()   # a resumed study: files of trials settled while no driver ran (reconcile) are judged now

    def settle(self, row: dict, result: dict | None = None) -> None:
        """Take trial `row` (as written to the store) and its worker's final result into account."""
        self.rows[row["number"]] = row
        result = result or {}
        error = result.get("weights_error")
        if error:
            self.dropped[row["number"]] = error
            if error.startswith("over the cap"):
                self._once("cap", f"trial {row['number']}'s weights were not kept: {error} (the study goes on; a larger "
                                  f"--weights-cap keeps such trials)")
            else:
                self._once("write", f"trial {row['number']}'s weights were {error}; the study goes on")
        elif (row.get("state") == "complete" and result.get("weights_bytes") is not None
              and not weights_file(self.folder, row["number"]).exists()):
            self.dropped[row["number"]] = (f"written by its worker ({row.get('worker') or '?'}) but not found in "
                                           f"{self.dir}: the study folder is not shared with that machine")
            self._once("shared", f"trial {row['number']}: {self.dropped[row['number']]}")
        self.refresh()

    def refresh(self) -> None:
        files = self._files()
        kept, dropped = choose(list(self.rows.values()), files, self.policy)
        for number, why in dropped.items():
            try:
                weights_file(self.folder, number).unlink(missing_ok=True)
            except OSError as e:
                self._once("unlink", f"cannot delete {weights_file(self.folder, number)} ({e.strerror or e})")
                continue
            self.dropped[number] = why
            if why.startswith("over the cap"):
                self._once("cap-total", f"the kept weights reached --weights-cap {format_size(self.policy.cap)}: trial "
                                        f"{number}'s were not kept ({why})")
        self.kept = {n: {"file": weights_file(self.folder, n).name, "bytes": files[n], "why": why}
                     for n, why in kept.items()}
        for n in kept:
            self.dropped.pop(n, None)
        if self.kept or self.dropped:
            self._write_index()

    def _files(self) -> dict[int, int]:
        """number -> bytes of the weights files of settled trials (a running trial's file is not judged yet)."""
        out: dict[int, int] = {}
        if not self.dir.is_dir():
            return out
        for path in self.dir.iterdir():
            m = _FILE.match(path.name)
            if m and int(m.group(1)) in self.rows:
                with contextlib.suppress(OSError):
                    out[int(m.group(1))] = path.stat().st_size
        return out

    def _write_index(self) -> None:
        index = {"policy": {"objectives": [list(o) for o in self.policy.objectives], "keep_top": self.policy.keep_top,
                            "keep_metric": list(self.policy.metric), "weights_cap": self.policy.cap},
                 "kept": {str(n): v for n, v in sorted(self.kept.items())},
                 "dropped": {str(n): v for n, v in sorted(self.dropped.items())}}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.dir / INDEX, lambda p: Path(p).write_text(json.dumps(index, indent=1) + "\n"))
        except OSError as e:
            self._once("index", f"cannot write {self.dir / INDEX} ({e.strerror or e}); the kept files stay")

    def _once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.warn(text)


def read_index(folder: str | Path) -> dict:
    """The ledger of the study in `folder` ({} when it kept nothing yet or the file is unreadable)."""
    try:
        index = json.loads((Path(folder) / WEIGHTS_DIR / INDEX).read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def kept(folder: str | Path) -> dict[int, Path]:
    """number -> weights file of the trials the study in `folder` keeps now."""
    out = {}
    for number in read_index(folder).get("kept", {}):
        path = weights_file(folder, int(number))
        if path.is_file():
            out[int(number)] = path
    return out


def trial_weights(folder: str | Path, number: int, config: dict, rows: list[dict]) -> Path:
    """The weights file of trial `number` of the study in `folder` (its settings `config`, its trial
    rows `rows`); StudyError saying why when that trial's weights were not kept."""
    folder = Path(folder)
    name = config.get("name", folder.name)
    backend = str(config.get("backend", "ray"))
    if backend.startswith("replay:"):
        raise StudyError(f"study {name!r} replays a benchmark table ({backend}): it trained nothing and kept no weights")
    path = weights_file(folder, number)
    if path.is_file():
        return path
    row = next((r for r in rows if r["number"] == number), None)
    if row is None:
        raise StudyError(f"study {name!r} has no trial {number}")
    if row["state"] != "complete":
        why = f" ({row['error']})" if row.get("error") else ""
        raise StudyError(f"study {name!r}: trial {number} was {row['state']}{why}; only complete trials keep weights")
    dropped = read_index(folder).get("dropped", {}).get(str(number))
    if dropped:
        raise StudyError(f"study {name!r}: trial {number}'s weights were not kept: {dropped}")
    cap = config.get("weights_cap", DEFAULT_CAP)
    if str(cap).strip() in ("0", "0B", "0b"):
        raise StudyError(f"study {name!r} keeps no weights (weights_cap 0)")
    raise StudyError(f"study {name!r}: trial {number}'s weights were not kept (none in {folder / WEIGHTS_DIR}: a "
                     f"study made before studies kept weights, or the file was removed)")


def keeper_for(folder: str | Path, config, objectives: list[tuple[str, str]], rows: list[dict]) -> WeightKeeper | None:
    """The keeper of a live study's weights (None when its weights_cap is 0); `config` a StudyConfig."""
    cap = parse_cap(config.weights_cap)
    if cap == 0:
        return None
    policy = KeepPolicy(objectives, config.keep_top, parse_metric(config.keep_metric), cap)
    return WeightKeeper(folder, policy, rows)


def worker_settings(folder: str | Path, config) -> dict | None:
    """What a trial's worker needs to save its weights (None: the study keeps none)."""
    cap = parse_cap(config.weights_cap)
    return None if cap == 0 else {"folder": str(Path(folder)), "cap": cap, "study": config.name}
