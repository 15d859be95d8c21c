"""Run records: one row per training run in a Parquet table with a fixed, documented schema.

Appends are atomic: the table is rewritten to a temporary file beside it and renamed over it,
under an exclusive lock, so a crash or a concurrent writer never leaves a half-written table.

The run, trial and benchmark tables share one vocabulary (README "Result schema"): `family` is
`lab.catalog.family_of`, states are the trial table's words, times are timestamp[us, tz=UTC].
A table written before that (no VOCABULARY_KEY in its schema metadata) migrates as it is read
(`read_records`, `migrate_family`).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lab.errors import LabError
from lab.files import atomic_write, file_lock
from lab.train.recipes import Recipe

# schema metadata of a table written in the current vocabulary (an older one migrates on read)
VOCABULARY_KEY, VOCABULARY = b"lab.vocabulary", b"2"
TIME = pa.timestamp("us", tz="UTC")   # every time column of every lab table
FAMILY = ("family", pa.string(), "named family of a named point, also scaled (lab.catalog: resnet for resnet18 and "
                                 "resnet18@32px,w=0.25), else its distinct block kinds in the order of "
                                 "lab.kinds.MIXER_FAMILIES, joined by '+' (basic, mbconv+mhsa)")


def _arrow(hint: typing.Any) -> pa.DataType:
    """The Arrow type of a Recipe field's annotation (str, int, float, bool, each optionally | None)."""
    base = next(a for a in (typing.get_args(hint) or (hint,)) if a is not type(None))
    return {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}[base]


_HINTS = typing.get_type_hints(Recipe)
# every field of lab.train.recipes.Recipe, one struct field each (null in a probe row: it has no recipe)
RECIPE_TYPE = pa.struct([pa.field(f.name, _arrow(_HINTS[f.name])) for f in dataclasses.fields(Recipe)])
# l2 as a string: the number given, or the rule that chose it ("0.03 x mean Gram eigenvalue", lab.train.probe)
PROBE_TYPE = pa.struct([pa.field("method", pa.string()), pa.field("l2", pa.string())])

# name, type, meaning (README "Result schema" is generated from the same list's meanings)
RUN_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("run_id", pa.string(), "unique id of the run (also its checkpoint folder name)"),
    ("started_at", TIME, "when the run started"),
    ("state", pa.string(), "complete, or failed (the loss stopped being finite; error says diverged: ...): "
                           "the trial table's words"),
    ("error", pa.string(), "why a run that is not complete stopped (diverged: WHERE); null when complete"),
    ("arch_id", pa.string(), "stable id of the grammar point (hash of its canonical text)"),
    ("text", pa.string(), "canonical grammar text of the trained point (at the trained resolution)"),
    FAMILY,
    ("params", pa.int64(), "parameters of the trained model (its classes and input channels)"),
    ("macs", pa.int64(), "multiply-accumulates per image (per clip, for a video model) at the trained resolution"),
    ("res", pa.int32(), "input resolution"),
    ("frames", pa.int32(), "frames per input clip of a video model; 1 for images (null in tables written before video)"),
    ("dataset", pa.string(), "dataset string (mnist5k, synthetic:20000, imagefolder:PATH, ...)"),
    ("fraction", pa.float64(), "fraction of the training split used"),
    ("n_train", pa.int64(), "training images used"),
    ("epochs", pa.int32(), "epochs asked for"),
    ("epochs_done", pa.int32(), "epochs completed"),
    ("batch_size", pa.int32(), "batch size"),
    ("lr", pa.float64(), "peak learning rate"),
    ("recipe", pa.string(), "recipe preset name"),
    ("recipe_fields", RECIPE_TYPE, "every field of the recipe it trained with (lab.train.recipes.Recipe), a struct; "
                                   "null for a probe"),
    ("probe", PROBE_TYPE, "a probe's settings: method (ridge or logistic) and l2 (the number, or the rule that chose "
                            "it); null for other runs"),
    ("seed", pa.int64(), "seed of initialization, data order and augmentation"),
    ("distill_from", pa.string(), "teacher checkpoint, if distilled"),
    ("init", pa.string(), "where the weights started: null (random), timm:NAME, or a checkpoint path"),
    ("shots", pa.int32(), "examples per class of a few-shot run (a transfer probe or fine-tune); null otherwise"),
    ("val_top1", pa.float64(), "top-1 accuracy on the validation split, in [0, 1]"),
    ("val_top5", pa.float64(), "top-5 accuracy on the validation split"),
    ("test_top1", pa.float64(), "top-1 accuracy on the test split"),
    ("test_top5", pa.float64(), "top-5 accuracy on the test split"),
    ("loss", pa.float64(), "mean training loss of the last epoch"),
    ("val_loss", pa.float64(), "mean cross-entropy on the validation split"),
    ("precision", pa.string(), "precision it trained in: 32, bf16-mixed or 16-mixed (null in tables written before "
                               "--precision, and for a probe)"),
    ("compile", pa.bool_(), "whether the training step ran through torch.compile (--compile)"),
    ("channels_last", pa.bool_(), "whether the model and its inputs were in channels_last memory format"),
    ("compile_seconds", pa.float64(), "a compiled run: seconds its first step took beyond the first epoch's median "
                                      "step (the compilation), inside train_seconds; null when not compiled"),
    ("train_seconds", pa.float64(), "seconds in training epochs (data, augmentation, steps; not evaluation)"),
    ("images_per_second", pa.float64(), "training images per second"),
    ("peak_memory", pa.int64(), "bytes: CUDA max allocated, or the process's peak resident memory on the CPU"),
    ("device", pa.string(), "cpu, or the GPU's name"),
    ("checkpoint", pa.string(), "path of the saved weights (.pt); null when none was written"),
    ("lab_version", pa.string(), "version of the lab that trained it"),
]
# the zero-cost proxies a study records per trial (computed by lab.train.proxies, columns zc_NAME)
PROXIES = ("synflow", "naswot", "grad_norm", "snip")

RUN_SCHEMA = pa.schema([pa.field(name, type_) for name, type_, _ in RUN_FIELDS],
                       metadata={VOCABULARY_KEY: VOCABULARY})
# added after the first tables were written: null in those
LATER_FIELDS = ("init", "shots", "frames", "precision", "compile", "channels_last", "compile_seconds")
# the columns of the first vocabulary, read into the current ones by `_migrate`
RENAMED = {"status": "state", "recipe_json": "recipe_fields"}


def append_record(path: str | Path, record: dict) -> None:
    """Append one run to the Parquet table at `path` (created if absent), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    missing = [name for name in RUN_SCHEMA.names if name not in record]
    if missing:
        raise ValueError(f"run record lacks {missing}")
    row = pa.Table.from_pylist([{k: record[k] for k in RUN_SCHEMA.names}], schema=RUN_SCHEMA)
    with file_lock(path.with_name(f".{path.name}.lock")):
        if path.exists():
            old = read_records(path)
            row = pa.concat_tables([old, row], promote_options="permissive").cast(RUN_SCHEMA)
        atomic_write(path, lambda tmp: pq.write_table(row, tmp))


def read_records(path: str | Path) -> pa.Table:
    """The run table at `path`, in RUN_SCHEMA's column order (an older table migrated: `_migrate`)."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise LabError(f"{path}: not a readable run table ({e})") from None
    if "status" in table.column_names or "recipe_json" in table.column_names:
        table = _migrate(table)
    for name in LATER_FIELDS + ("probe",):
        if name not in table.column_names:
            table = table.append_column(RUN_SCHEMA.field(name), pa.nulls(table.num_rows, RUN_SCHEMA.field(name).type))
    missing = [n for n in RUN_SCHEMA.names if n not in table.column_names]
    if missing:
        raise LabError(f"{path}: not a run table (missing column {missing[0]!r})")
    current = (table.schema.metadata or {}).get(VOCABULARY_KEY) == VOCABULARY
    table = table.select(RUN_SCHEMA.names).cast(RUN_SCHEMA)   # timestamp[s] (stored as ms) -> us
    return table if current else migrate_family(table)


def _migrate(table: pa.Table) -> pa.Table:
    """A run table of the first vocabulary in the current columns: status ok -> state complete,
    diverged -> failed with error "diverged: WHERE"; recipe_json (a JSON string) -> recipe_fields
    (unknown keys dropped, missing ones null), or -> probe for a probe row ({"method", "l2"})."""
    rows = table.to_pylist()
    for row in rows:
        status = row.pop("status", None)
        row["state"] = "complete" if status == "ok" else "failed" if status is not None else None
        if status not in (None, "ok") and not str(row.get("error") or "").startswith(f"{status}:"):
            row["error"] = f"{status}: {row.get('error') or 'no detail recorded'}"
        raw = row.pop("recipe_json", None)
        fields = json.loads(raw) if isinstance(raw, str) and raw else None
        row["recipe_fields"], row["probe"] = None, None
        if isinstance(fields, dict):
            kind = PROBE_TYPE if row.get("recipe") == "probe" else RECIPE_TYPE
            values = {f.name: fields.get(f.name) for f in kind}
            if kind is PROBE_TYPE and values["l2"] is not None:
                values["l2"] = str(values["l2"])
            row["probe" if kind is PROBE_TYPE else "recipe_fields"] = values
    types = {f.name: f.type for f in table.schema if f.name not in RENAMED}
    types.update(state=pa.string(), recipe_fields=RECIPE_TYPE, probe=PROBE_TYPE)
    return pa.Table.from_pylist(rows, schema=pa.schema([pa.field(n, types[n]) for n in rows[0]]) if rows else
                                pa.schema([pa.field(n, t) for n, t in types.items()]))


def migrate_family(table: pa.Table) -> pa.Table:
    """`table` (any lab table with `family` and `text`) with each row's family in the current
    vocabulary (lab.catalog.migrated_family: named families stay, other words are recomputed)."""
    if not table.num_rows or table.column("family").null_count == table.num_rows:
        return table
    from lab.catalog import migrated_family  # lazy: start-up time (lab.catalog imports torch; old tables only)

    words = [migrated_family(f, t) for f, t in zip(table.column("family").to_pylist(), table.column("text").to_pylist())]
    i = table.schema.get_field_index("family")
    return table.set_column(i, table.schema.field(i), pa.array(words, pa.string()))
