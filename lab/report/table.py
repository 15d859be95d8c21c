"""Plain aligned text tables for the terminal."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

MIN_WRAP = 30   # the narrowest a wrapped column gets, however narrow the line


def wrap_cell(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` characters, broken at spaces only (a longer word keeps its
    own line): joined with single spaces, the lines give back the text of single-spaced words."""
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None,
           wrap: int | None = None, width: int | None = None) -> str:
    """`align` holds one of '<' or '>' per column (default: numbers right, text left). Column `wrap`
    (an index) is wrapped onto continuation lines so that lines fit in `width` characters (at least
    MIN_WRAP for that column), the other columns blank on them; without `width` nothing is wrapped."""
    cells = [[str(c) for c in r] for r in rows]
    if align is None:
        align = "".join(">" if rows and isinstance(rows[0][i], (int, float)) else "<" for i in range(len(headers)))
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = cells
    if wrap is not None and width is not None and cells:
        wrap = wrap % len(headers)
        others = sum(w for i, w in enumerate(widths) if i != wrap) + 2 * (len(headers) - 1)
        limit = max(MIN_WRAP, len(headers[wrap]), width - others)
        lines = []
        for r in cells:
            for k, piece in enumerate(wrap_cell(r[wrap], limit)):
                lines.append([piece if i == wrap else (c if k == 0 else "") for i, c in enumerate(r)])
        widths[wrap] = max([len(headers[wrap])] + [len(r[wrap]) for r in lines])
    fmt = lambda r: "  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines])
