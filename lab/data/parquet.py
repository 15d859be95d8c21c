"""`parquet:PATH[?image=COL&label=COL]`: a Parquet file, or a folder of them (read in sorted
order), with a column of encoded image bytes (binary, or a {bytes, path} struct as Hugging Face
image datasets ship it) and an integer label column."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from urllib.parse import parse_qsl

import numpy as np
import torch

from lab.data import index
from lab.data.decode import Scan, decode_many
from lab.data.imagefolder import Files, fits, on_device
from lab.errors import DataError, first_line

OPTIONS = {"image": "image", "label": "label"}  # option -> default column


def parse(spec: str) -> tuple[str, dict[str, str]]:
    """PATH and the column options of `PATH?image=img&label=fine_label`."""
    path, _, query = spec.partition("?")
    options = dict(OPTIONS)
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in OPTIONS:
            raise DataError(f"parquet: unknown option {key!r} in {spec!r} (known: {', '.join(OPTIONS)})")
        if not value:
            raise DataError(f"parquet: option {key!r} needs a column name")
        options[key] = value
    return path, options


def canonical(path: str, options: dict[str, str]) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items() if v != OPTIONS[k])
    return f"parquet:{path}" + (f"?{query}" if query else "")


def _files(name: str, path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DataError(f"{name}: no such file or directory {path}")
    found = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
                   if f.endswith(".parquet") and not f.startswith("."))
    if not found:
        raise DataError(f"{name}: no .parquet files in {path}")
    return found


class ParquetReader:
    """Decodes rows' images by global row index, a row group at a time (picklable: the open
    files and the few cached row groups stay behind in each process)."""

    CACHE = 8  # row groups kept per process

    def __init__(self, name: str, files: Sequence[str], image: str, size: int, mode: str, decoder: str = "pil"):
        import pyarrow.parquet as pq

        self.name, self.files, self.image, self.size, self.mode = name, list(files), image, size, mode
        self.decoder = decoder
        self.groups: list[tuple[int, int, int]] = []  # (file, row group, first global row)
        start = 0
        for f, file in enumerate(self.files):
            meta = pq.ParquetFile(file).metadata
            for g in range(meta.num_row_groups):
                self.groups.append((f, g, start))
                start += meta.row_group(g).num_rows
        self.n = start
        self.first = {f: s for f, g, s in reversed(self.groups)}  # each file's first global row
        self.starts = np.array([s for _, _, s in self.groups], dtype=np.int64)
        self._cache: OrderedDict = OrderedDict()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": OrderedDict()}

    def where(self, row: int) -> str:
        f, _, _ = self.groups[self._group_of(row)]
        return f"{self.name}: row {row} ({os.path.basename(self.files[f])} row {row - self.first[f]})"

    def _group_of(self, row: int) -> int:
        return int(np.searchsorted(self.starts, row, side="right")) - 1

    def column(self, group: int):
        """The image bytes of one row group, as a pyarrow binary array."""
        if group in self._cache:
            self._cache.move_to_end(group)
            return self._cache[group]
        import pyarrow as pa
        import pyarrow.parquet as pq

        f, g, _ = self.groups[group]
        col = pq.ParquetFile(self.files[f]).read_row_group(g, columns=[self.image]).column(0).combine_chunks()
        if pa.types.is_struct(col.type):
            col = col.field("bytes")
        self._cache[group] = col
        if len(self._cache) > self.CACHE:
            self._cache.popitem(last=False)
        return col

    def fetch(self, group: int, rows: Sequence[int]):
        """`(bytes, name)` for the given global rows of one row group."""
        col, start = self.column(group), self.groups[group][2]

        def get(j: int) -> tuple[bytes, str]:
            b = col[rows[j] - start].as_py()
            if not b:
                raise DataError(f"{self.where(rows[j])}: no image bytes")
            return b, self.where(rows[j])

        return get

    def encoded(self, items: Sequence[int]) -> list[tuple[bytes, str]]:
        """(image bytes, row name) of those rows: no decoding (a worker's part for decoder "cuda")."""
        idx = np.asarray(list(items), dtype=np.int64)
        out: list = [None] * len(idx)
        groups = np.searchsorted(self.starts, idx, side="right") - 1
        for group in np.unique(groups):
            at = np.flatnonzero(groups == group)
            get = self.fetch(int(group), idx[at].tolist())
            for j, a in enumerate(at.tolist()):
                out[a] = get(j)
        return out

    def read(self, items: Sequence[int], threads: int = 1) -> torch.Tensor:
        if self.decoder == "cuda":
            return on_device(self, list(items))
        idx = np.asarray(list(items), dtype=np.int64)
        out = torch.empty(len(idx), 1 if self.mode == "L" else 3, self.size, self.size, dtype=torch.uint8)
        groups = np.searchsorted(self.starts, idx, side="right") - 1
        for group in np.unique(groups):  # each row group read once per call
            at = np.flatnonzero(groups == group)
            rows = idx[at].tolist()
            out[torch.from_numpy(at)] = decode_many(len(rows), self.fetch(int(group), rows), self.size, self.mode, threads)
        return out


def load(name: str, path: str, options: dict[str, str], size: int | None, memory_budget: int, decoder: str = "pil") -> Files:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = _files(name, path)
    labels = []
    for file in files:
        try:
            schema = pq.read_schema(file)
        except Exception as e:
            why = first_line(e)[:120]
            raise DataError(f"{name}: {file} is not a readable Parquet file ({type(e).__name__}: {why})") from None
        present = ", ".join(schema.names)
        for what, hint in (("image", "?image=COL"), ("label", "?label=COL")):
            if options[what] not in schema.names:
                raise DataError(
                    f"{name}: no {what} column {options[what]!r} in {file} (columns: {present}; choose one with {hint})"
                )
        t = schema.field(options["image"]).type
        if not (pa.types.is_binary(t) or pa.types.is_large_binary(t)
                or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0)):
            raise DataError(f"{name}: column {options['image']!r} holds {t}, not encoded image bytes "
                            "(binary, or a struct with a 'bytes' field)")
        if not pa.types.is_integer(schema.field(options["label"]).type):
            raise DataError(
                f"{name}: label column {options['label']!r} holds {schema.field(options['label']).type}, not integers"
            )
        col = pq.read_table(file, columns=[options["label"]]).column(0)
        if col.null_count:
            raise DataError(f"{name}: label column {options['label']!r} in {file} has {col.null_count} empty values")
        labels.append(col.to_numpy().astype(np.int64))
    y = torch.from_numpy(np.concatenate(labels))
    if len(y) == 0:
        raise DataError(f"{name}: no rows")
    if int(y.min()) < 0:
        raise DataError(
            f"{name}: label column {options['label']!r} has a negative label ({int(y.min())}) at row {int(y.argmin())}"
        )

    scan = _scan(name, path, files, options["image"])
    side, mode = scan.square(size, name), scan.mode
    reader = ParquetReader(name, files, options["image"], side, mode, decoder)
    images = reader.read(range(reader.n), threads=0) if fits(reader.n, mode, side, memory_budget) else None
    k = int(y.max()) + 1
    return Files(y, tuple(str(c) for c in range(k)), k, side, mode, reader, images)


def _scan(name: str, path: str, files: list[str], image: str) -> Scan:
    """What every image's header says: from the index cache when no file changed (same names,
    sizes and mtimes; beside the data, else in the home cache: `lab.data.index`); else by
    reading every row's image bytes, then cached."""
    stats = [[f, os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files]
    local = os.path.join(path, ".lab-index.json") if os.path.isdir(path) else \
        os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lab-index.json")
    caches = [local, index.home_cache(f"parquet:{path}", ".json")]
    got = index.read_json(caches, {"image": image, "files": stats})
    scan = Scan()
    if got is not None:
        try:
            scan.note({(int(w), int(h)): str(what) for w, h, what in got["sizes"]}, ["L" if got["gray"] is True else "RGB"])
            return scan
        except (KeyError, TypeError, ValueError):
            index.warn(f"ignoring a malformed index cache of {path}; rebuilding it")
            scan = Scan()
    probe = ParquetReader(name, files, image, 1, "L")
    for group, (_, _, start) in enumerate(probe.groups):
        end = probe.starts[group + 1] if group + 1 < len(probe.groups) else probe.n
        scan.add(int(end - start), probe.fetch(group, range(start, int(end))))
    sizes = [[w, h, what] for (w, h), what in scan.sizes.items()]
    index.write_json(caches, {"image": image, "files": stats, "sizes": sizes, "gray": scan.gray})
    return scan
