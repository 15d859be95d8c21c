"""The lab's own console for a running study (`lab study create|resume`, `lab bench build`): one live
view on a terminal (rich), plain lines anywhere else (CI logs, pipes, files), nothing with --quiet.
The counting and the text are lab.study.progress's; this module only draws them."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from lab.study.progress import Progress, View, best_text, counts_text, state_of, time_text, trial_line


def study_view(quiet: bool = False, verbose: bool = False, stream: TextIO | None = None) -> View | None:
    """The view a study command shows on `stream` (stdout): None when quiet, a live one on a terminal,
    plain lines elsewhere; `verbose` adds a line per finished trial with its full grammar text."""
    if quiet:
        return None
    from rich.console import Console  # lazy: start-up time

    stream = stream or sys.stdout
    console = Console(file=stream, highlight=False)
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveView(console, verbose)
    return PlainView(stream, verbose)


def _opening(progress: Progress) -> str:
    s = progress.snapshot()
    what = "simulated trials" if progress.simulated else "trials"
    return (f"study {progress.name}: {max(0, s.budget - s.done)} {what} to go of {s.budget}, "
            f"{progress.concurrency} at a time" + (f"; Ray's own logs in {progress.logs}" if progress.logs else ""))


def _shows(row: dict | None, verbose: bool) -> bool:
    """A finished trial is shown; a rejected point (never trained) only when verbose."""
    return row is not None and (verbose or state_of(row) != "rejected")


class PlainView:
    """Plain lines, no terminal codes: one when the study starts, one per finished trial (with its text
    when verbose; rejected points too when verbose), and the totals at its end."""

    def __init__(self, stream: TextIO, verbose: bool = False):
        self.stream, self.verbose = stream, verbose

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def open(self, progress: Progress) -> None:
        self._print(_opening(progress))

    def update(self, progress: Progress, row: dict | None) -> None:
        if row is None or not _shows(row, self.verbose):
            return
        s = progress.snapshot()
        self._print(f"{trial_line(s, row, progress.objectives, self.verbose)}; {s.running} running, "
                    f"Pareto front {s.front}, {time_text(s)}")

    def close(self, progress: Progress) -> None:
        s = progress.snapshot()
        self._print(f"{counts_text(s)}; {time_text(s)}; {best_text(s, progress.objectives)}")


class LiveView:
    """A few lines redrawn in place (rich.live): a bar of the budget with the trials by state, the time
    spent and left, and the best point with the front's size. Verbose: a line per finished trial above
    it. What the study prints meanwhile (the lab's warnings) shows above the view."""

    def __init__(self, console, verbose: bool = False):
        self.console, self.verbose = console, verbose
        self.live: Any = None   # a rich.live.Live while open
        self.progress: Progress | None = None

    def open(self, progress: Progress) -> None:
        from rich.live import Live  # lazy: start-up time

        self.progress = progress
        self.console.print(_opening(progress), markup=False, soft_wrap=True)
        live = Live(get_renderable=self._render, console=self.console, refresh_per_second=2,
                    redirect_stdout=True, redirect_stderr=True)
        live.start()
        self.live = live

    def update(self, progress: Progress, row: dict | None) -> None:
        if self.verbose and row is not None and _shows(row, self.verbose):
            self.console.print(trial_line(progress.snapshot(), row, progress.objectives, True), markup=False,
                               soft_wrap=True)
        if self.live is not None:
            self.live.refresh()   # drawn now, not at the next tick (a print above it redraws the last drawing)

    def close(self, progress: Progress) -> None:
        if self.live is not None:
            self.live.stop()   # the last drawing stays, as the run's totals
            self.live = None

    def _render(self):
        from rich.console import Group  # lazy: start-up time
        from rich.progress_bar import ProgressBar  # lazy: start-up time
        from rich.table import Table  # lazy: start-up time
        from rich.text import Text  # lazy: start-up time

        assert self.progress is not None  # drawn only between open and close
        s = self.progress.snapshot()
        top = Table.grid(padding=(0, 1))
        top.add_row(ProgressBar(total=max(1, s.budget), completed=min(s.done, s.budget), width=30), Text(counts_text(s)))
        return Group(top, Text(time_text(s)), Text(best_text(s, self.progress.objectives)))
