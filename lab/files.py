"""Crash-safe file writes shared by the study store, the run table, the scaling tables and the
dashboards (a reader never sees a half-written file), and the advisory lock writers share."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: str | Path, exclusive: bool = True, read_only_ok: bool = False) -> Iterator[None]:
    """Hold an advisory lock (flock) on the file `path` (created if absent) for the block.

    With `read_only_ok`, a shared lock whose file cannot be created (a read-only folder, where
    nobody can be writing) is skipped instead of failing."""
    try:
        fh = open(path, "a")
    except OSError:
        if exclusive or not read_only_ok:
            raise
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call `write(tmp)` for a temporary file beside `path`, then rename it over `path`
    (readable by all, as a plain file would be: mkstemp makes it owner-only)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
