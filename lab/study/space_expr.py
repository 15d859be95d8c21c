"""The small expression language of search spaces: conditions, counts and `{...}` in templates.

An expression is a restricted Python expression: numbers, strings, names, `+ - * / // % **`,
comparisons (`== != < <= > >= in not in`), `and or not`, `a if c else b`, tuples and lists,
subscripts (`mixer[-1]`, `width[:2]`) and the functions in `FUNCTIONS` (`trait(mixer, 'token_mixer')`
asks a registered kind for one of its traits). Nothing else parses (no
attributes, lambdas, comprehensions), so evaluating one can only read the names it was given.

A template is text with `{expression}` holes (`{{` and `}}` for literal braces); each hole's value
is written as grammar text: integers as digits, integral floats without `.0`, booleans as 1/0.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from typing import Any

from lab.errors import LabError
from lab.kinds import REGISTRY, traits


def trait(kind: str, name: str) -> Any:
    """The trait `name` of the registered kind `kind` (`trait(mixer, 'token_mixer')`; lab.kinds.traits)."""
    cls = REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ExprError(f"trait({kind!r}, {name!r}): {kind!r} is not a registered kind")
    values = traits(cls)
    if name not in values:
        raise ExprError(f"trait({kind!r}, {name!r}): unknown trait (traits: {', '.join(sorted(values))})")
    return values[name]


FUNCTIONS: dict[str, Any] = {
    "min": min, "max": max, "abs": abs, "int": int, "float": float, "round": round, "str": str,
    "len": len, "sum": sum, "any": any, "all": all, "ceil": math.ceil, "floor": math.floor, "trait": trait,
}

_NODES = (
    ast.Expression, ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
    ast.IfExp, ast.Call, ast.Tuple, ast.List, ast.Subscript, ast.Slice,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not,
    ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn,
)


class ExprError(Exception):
    """A malformed expression or template (raised at load) or one that fails to evaluate."""


class Expr:
    """One parsed expression; `names` are the variables and rules it reads."""

    def __init__(self, source: str):
        if not isinstance(source, str) or not source.strip():
            raise ExprError(f"expected an expression, got {source!r}")
        self.source = source.strip()
        try:
            tree = ast.parse(self.source, mode="eval")
        except SyntaxError as e:
            raise ExprError(f"invalid expression {self.source!r}: {e.msg}") from None
        names: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, _NODES):
                raise ExprError(f"{type(node).__name__.lower()} is not allowed in an expression ({self.source!r})")
            if isinstance(node, ast.Call):
                if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
                    raise ExprError(f"only the calls {', '.join(sorted(FUNCTIONS))} with positional "
                                    f"arguments are allowed ({self.source!r})")
            if isinstance(node, ast.Name):
                names.add(node.id)
            if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, str, bool, type(None))):
                raise ExprError(f"constant {node.value!r} is not allowed ({self.source!r})")
        self.names = frozenset(n for n in names if n not in FUNCTIONS)
        self._code = compile(tree, "<space>", "eval")

    def eval(self, scope: Mapping[str, Any]) -> Any:
        try:
            return eval(self._code, {"__builtins__": {}, **FUNCTIONS}, scope)
        except (ExprError, LabError):  # LabError: a rule read through the scope already failed, with its place
            raise
        except NameError as e:
            raise ExprError(f"{self.source!r}: {e.args[0] if e.args else e}") from None
        except Exception as e:
            raise ExprError(f"{self.source!r}: {type(e).__name__}: {e}") from None

    def __repr__(self) -> str:
        return f"Expr({self.source!r})"


class Template:
    """Text with `{expression}` holes."""

    def __init__(self, source: str):
        if not isinstance(source, str):
            raise ExprError(f"expected a template string, got {source!r}")
        self.source = source
        self.parts: list[str | Expr] = []
        text, i, n = [], 0, len(source)
        while i < n:
            ch = source[i]
            if ch in "{}" and i + 1 < n and source[i + 1] == ch:
                text.append(ch)
                i += 2
            elif ch == "}":
                raise ExprError(f"unmatched '}}' at character {i + 1} of template {source!r}")
            elif ch == "{":
                end = _hole_end(source, i)
                if text:
                    self.parts.append("".join(text))
                    text = []
                self.parts.append(Expr(source[i + 1:end]))
                i = end + 1
            else:
                text.append(ch)
                i += 1
        if text:
            self.parts.append("".join(text))
        self.names = frozenset().union(*(p.names for p in self.parts if isinstance(p, Expr)))

    def render(self, scope: Mapping[str, Any]) -> str:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(to_text(part.eval(scope), part.source))
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def _hole_end(source: str, start: int) -> int:
    quote = None
    for j in range(start + 1, len(source)):
        ch = source[j]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "{":
            raise ExprError(f"'{{' inside a hole at character {j + 1} of template {source!r}")
        elif ch == "}":
            return j
    raise ExprError(f"unclosed '{{' at character {start + 1} of template {source!r}")


def to_text(value: Any, source: str = "") -> str:
    """A value as grammar text."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, str):
        return value
    if value is None:
        raise ExprError(f"{{{source}}} is not set (a variable whose condition is false, or a rule without a case)")
    raise ExprError(f"{{{source}}} is a {type(value).__name__}, not a number or text: {value!r}")
