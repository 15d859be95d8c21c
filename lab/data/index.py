"""The index of an image folder, built once and cached: every image's relative path, label, file
size and mtime (from a cheap `os.scandir` walk) and its header's width, height and mode (the
expensive part: one file open each). A later load walks the folder again (names and stat only),
reuses the cached header of every file whose path, size and mtime are unchanged and reads only
the others; the cache is rewritten when anything changed.

The cache lives in the folder (`PATH/.lab-index.parquet`), or, when the folder is not writable,
under `$LAB_HOME/cache/index/` (else `~/.cache/lab/index/`) in a file named by a hash of the
folder's absolute path. A cache that cannot be read is ignored (one warning line) and rebuilt;
one that cannot be written is skipped (one warning line).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lab.data.decode import EXTENSIONS
from lab.errors import DataError, first_line

VERSION = 1
NAME = ".lab-index.parquet"


def cache_dir() -> str:
    """Where caches of folders the lab may not write into live: $LAB_HOME/cache, else ~/.cache/lab."""
    home = os.environ.get("LAB_HOME")
    return os.path.join(home, "cache") if home else os.path.join(os.path.expanduser("~"), ".cache", "lab")


def home_cache(key: str, suffix: str) -> str:
    """The file in the home cache for `key` (a folder's absolute path, plus options)."""
    return os.path.join(cache_dir(), "index", hashlib.sha256(key.encode()).hexdigest()[:20] + suffix)


def warn(message: str) -> None:
    print(f"lab: warning: {message}", file=sys.stderr)


@dataclass
class Listing:
    """What a walk of the folder finds, in the dataset's item order (class by class, each class's
    files sorted, folders depth-first): relative paths, labels, sizes (bytes) and mtimes (ns)."""

    classes: tuple[str, ...]
    paths: list[str]
    labels: list[int]
    sizes: list[int]
    mtimes: list[int]


def _walk(folder: str, rel: str, out: Listing, label: int) -> None:
    """Files of `folder` (sorted, images only, no dot-files) then its subfolders (sorted, no
    dot-folders, symlinks followed): the order `os.walk(folder, followlinks=True)` gives."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as err:
        raise DataError(f"cannot list {folder} ({err.strerror or type(err).__name__})") from None
    dirs = []
    for e in entries:
        if e.name.startswith("."):
            continue
        if e.is_dir():
            dirs.append(e)
        elif e.name.lower().endswith(EXTENSIONS):
            try:
                st = e.stat()
            except OSError as err:  # a broken link, a file gone meanwhile
                raise DataError(f"{e.path}: cannot read ({err.strerror or type(err).__name__})") from None
            out.paths.append(f"{rel}/{e.name}")
            out.labels.append(label)
            out.sizes.append(st.st_size)
            out.mtimes.append(st.st_mtime_ns)
    for d in dirs:
        _walk(d.path, f"{rel}/{d.name}", out, label)


def walk(root: str, classes: list[str]) -> tuple[Listing, list[int]]:
    """The listing of every class folder, and each class's count of images."""
    out = Listing(tuple(classes), [], [], [], [])
    counts = []
    for c, cls in enumerate(classes):
        before = len(out.paths)
        _walk(os.path.join(root, cls), cls, out, c)
        counts.append(len(out.paths) - before)
    return out, counts


@dataclass
class Heads:
    """What the headers say, one entry per listed file: width, height (int arrays), PIL mode."""

    width: np.ndarray
    height: np.ndarray
    mode: np.ndarray  # of str

    @staticmethod
    def of(rows: list[tuple[int, int, str]]) -> Heads:
        w, h, m = zip(*rows, strict=True) if rows else ((), (), ())
        return Heads(np.asarray(w, np.int64), np.asarray(h, np.int64), np.asarray(m, object))

    def rows(self) -> list[tuple[int, int, str]]:
        return list(zip(self.width.tolist(), self.height.tolist(), self.mode.tolist(), strict=True))


def _read(file: str, owner: str | None) -> tuple[list[str], np.ndarray, np.ndarray, Heads] | None:
    """(paths, sizes, mtimes, heads) a cache file holds; None when it is absent or not this
    folder's (a stale version, or a home cache of another folder); a warning and None when it is
    unreadable."""
    if not os.path.exists(file):
        return None
    try:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        table = pq.read_table(file)
        meta = json.loads((table.schema.metadata or {})[b"lab"])
        if meta.get("version") != VERSION or (owner is not None and meta.get("root") != owner):
            return None
        num = {k: table.column(k).to_numpy().astype(np.int64) for k in ("size", "mtime", "width", "height")}
        mode = table.column("mode").combine_chunks()
        if not hasattr(mode, "dictionary"):
            mode = pc.dictionary_encode(mode)
        modes = np.asarray(mode.dictionary.to_pylist(), object)[mode.indices.to_numpy(zero_copy_only=False)]
        return (table.column("path").to_pylist(), num["size"], num["mtime"],
                Heads(num["width"], num["height"], modes))
    except Exception as e:  # a truncated or foreign file: rebuild rather than fail
        warn(f"ignoring the unreadable index cache {file} ({type(e).__name__}: {first_line(e)[:120]}); rebuilding it")
        return None


def _write(file: str, root: str | None, listing: Listing, heads: Heads) -> None:
    """Write the cache atomically (a temporary file renamed over it): concurrent loads are safe."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "path": pa.array(listing.paths, pa.string()), "label": pa.array(listing.labels, pa.int32()),
        "size": pa.array(listing.sizes, pa.int64()), "mtime": pa.array(listing.mtimes, pa.int64()),
        "width": pa.array(heads.width, pa.int32()), "height": pa.array(heads.height, pa.int32()),
        "mode": pa.array(heads.mode.tolist(), pa.string()).dictionary_encode(),
    }).replace_schema_metadata({"lab": json.dumps({"version": VERSION, "root": root, "classes": list(listing.classes)})})
    os.makedirs(os.path.dirname(file), exist_ok=True)
    tmp = f"{file}.{os.getpid()}.tmp"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, file)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def candidates(root: str) -> list[tuple[str, str | None]]:
    """(cache file, the root it must name) in the order tried: in the folder (any root: the folder
    may have moved), then the home cache (its own folder only)."""
    return [(os.path.join(root, NAME), None), (home_cache(root, ".parquet"), root)]


def headers(root: str, listing: Listing, read: Callable[[list[int]], list[tuple[int, int, str]]],
            cache: bool = True) -> Heads:
    """What the header of every listed file says: from the cache where the file is unchanged,
    else by `read(positions)` (which reads those files' headers); the cache rewritten if needed."""
    known: dict[tuple[str, int, int], tuple[int, int, str]] = {}  # (path, size, mtime) -> header
    sizes, mtimes = np.asarray(listing.sizes, np.int64), np.asarray(listing.mtimes, np.int64)
    for file, owner in candidates(root) if cache else []:
        got = _read(file, owner)
        if got is None:
            continue
        paths, s, t, heads = got
        if np.array_equal(s, sizes) and np.array_equal(t, mtimes) and paths == listing.paths:
            return heads  # unchanged: the common case, compared as whole arrays
        known.update(zip(zip(paths, s.tolist(), t.tolist(), strict=True), heads.rows(), strict=True))
    keys = list(zip(listing.paths, listing.sizes, listing.mtimes, strict=True))
    missing = [i for i, k in enumerate(keys) if k not in known]
    new = dict(zip(missing, read(missing), strict=True)) if missing else {}
    heads = Heads.of([new[i] if i in new else known[k] for i, k in enumerate(keys)])
    if cache:
        _store(root, listing, heads)
    return heads


def _store(root: str, listing: Listing, heads: Heads) -> None:
    """The cache in the folder, else in the home cache; a warning when neither can be written."""
    errors = []
    for file, owner in candidates(root):
        try:
            _write(file, owner, listing, heads)
            return
        except OSError as e:
            errors.append(f"{file}: {e.strerror or type(e).__name__}")
    warn(f"cannot write the index cache of {root} ({'; '.join(errors)}); the next load reads every header again")


def summary(heads: Heads, paths: list[str]) -> tuple[dict[tuple[int, int], str], list[str]]:
    """The sizes seen, each with the first file of that size, and the distinct modes: what
    `decode.Scan` gathers, computed from the index without a Python pass per file."""
    if not len(heads.width):
        return {}, []
    pairs, first = np.unique(np.stack([heads.width, heads.height], 1), axis=0, return_index=True)
    order = np.argsort(first)  # in file order, as Scan.add meets them
    sizes = {(int(pairs[i][0]), int(pairs[i][1])): paths[first[i]] for i in order}
    return sizes, sorted(set(heads.mode.tolist()))


def read_json(files: list[str], match: dict) -> dict | None:
    """The first of `files` that holds a JSON cache of this version whose `match` fields agree;
    None when none does (an unreadable one: a warning, then the next)."""
    for file in files:
        if not os.path.exists(file):
            continue
        try:
            with open(file) as f:
                got = json.load(f)
            if not isinstance(got, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            warn(f"ignoring the unreadable index cache {file} ({type(e).__name__}: {first_line(e)[:120]}); rebuilding it")
            continue
        if got.get("version") == VERSION and all(got.get(k) == v for k, v in match.items()):
            return got
    return None


def write_json(files: list[str], data: dict) -> None:
    """Write a small JSON cache atomically to the first of `files` that can be written; a warning
    when none can."""
    errors = []
    for file in files:
        tmp = f"{file}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(file), exist_ok=True)
            with open(tmp, "w") as f:
                json.dump({"version": VERSION, **data}, f)
            os.replace(tmp, file)
            return
        except OSError as e:
            errors.append(f"{file}: {e.strerror or type(e).__name__}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    warn(f"cannot write the index cache ({'; '.join(errors)}); the next load reads every header again")
