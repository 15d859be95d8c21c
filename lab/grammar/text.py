"""The one-line textual form of a Spec.

    @224 | conv(c=64,k=7,s=2),bn,relu,maxpool | bottleneck 3x256, 4x512/2, 6x1024/2, 3x2048/2 | gap,fc
    @32x224 | patch(p=4,pt=2,c=96),ln | swin(wt=8) 2x96, 2x192/merge | ln,gap,fc

Sections are separated by ``|``: the input resolution (``@FRAMESxRES`` for a video model), the stem ops, one or more stage groups
(a block followed by its stages ``DEPTHxWIDTH[/TRANSITION]``), and the head ops. An element is
``kind`` or ``kind(key=value,...)``; a transition is a stride (``/2``), one op (``/merge``) or
several in parentheses (``/(ln,conv(k=2,s=2))``). ``format`` writes the canonical form:
defaults omitted, parameters in declaration order, consecutive stages with the same block
grouped; ``parse(format(s)) == s`` for every valid spec.
"""

from __future__ import annotations

import re
from typing import Any, cast

from lab.errors import SpecError
from lab.grammar.spec import Spec, Stage, make_kind
from lab.kinds import Block, Kind, Op

# digits are ASCII: Python's \d, int() and str.isdigit() also take other scripts' digits ('𝟗', '٣')
_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_INT = re.compile(r"[-+]?[0-9]+$")
_DIGITS = re.compile(r"[0-9]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STAGE = re.compile(r"([0-9]+)x([0-9]+)")
_NOT_ASCII = re.compile(r"[^\x00-\x7f]")
MAX_NUMBER = 40   # characters of one number (Python refuses int() of over 4300 digits with a ValueError)


class _Parser:
    """Recursive descent over the raw string, remembering the column of every field."""

    def __init__(self, text: str):
        self.text = text
        self.i = 0
        self.cols: dict[str, int] = {}

    # --- scanning ---------------------------------------------------------------------
    def fail(self, message: str, i: int | None = None) -> SpecError:
        return SpecError(message, col=(self.i if i is None else i) + 1)

    def ws(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in " \t":
            self.i += 1

    def peek(self) -> str:
        self.ws()
        return self.text[self.i] if self.i < len(self.text) else ""

    def found(self) -> str:
        ch = self.peek()
        return f"found {ch!r}" if ch else "found the end of the text"

    def expect(self, ch: str, what: str) -> None:
        if self.peek() != ch:
            raise self.fail(f"expected {what}, {self.found()}")
        self.i += 1

    def ident(self, what: str) -> tuple[str, int]:
        self.ws()
        m = _IDENT.match(self.text, self.i)
        if not m:
            raise self.fail(f"expected {what}, {self.found()}")
        self.i = m.end()
        return m.group(), m.start()

    def number(self, text: str, start: int) -> str:
        """`text`, a number token at `start`, when it is not too long to be one."""
        if len(text) > MAX_NUMBER:
            raise self.fail(f"a number of {len(text)} characters (at most {MAX_NUMBER})", start)
        return text

    def value(self) -> Any:
        self.ws()
        m = _NUMBER.match(self.text, self.i)
        if m and not _IDENT.match(self.text, m.end()):
            self.i = m.end()
            tok = self.number(m.group(), m.start())
            return int(tok) if _INT.match(tok) else float(tok)
        m = _IDENT.match(self.text, self.i)
        if m:
            self.i = m.end()
            return m.group()
        raise self.fail(f"expected a value (a number or a name), {self.found()}")

    def integer(self, what: str, path: str) -> int:
        self.ws()
        m = _DIGITS.match(self.text, self.i)
        if not m:
            raise self.fail(f"expected {what}, {self.found()}")
        self.cols[path] = m.start() + 1
        self.i = m.end()
        return int(self.number(m.group(), m.start()))

    # --- grammar --------------------------------------------------------------------
    def call(self, role: str, path: str) -> Kind:
        name, col = self.ident(f"{'a block' if role == 'block' else 'an op'} name")
        self.cols[path] = col + 1
        args: dict[str, Any] = {}
        if self.peek() == "(":
            self.i += 1
            while True:
                key, kcol = self.ident("a parameter name")
                if key in args:
                    raise self.fail(f"parameter {key!r} given twice", kcol)
                self.expect("=", f"'=' after {key}")
                self.ws()
                self.cols[f"{path}.{key}"] = self.i + 1
                args[key] = self.value()
                if self.peek() == ",":
                    self.i += 1
                    continue
                self.expect(")", "',' or ')' after a parameter")
                break
        return self.kind(name, args, role, path)

    def kind(self, name: str, args: dict, role: str, path: str) -> Kind:
        try:
            return make_kind(name, args, role, path)
        except SpecError as e:
            raise e.with_col(self.col_of(e.path)) from None

    def col_of(self, path: str | None) -> int | None:
        while path:
            if path in self.cols:
                return self.cols[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else None
        return None

    def ops(self, path: str, first: Kind | None = None) -> list[Kind]:
        ops = [first] if first is not None else [self.call("op", f"{path}[0]")]
        while self.peek() == ",":
            self.i += 1
            ops.append(self.call("op", f"{path}[{len(ops)}]"))
        return ops

    def stage(self, block: Kind, block_col: int, si: int, group_cols: dict[str, int]) -> Stage:
        path = f"stages[{si}]"
        self.ws()
        m = _STAGE.match(self.text, self.i)
        if not m:
            raise self.fail(f"expected a stage DEPTHxWIDTH (like 3x256), {self.found()}")
        self.cols[path] = m.start() + 1
        self.cols[f"{path}.depth"] = m.start(1) + 1
        self.cols[f"{path}.width"] = m.start(2) + 1
        self.cols[f"{path}.block"] = block_col
        for key, col in group_cols.items():
            self.cols[f"{path}.block.{key}"] = col
        depth, width = (int(self.number(m.group(k), m.start(k))) for k in (1, 2))
        self.i = m.end()
        stride, down = 1, []
        if self.peek() == "/":
            self.i += 1
            ch = self.peek()
            if ch and ch in "0123456789":
                stride = self.integer("a stride", f"{path}.stride")
            elif ch == "(":
                self.i += 1
                down = self.ops(f"{path}.down")
                self.expect(")", "',' or ')' closing the transition")
            else:
                down = [self.call("op", f"{path}.down[0]")]
        try:  # Stage checks that the block is a Block and the transition's kinds are Ops
            return Stage(cast(Block, block), depth, width, stride, cast(tuple[Op, ...], tuple(down)))
        except SpecError as e:
            raise e.at(path).with_col(self.col_of(e.at(path).path)) from None

    def spec(self) -> Spec:
        self.expect("@", "'@' and the input resolution (like @224) at the start")
        res, frames = self.integer("the input resolution after '@'", "res"), 1
        if self.text.startswith("x", self.i):  # @FRAMESxRES: a video model
            self.i += 1
            self.cols["frames"] = self.cols.pop("res")
            frames, res = res, self.integer("the input resolution after '@FRAMESx'", "res")
        self.expect("|", "'|' after the resolution")
        stem = self.ops("stem")
        stages: list[Stage] = []
        head: list[Kind] | None = None
        while True:
            self.expect("|", "'|' or ',' between sections" if self.peek() else "'|' and a head (like | gap,fc)")
            self.ws()
            start = self.i
            group = self.starts_group()
            first = self.call("block" if group else "op", f"stages[{len(stages)}].block" if group else "head[0]")
            if self.starts_stage():
                group_cols = {k.split(".")[-1]: v for k, v in self.cols.items()
                              if k.startswith(f"stages[{len(stages)}].block.")}
                stages.append(self.stage(first, start + 1, len(stages), group_cols))
                while self.peek() == ",":
                    self.i += 1
                    stages.append(self.stage(first, start + 1, len(stages), group_cols))
                continue
            head = self.ops("head", first)
            break
        if self.peek():
            raise self.fail(f"expected the end after the head, {self.found()}")
        if not stages:
            raise SpecError("expected at least one stage group (like | basic 2x64 |) between stem and head",
                            col=len(self.text))
        try:  # Spec checks that the stem's and the head's kinds are Ops
            return Spec(res, cast(tuple[Op, ...], tuple(stem)), tuple(stages), cast(tuple[Op, ...], tuple(head)), frames)
        except SpecError as e:
            raise e.with_col(self.col_of(e.path)) from None

    def starts_group(self) -> bool:
        """Is the section at the cursor a stage group (a call followed by DEPTHxWIDTH)?"""
        save = self.i
        try:
            self.ident("")
            if self.peek() == "(":
                depth = 0
                while self.i < len(self.text):
                    ch = self.text[self.i]
                    depth += (ch == "(") - (ch == ")")
                    self.i += 1
                    if depth == 0:
                        break
            return self.starts_stage()
        except SpecError:
            return False
        finally:
            self.i = save

    def starts_stage(self) -> bool:
        self.ws()
        return bool(_STAGE.match(self.text, self.i))


def parse(text: str) -> Spec:
    """Parse the one-line textual form into a validated Spec (SpecError names the column)."""
    if not isinstance(text, str):
        raise SpecError(f"expected grammar text, got {type(text).__name__}")
    if "\n" in text.strip():
        raise SpecError("grammar text is one line", col=text.index("\n") + 1)
    bad = _NOT_ASCII.search(text)
    if bad:   # names are [A-Za-z0-9_], numbers [0-9]: '@2𝟗4' is not '@294'
        raise SpecError(f"unexpected character {bad.group()!r} (U+{ord(bad.group()):04X}): grammar text is ASCII",
                        col=bad.start() + 1)
    return _Parser(text).spec()
