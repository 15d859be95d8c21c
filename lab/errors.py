"""Errors a user can cause. The CLI turns them into one line and exit code 2."""

from __future__ import annotations

from typing import Any


def first_line(error: BaseException, default: str = "") -> str:
    """The first line of `error`'s message: how a one-line error quotes its cause."""
    return (str(error).strip().splitlines() or [default])[0]


class LabError(Exception):
    """Base class of every error caused by user input (bad text, YAML, flags, data)."""

    exit_code = 2   # what the CLI exits with after printing the one-line message


class SpecError(LabError, ValueError):
    """An invalid grammar point.

    `path` names the field (``stages[1].block.g``); `col` is the 1-based column in the
    textual form when the point came from text. Both are optional; the message always
    says what was expected.
    """

    def __init__(self, message: str, path: str | None = None, col: int | None = None):
        self.message = message
        self.path = path
        self.col = col
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.col is not None:
            where.append(f"col {self.col}")
        if self.path:
            where.append(self.path if not where else f"({self.path})")
        return f"{' '.join(where)}: {self.message}" if where else self.message

    def at(self, prefix: str) -> SpecError:
        """The same error, its path prefixed by the enclosing field (``stages[2]``)."""
        path = prefix if not self.path else f"{prefix}.{self.path}" if not self.path.startswith("[") else prefix + self.path
        return SpecError(self.message, path, self.col)

    def with_col(self, col: int | None) -> SpecError:
        return SpecError(self.message, self.path, col if self.col is None else self.col)


class DataError(LabError):
    """A dataset that cannot be loaded as asked: unknown name, missing path, corrupt file, bad column."""


class TrainError(LabError):
    """A training run that cannot start or had to stop (bad recipe, NaN loss, unreadable checkpoint)."""

    record: dict[str, Any] | None = None  # a diverged run's row (train() sets it: studies keep failed trials)


class ScalingError(LabError):
    """A scaling-law fit that cannot give a number: too few training-set sizes, a zero error (its
    log is undefined), an error that rises with data beyond the noise, an unknown metric."""


class StudyError(LabError):
    """A study that cannot be created or resumed as asked: bad settings, a missing or repeated study."""


class StudyInterrupted(StudyError):
    """A study stopped by Ctrl-C or SIGTERM: its running trials were settled as interrupted."""

    exit_code = 130   # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


def check_mapping(entry: object, keys: tuple[str, ...], where: str, expected: str) -> dict:
    """`entry` when it is a mapping of known `keys` (an entry of a study's settings); else StudyError
    naming `where` and what was `expected`."""
    if not isinstance(entry, dict):
        raise StudyError(f"{where}: expected {expected}")
    unknown = sorted(set(entry) - set(keys))
    if unknown:
        raise StudyError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(keys)})")
    return entry
