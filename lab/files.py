"""Crash-safe file writes shared by the study store, the run table, the scaling tables and the
dashboards (a reader never sees a half-written file), and the advisory lock writers share."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import tempfile
import time
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


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# how a full disk reads in the errors of OSError, SQLite, safetensors (Rust) and torch's writer
NO_SPACE_TEXT = ("No space left", "[Errno 28]", "os error 28", "code: 28", "Disk quota exceeded", "os error 122",
                 "database or disk is full")


def is_no_space(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from, is a full disk (or quota)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
            return True
        if any(text in str(error) for text in NO_SPACE_TEXT):
            return True
        error = error.__cause__ or error.__context__
    return False


class LockHeld(Exception):
    """`hold_lock` found the lock taken; `holder` is what its holder wrote into the lock file."""

    def __init__(self, path: Path, holder: str):
        self.path, self.holder = path, holder
        super().__init__(f"{path} is held by {holder}")


@contextlib.contextmanager
def hold_lock(path: str | Path, what: str = "") -> Iterator[str | None]:
    """Hold an exclusive, non-blocking flock on `path` for the block, writing this process's host,
    pid, start time and `what` into the file; LockHeld (with what the holder wrote) when another
    process holds it. The kernel releases a flock when its process dies (kill -9 included), so a
    dead holder's lock is free: the block then gets the dead holder's line (None if there was none).
    The file stays after the block: its content is only informative, the flock is the lock."""
    path = Path(path)
    fh = open(path, "a+")   # not "w": truncating before the lock would erase the holder's line
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            fh.seek(0)
            raise LockHeld(path, fh.read().strip() or "another process (which wrote no details)") from None
        fh.seek(0)
        previous = fh.read().strip() or None
        fh.seek(0)
        fh.truncate()
        with contextlib.suppress(OSError):   # a full disk: the lock holds without its informative line
            fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                     + (f" ({what})" if what else "") + "\n")
            fh.flush()
        try:
            yield previous
        finally:
            with contextlib.suppress(OSError):
                fh.seek(0)
                fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        with contextlib.suppress(OSError):   # close() flushes: a write that failed fails again here
            fh.close()


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
