"""The study store: one folder per study holding its frozen recipe, one row per trial and each
trial's learning curve, as Parquet tables with fixed, documented schemas.

Layout of a study folder::

    study.yaml                      the frozen study recipe (space, dataset, objectives, recipe, ...)
    trials/part-000042.parquet      one fragment per trial (the latest write of that trial)
    epochs/part-000042.parquet      that trial's per-epoch curve
    trials.parquet, epochs.parquet  compacted rows (`compact()` merges the fragments into them)
    optuna.db                       the default Optuna storage (`optuna_url`)

Every file is written to a temporary file beside it and renamed over it, so a crash never leaves
a half-written file. Workers write fragments of different trials without coordination (a shared
lock); `compact()` takes the lock exclusively, writes the merged table, then deletes the merged
fragments. A reader deduplicates by trial number, a fragment winning over compacted rows, so a
crash at any point of a compaction leaves a store that reads the same as before it.

`write_trial` compacts after its fragment is written (fragment first: the crash safety above), so
trials.parquet and epochs.parquet hold every row at every moment and any Parquet reader (DuckDB's
``SELECT * FROM 'studies/X/trials.parquet'``) sees the study as it runs; within `buffered()`
(replays) nothing is written until the block ends.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from lab.errors import LabError
from lab.files import atomic_write, file_lock
from lab.study.space_yaml import safe_load
from lab.train.record import FAMILY, PROXIES, RUN_FIELDS, TIME, VOCABULARY, VOCABULARY_KEY, migrate_family

STATES = ("complete", "pruned", "failed", "rejected")

# name, type, meaning; a trial is a training run, so the run's own columns come from RUN_FIELDS
RUN = {field[0]: field for field in RUN_FIELDS}
TRIAL_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("number", pa.int64(), "the Optuna trial number (unique within the study)"),
    ("state", pa.string(), "complete; pruned (stopped early by the scheduler); failed (raised or "
                           "diverged, see error); rejected (invalid, over budget or a duplicate of an "
                           "earlier trial; never trained)"),
    ("error", pa.string(), "why a trial that is not complete stopped or was rejected; null when complete"),
    RUN["arch_id"],
    RUN["text"],
    FAMILY,
    ("kinds", pa.list_(pa.string()), "block kinds its stages use"),
    ("layout", pa.string(), "isotropic (one stage, no transition) or hierarchical"),
    ("stem", pa.string(), "conv or patch"),
    RUN["params"],
    RUN["macs"],
    ("memory", pa.int64(), "predicted peak bytes of one training step at the study's batch size and precision "
                           "(lab.memory.training_memory: weights, gradients, AdamW state, activations kept for "
                           "backward); null in tables written before the lab predicted it"),
    RUN["res"],
    RUN["frames"],
    RUN["dataset"],
    RUN["fraction"],
    RUN["n_train"],
    RUN["epochs"],
    RUN["epochs_done"],
    RUN["recipe"],
    ("hparams", pa.string(), "JSON object of the sampled hyperparameters and grammar variables (JSON: its keys "
                             "and their types differ from space to space)"),
    RUN["seed"],
    RUN["val_top1"],
    RUN["val_top5"],
    RUN["test_top1"],
    RUN["test_top5"],
    RUN["loss"],
    RUN["val_loss"],
    RUN["train_seconds"],
    RUN["images_per_second"],
    ("worker_seconds", pa.float64(), "seconds the trial ran in its worker: model build, Lightning set-up, training, evaluation"),
    RUN["peak_memory"],
    RUN["device"],
    ("started_at", TIME, "when the trial started"),
    ("finished_at", TIME, "when the trial finished (null while running)"),
    ("worker", pa.string(), "host/pid of the process that ran it"),
    RUN["checkpoint"],
    RUN["lab_version"],
    *[field for name in PROXIES for field in (
        (f"zc_{name}", pa.float64(), f"zero-cost proxy {name} of the untrained point on one batch (lab.train.proxies); "
                                      "null when it could not be computed"),
        (f"zc_{name}_seconds", pa.float64(), f"seconds {name} took"))],
    # a --target-size study: the trial trains a ladder of nested data sizes and is ranked by its prediction at N
    ("sizes", pa.list_(pa.int64()), "training-set sizes (images) the trial trained on, smallest first: the rungs of "
                                    "a --target-size study it reached (null in other studies)"),
    ("sizes_top1", pa.list_(pa.float64()), "top-1 validation accuracy at each of `sizes`"),
    ("sizes_seconds", pa.list_(pa.float64()), "training seconds at each of `sizes`"),
    ("target_size", pa.int64(), "the --target-size N its accuracy is predicted at"),
    ("pred_top1", pa.float64(), "top-1 accuracy predicted at target_size from the law fitted to `sizes` (lab.scaling.predict)"),
    ("pred_top1_lo", pa.float64(), "lower end of its 95% prediction interval (one run trained at target_size)"),
    ("pred_top1_hi", pa.float64(), "upper end of the interval: the optimistic bound the scheduler promotes on"),
    ("pred_law", pa.string(), "the law the prediction comes from"),
]
SIZE_COLUMNS = ("sizes", "sizes_top1", "sizes_seconds", "target_size", "pred_top1", "pred_top1_lo", "pred_top1_hi",
                "pred_law")
PROXY_COLUMNS = tuple(name for name, _, _ in TRIAL_FIELDS if name.startswith("zc_"))
TRIAL_SCHEMA = pa.schema([pa.field(name, type_) for name, type_, _ in TRIAL_FIELDS], metadata={VOCABULARY_KEY: VOCABULARY})

EPOCH_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("number", pa.int64(), "the trial number"),
    ("epoch", pa.int32(), "1-based epoch index"),
    ("loss", pa.float64(), "mean training loss of that epoch"),
    ("val_top1", pa.float64(), "top-1 validation accuracy at the end of that epoch"),
    ("seconds", pa.float64(), "cumulative training seconds at the end of that epoch"),
    ("n_train", pa.int64(), "training images of the run the epoch belongs to (a --target-size trial trains several "
                            "sizes; null: the trial's own n_train)"),
]
EPOCH_SCHEMA = pa.schema([pa.field(name, type_) for name, type_, _ in EPOCH_FIELDS], metadata={VOCABULARY_KEY: VOCABULARY})

# Schema evolution: a column added after stores were first written goes here; a table that lacks
# it (written by an older lab) reads it as nulls. Every other missing column marks a foreign table.
# A table without the current vocabulary in its metadata has its `family` words migrated as it is
# read (lab.train.record.migrate_family); its times are cast to TIME.
ADDED_COLUMNS = frozenset({"worker_seconds", "frames", *PROXY_COLUMNS, *SIZE_COLUMNS, "n_train", "memory"})

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


class StoreError(LabError):
    """A study folder that cannot be read as one: missing or corrupt config, a foreign table."""


# --- validation ------------------------------------------------------------------------------

def _check_value(name: str, type_: pa.DataType, value: Any) -> Any:
    """`value` as the column `name` of type `type_` stores it; ValueError naming the column."""
    if value is None:
        return None

    def bad(expected: str) -> ValueError:
        return ValueError(f"column {name!r}: expected {expected}, got {type(value).__name__} {value!r}")

    if pa.types.is_integer(type_):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise bad("an integer")
        lo, hi = _INT32 if pa.types.is_int32(type_) else _INT64
        if not lo <= int(value) <= hi:
            raise bad(f"an integer in [{lo}, {hi}]")
        return int(value)
    if pa.types.is_floating(type_):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise bad("a number")
        return float(value)
    if pa.types.is_string(type_):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if pa.types.is_list(type_):
        item = type_.value_type
        what = ("a list of strings" if pa.types.is_string(item)
                else f"a list of {'integers' if pa.types.is_integer(item) else 'numbers'}")
        if not isinstance(value, (list, tuple)):
            raise bad(what)
        try:
            return [_check_value(name, item, v) for v in value]
        except ValueError:
            raise bad(what) from None
    if pa.types.is_timestamp(type_):
        if not isinstance(value, dt.datetime):
            raise bad("a datetime")
        if value.tzinfo is None or value.utcoffset() is None:
            raise bad("a timezone-aware datetime (naive times are ambiguous)")
        return value
    raise AssertionError(f"no check for {type_}")  # pragma: no cover - every schema type is handled


def _check_row(row: dict, schema: pa.Schema, what: str) -> dict:
    unknown = [k for k in row if k not in schema.names]
    if unknown:
        raise ValueError(f"{what}: unknown column {unknown[0]!r} (columns: {', '.join(schema.names)})")
    return {f.name: _check_value(f.name, f.type, row.get(f.name)) for f in schema}


# --- files -----------------------------------------------------------------------------------


def _read(path: Path, schema: pa.Schema, what: str) -> pa.Table:
    """The table at `path` in `schema`'s columns and order; StoreError naming the file otherwise."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise StoreError(f"{path}: not a readable Parquet file ({e})") from None
    for field in schema:
        if field.name not in table.column_names and field.name not in ADDED_COLUMNS:
            raise StoreError(f"{path}: not a study {what} table (missing column {field.name!r})")
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        try:
            columns.append(table.column(field.name).cast(field.type))
        except (pa.ArrowException, TypeError) as e:
            raise StoreError(f"{path}: column {field.name!r} is {table.schema.field(field.name).type}, "
                             f"not {field.type} ({e})") from None
    out = pa.Table.from_arrays(columns, schema=schema)
    current = (table.schema.metadata or {}).get(VOCABULARY_KEY) == VOCABULARY
    return out if current or "family" not in schema.names else migrate_family(out)


def _fragment_number(path: Path) -> int:
    return int(path.stem.removeprefix("part-"))


def _merge(compacted: pa.Table | None, fragments: list[pa.Table], schema: pa.Schema,
           sort: list[str]) -> pa.Table:
    """Compacted rows minus the trial numbers any fragment holds, plus the fragments, sorted."""
    parts = [f for f in fragments if f.num_rows] or [schema.empty_table()]
    tables = list(parts)
    if compacted is not None and compacted.num_rows:
        covered = pa.array(sorted({n for f in fragments for n in f.column("number").to_pylist()}),
                           pa.int64())
        keep = pc.invert(pc.is_in(compacted.column("number"), value_set=covered))
        tables.insert(0, compacted.filter(keep))
    merged = pa.concat_tables(tables)
    return merged.sort_by([(name, "ascending") for name in sort]).combine_chunks()


# --- the store -------------------------------------------------------------------------------

class StudyStore:
    """The files of one study (see the module docstring for the layout)."""

    def __init__(self, folder: str | Path, compact: bool = True):
        """`compact=False`: `write_trial` writes its fragment only (concurrent writers that should not
        queue on the exclusive lock); the compacted tables then lag until `compact()`."""
        self.folder = Path(folder).resolve()
        self.compact_on_write = compact
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path = self.folder / "study.yaml"
        self.trials_path = self.folder / "trials.parquet"
        self.epochs_path = self.folder / "epochs.parquet"
        self.trials_dir = self.folder / "trials"
        self.epochs_dir = self.folder / "epochs"
        # fragments held in memory by `buffered()`: folder -> trial number -> table
        self._buffer: dict[Path, dict[int, pa.Table]] | None = None

    def __repr__(self) -> str:
        return f"StudyStore({str(self.folder)!r})"

    @property
    def optuna_url(self) -> str:
        """The default Optuna storage URL: a SQLite file in the study folder."""
        return f"sqlite:///{self.folder}/optuna.db"

    # locking: fragment writers and readers share the lock, compaction holds it alone
    def _locked(self, exclusive: bool) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.folder / ".store.lock", exclusive, read_only_ok=True)

    # config
    def save_config(self, config: dict) -> None:
        """Write the frozen study recipe to study.yaml, atomically."""
        if not isinstance(config, dict):
            raise ValueError(f"study config must be a dict, got {type(config).__name__}")
        try:
            text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
        except yaml.YAMLError as e:
            raise ValueError(f"study config is not plain YAML data ({str(e).splitlines()[0]})") from None
        atomic_write(self.config_path, lambda tmp: Path(tmp).write_text(text))

    def load_config(self) -> dict:
        """The study recipe saved by `save_config`."""
        path = self.config_path
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise StoreError(f"{path}: no study config (file not found)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise StoreError(f"{path}: unreadable study config ({e})") from None
        try:
            config = safe_load(text)   # bounded: a study.yaml is data the user may have edited
        except yaml.YAMLError as e:
            raise StoreError(f"{path}: corrupt study config ({' '.join(str(e).split())})") from None
        if not isinstance(config, dict):
            raise StoreError(f"{path}: corrupt study config (not a mapping but {type(config).__name__})")
        return config

    # writing
    def write_trial(self, row: dict) -> None:
        """Write one trial as its own fragment, then compact (outside `buffered()`, unless the store was
        opened with compact=False); a later write of the same number replaces it.

        Columns left out are null; `hparams` may be given as a dict (stored as sorted JSON).
        """
        row = dict(row)
        if isinstance(row.get("hparams"), dict):
            row["hparams"] = json.dumps(row["hparams"], sort_keys=True)
        checked = _check_row(row, TRIAL_SCHEMA, "trial row")
        if checked["number"] is None or checked["number"] < 0:
            raise ValueError(f"column 'number': expected a trial number >= 0, got {checked['number']!r}")
        if checked["state"] not in STATES:
            raise ValueError(f"column 'state': expected one of {', '.join(STATES)}, got {checked['state']!r}")
        if checked["hparams"] is not None:
            try:
                parsed = json.loads(checked["hparams"])
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                raise ValueError(f"column 'hparams': expected a JSON object, got {checked['hparams']!r}")
        table = pa.Table.from_pylist([checked], schema=TRIAL_SCHEMA)
        self._write_fragment(self.trials_dir, checked["number"], table)
        if self._buffer is None and self.compact_on_write:   # trials.parquet holds every row (module docstring)
            self.compact()

    def write_epochs(self, number: int, rows: list[dict]) -> None:
        """Write trial `number`'s per-epoch curve; it replaces every earlier row of that trial."""
        number = _check_value("number", pa.int64(), number)
        if number is None or number < 0:
            raise ValueError(f"column 'number': expected a trial number >= 0, got {number!r}")
        checked = []
        for row in rows:
            c = _check_row(row, EPOCH_SCHEMA, f"epoch row of trial {number}")
            if c["number"] is not None and c["number"] != number:
                raise ValueError(f"column 'number': epoch row says {c['number']}, not trial {number}")
            if c["epoch"] is None:
                raise ValueError(f"column 'epoch': missing in an epoch row of trial {number}")
            c["number"] = number
            checked.append(c)
        epochs = [(c["n_train"], c["epoch"]) for c in checked]
        if len(set(epochs)) != len(epochs):
            raise ValueError(f"column 'epoch': repeated epochs in trial {number}: {[e for _, e in epochs]}")
        table = pa.Table.from_pylist(checked, schema=EPOCH_SCHEMA)
        self._write_fragment(self.epochs_dir, number, table)

    @contextlib.contextmanager
    def buffered(self):
        """Within the block, fragments are kept in memory (readers of this store object see them) and
        written once, as the compacted tables, when it ends, also by an error. For a replayed study,
        whose hundred trials take a second, a file per write would be most of its time; a process
        killed inside the block loses the block's rows (resume then trains those trials again)."""
        self._buffer = {self.trials_dir: {}, self.epochs_dir: {}}
        try:
            yield self
        finally:
            try:
                self.compact()
            finally:
                self._buffer = None

    def _write_fragment(self, folder: Path, number: int, table: pa.Table) -> None:
        if self._buffer is not None:
            self._buffer[folder][number] = table
            return
        folder.mkdir(exist_ok=True)
        with self._locked(exclusive=False):
            atomic_write(folder / f"part-{number:06d}.parquet", lambda tmp: pq.write_table(table, tmp))

    # reading
    def _fragments(self, folder: Path, schema: pa.Schema, what: str) -> tuple[list[Path], list[pa.Table]]:
        paths = sorted(folder.glob("part-*.parquet"), key=_fragment_number) if folder.is_dir() else []
        held = [] if self._buffer is None else [t for _, t in sorted(self._buffer[folder].items())]
        return paths, [_read(p, schema, what) for p in paths] + held

    def _table(self, compacted: Path, folder: Path, schema: pa.Schema, what: str,
               sort: list[str]) -> tuple[pa.Table, list[Path]]:
        paths, fragments = self._fragments(folder, schema, what)
        old = _read(compacted, schema, what) if compacted.exists() else None
        if what == "trial":  # two fragments of one trial (never written so): the later file wins
            latest = {}
            for table in fragments:
                for i, n in enumerate(table.column("number").to_pylist()):
                    latest[n] = table.slice(i, 1)
            fragments = list(latest.values())
        return _merge(old, fragments, schema, sort), paths

    def trials(self) -> pa.Table:
        """Every trial once (its latest write), sorted by number, in TRIAL_SCHEMA."""
        with self._locked(exclusive=False):
            return self._trials()

    def epochs(self) -> pa.Table:
        """Every trial's latest curve, sorted by (number, n_train, epoch), in EPOCH_SCHEMA (see `tables`)."""
        return self.tables()[1]

    def tables(self) -> tuple[pa.Table, pa.Table]:
        """(trials, epochs), read together under one lock. Epochs are only of trials that have a row (a
        trial's curve is written just before its row: a reader in between, or a crash there, must not
        see epochs of a trial the trials table does not hold)."""
        with self._locked(exclusive=False):
            trials = self._trials()
            epochs = self._table(self.epochs_path, self.epochs_dir, EPOCH_SCHEMA, "epoch", ["number", "n_train", "epoch"])[0]
        return trials, epochs.filter(pc.is_in(epochs.column("number"), value_set=trials.column("number")))

    def _trials(self) -> pa.Table:
        return self._table(self.trials_path, self.trials_dir, TRIAL_SCHEMA, "trial", ["number"])[0]

    # maintenance
    def compact(self) -> None:
        """Merge the fragments into trials.parquet / epochs.parquet, then delete them.

        Each compacted table is renamed into place before any fragment it holds is deleted, so
        a crash leaves the fragments, the compacted rows, or both, and readers deduplicate.
        """
        with self._locked(exclusive=True):
            for folder in (self.folder, self.trials_dir, self.epochs_dir):  # leftovers of crashed writes
                if folder.is_dir():
                    for tmp in folder.glob(".*.tmp"):
                        tmp.unlink(missing_ok=True)
            for compacted, folder, schema, what, sort in (
                (self.trials_path, self.trials_dir, TRIAL_SCHEMA, "trial", ["number"]),
                (self.epochs_path, self.epochs_dir, EPOCH_SCHEMA, "epoch", ["number", "n_train", "epoch"]),
            ):
                held = self._buffer[folder] if self._buffer is not None else {}
                table, paths = self._table(compacted, folder, schema, what, sort)
                if not paths and not held and compacted.exists():
                    continue
                atomic_write(compacted, functools.partial(pq.write_table, table))
                held.clear()
                for path in paths:
                    path.unlink(missing_ok=True)

    def export(self, dest: str | Path, format: Literal["parquet", "csv"] = "parquet") -> list[Path]:
        """Write <dest>/trials.<ext> and <dest>/epochs.<ext>; return their paths.

        In CSV, list columns (`kinds`) are JSON arrays and times are ISO 8601 in UTC.
        """
        if format not in ("parquet", "csv"):
            raise ValueError(f"export format {format!r}: expected parquet or csv")
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        out = []
        for name, table in zip(("trials", "epochs"), self.tables()):
            path = dest / f"{name}.{format}"
            if format == "parquet":
                atomic_write(path, functools.partial(pq.write_table, table))
            else:
                frame = table.to_pandas()
                for field in table.schema:
                    if pa.types.is_list(field.type):
                        frame[field.name] = [None if v is None else json.dumps(list(v))
                                             for v in frame[field.name]]
                atomic_write(path, functools.partial(frame.to_csv, index=False))
            out.append(path)
        return out

