"""A benchmark table: the lab's own training of many points of one space, one Parquet file, one row
per trained point with its sampled values, analytic costs, learning curve, seconds and zero-cost
proxies (the replay backend and `lab bench` read it; `lab bench build` writes it).

The file's schema metadata (key `lab.bench`) holds what the rows were trained under: the study's
settings (dataset, fraction, epochs, recipe, batch size, resolution, seed), the data's classes and
input channels, and the space's own definition (so a replay samples exactly the space the table
was built on, whatever the shipped YAML has become since).

    bench = load_bench("hybrid")                   # a shipped table, or a path to a .parquet
    row = bench.lookup(text, hparams)               # an exact point's row, or None
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lab import resources
from lab.errors import LabError
from lab.files import atomic_write
from lab.train.record import PROXIES, RUN_FIELDS, VOCABULARY, VOCABULARY_KEY, migrate_family

META_KEY = b"lab.bench"
FORMAT = 1   # bumped when the columns change meaning

RUN = {field[0]: field for field in RUN_FIELDS}
# name, type, meaning (README, "Benchmark tables"); a row is a trained trial, so most columns are a run's
BENCH_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("number", pa.int64(), "the trial number in the study that trained it"),
    ("state", pa.string(), "complete, or pruned (its curve stops at epochs_done)"),
    *(RUN[name] for name in ("arch_id", "text")),
    ("hparams", pa.string(), "JSON {recipe, vars}: the sampled hyperparameters and the space's variables"),
    RUN["family"],
    ("kinds", pa.list_(pa.string()), "block kinds its stages use"),
    ("layout", pa.string(), "isotropic or hierarchical"),
    ("stem", pa.string(), "conv or patch"),
    *(RUN[name] for name in ("params", "macs", "epochs_done", "val_top1", "val_top5", "test_top1", "test_top5",
                             "loss", "train_seconds")),
    ("worker_seconds", pa.float64(), "seconds the trial ran in its worker (build, proxies, set-up, training, evaluation)"),
    *(RUN[name] for name in ("images_per_second", "peak_memory")),
    ("curve_val_top1", pa.list_(pa.float64()), "top-1 validation accuracy after each epoch"),
    ("curve_loss", pa.list_(pa.float64()), "mean training loss of each epoch"),
    ("curve_seconds", pa.list_(pa.float64()), "cumulative training seconds after each epoch"),
    *(field for name in PROXIES for field in (
        (f"zc_{name}", pa.float64(), f"zero-cost proxy {name} of the untrained point"),
        (f"zc_{name}_seconds", pa.float64(), f"seconds {name} took"))),
]
BENCH_SCHEMA = pa.schema([pa.field(name, type_) for name, type_, _ in BENCH_FIELDS])
TRAINED = ("complete", "pruned")


class BenchError(LabError):
    """A benchmark table that cannot be found or read, or that does not fit what is asked of it."""


@dataclass
class Bench:
    """A loaded benchmark table: its rows and what they were trained under (`meta`)."""
    table: pa.Table
    meta: dict
    source: str                                     # the file it was read from
    _index: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        texts, hparams = self.table.column("text").to_pylist(), self.table.column("hparams").to_pylist()
        self._index = {key(t, h): i for i, (t, h) in enumerate(zip(texts, hparams))}

    @property
    def name(self) -> str:
        return Path(self.source).stem

    @property
    def epochs(self) -> int:
        return int(self.meta["settings"]["epochs"])

    def lookup(self, text: str, hparams: str) -> dict | None:
        """The row of the point (its grammar text and sampled values, as a trial row has them), or None."""
        i = self._index.get(key(text, hparams))
        return None if i is None else self.table.slice(i, 1).to_pylist()[0]

    def rows(self) -> list[dict]:
        return self.table.to_pylist()


def key(text: str, hparams: str) -> tuple[str, str]:
    """What identifies a point: its text and its sampled values (canonical JSON)."""
    return text, json.dumps(json.loads(hparams), sort_keys=True)


def make_table(trials: list[dict], epochs: dict[int, list[dict]], meta: dict) -> pa.Table:
    """The benchmark table of a study's trained trials (`trials`: its trial rows; `epochs`: each
    trial's epoch rows by number), in trial order, with `meta` in the schema's metadata."""
    rows = []
    for t in sorted(trials, key=lambda r: r["number"]):
        if t["state"] not in TRAINED:
            continue
        curve = sorted(epochs.get(t["number"], []), key=lambda e: e["epoch"])
        row = {name: t.get(name) for name in BENCH_SCHEMA.names if not name.startswith("curve_")}
        row["epochs_done"] = len(curve)
        row["curve_val_top1"] = [e["val_top1"] for e in curve]
        row["curve_loss"] = [e["loss"] for e in curve]
        row["curve_seconds"] = [e["seconds"] for e in curve]
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=BENCH_SCHEMA)
    # not sorted: a space's variables are read in order
    return table.replace_schema_metadata({META_KEY: json.dumps({"format": FORMAT, **meta}), VOCABULARY_KEY: VOCABULARY})


def save_bench(table: pa.Table, path: str | Path) -> Path:
    """Write `table` to `path` atomically (zstd-compressed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    return path


def bench_path(name: str | Path) -> Path:
    """The file of benchmark `name`: a path to a .parquet file, or the name of a shipped table."""
    path = Path(name).expanduser()
    if path.suffix == ".parquet" or path.exists():
        if not path.is_file():
            raise BenchError(f"benchmark {str(name)!r}: no such file")
        return path
    shipped = resources.shipped_benches()
    if str(name) not in shipped:
        known = ", ".join(sorted(shipped)) or "none"
        raise BenchError(f"benchmark {str(name)!r}: not a .parquet file and not a shipped benchmark (shipped: {known})")
    return shipped[str(name)]


_CACHE: dict[tuple[str, float], Bench] = {}


def load_bench(name: str | Path) -> Bench:
    """A benchmark table by path or shipped name (cached per file and modification time)."""
    path = bench_path(name)
    stamp = (str(path.resolve()), path.stat().st_mtime)
    if stamp in _CACHE:
        return _CACHE[stamp]
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise BenchError(f"benchmark {path}: not a readable Parquet file ({e})") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise BenchError(f"benchmark {path}: not a lab benchmark table (no {META_KEY.decode()} metadata; "
                         f"`lab bench build` writes them)")
    meta: dict[str, Any] = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise BenchError(f"benchmark {path}: format {meta.get('format')!r}, this lab reads format {FORMAT}: rebuild it")
    missing = [n for n in BENCH_SCHEMA.names if n not in table.column_names]
    if missing:
        raise BenchError(f"benchmark {path}: column {missing[0]!r} is missing")
    rows = table.select(BENCH_SCHEMA.names).cast(BENCH_SCHEMA)
    if (table.schema.metadata or {}).get(VOCABULARY_KEY) != VOCABULARY:   # built before one vocabulary
        rows = migrate_family(rows)
    bench = Bench(rows, meta, str(path))
    _CACHE[stamp] = bench
    return bench
