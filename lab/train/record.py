"""Run records: one row per training run in a Parquet table with a fixed, documented schema.

Appends are atomic: the table is rewritten to a temporary file beside it and renamed over it,
under an exclusive lock, so a crash or a concurrent writer never leaves a half-written table.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lab.errors import LabError
from lab.files import atomic_write, file_lock

# name, type, meaning (README "Result schema" is generated from the same list's meanings)
RUN_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("run_id", pa.string(), "unique id of the run (also its checkpoint folder name)"),
    ("started_at", pa.timestamp("s", tz="UTC"), "when the run started"),
    ("status", pa.string(), "ok, or diverged (the loss stopped being finite)"),
    ("error", pa.string(), "why a run that is not ok stopped; null when ok"),
    ("arch_id", pa.string(), "stable id of the grammar point (hash of its canonical text)"),
    ("text", pa.string(), "canonical grammar text of the trained point (at the trained resolution)"),
    ("family", pa.string(), "named family, or the block kinds it is made of"),
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
    ("recipe_json", pa.string(), "every recipe field, as JSON"),
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
    ("train_seconds", pa.float64(), "seconds in training epochs (data, augmentation, steps; not evaluation)"),
    ("images_per_second", pa.float64(), "training images per second"),
    ("peak_memory", pa.int64(), "bytes: CUDA max allocated, or the process's peak resident memory on the CPU"),
    ("device", pa.string(), "cpu, or the GPU's name"),
    ("checkpoint", pa.string(), "path of the saved weights (.pt); null when none was written"),
    ("lab_version", pa.string(), "version of the lab that trained it"),
]
# the zero-cost proxies a study records per trial (computed by lab.train.proxies, columns zc_NAME)
PROXIES = ("synflow", "naswot", "grad_norm", "snip")

RUN_SCHEMA = pa.schema([pa.field(name, type_) for name, type_, _ in RUN_FIELDS])
LATER_FIELDS = ("init", "shots", "frames")  # added after the first tables were written: null in those


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
    """The run table at `path`, in RUN_SCHEMA's column order."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise LabError(f"{path}: not a readable run table ({e})") from None
    for name in LATER_FIELDS:
        if name not in table.column_names:
            table = table.append_column(RUN_SCHEMA.field(name), pa.nulls(table.num_rows, RUN_SCHEMA.field(name).type))
    missing = [n for n in RUN_SCHEMA.names if n not in table.column_names]
    if missing:
        raise LabError(f"{path}: not a run table (missing column {missing[0]!r})")
    return table.select(RUN_SCHEMA.names).cast(RUN_SCHEMA)
