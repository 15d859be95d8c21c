"""The small expression language of search spaces: conditions, counts and `{...}` in templates.

An expression is a restricted Python expression: numbers, strings, names, `+ - * / // % **`,
comparisons (`== != < <= > >= in not in`), `and or not`, `a if c else b`, tuples and lists,
subscripts (`mixer[-1]`, `width[:2]`) and the functions in `FUNCTIONS` (`trait(mixer, 'token_mixer')`
asks a registered kind for one of its traits). Nothing else parses (no
attributes, lambdas, comprehensions), so evaluating one can only read the names it was given.

Evaluation is bounded, so that a space file cannot hang or exhaust a study: an operation whose
result would be too large is refused *before* it is computed (an integer beyond `MAX_INT_BITS`
bits, `9**9**9`; a string, list or tuple beyond `MAX_SIZE` characters/items, `'a'*10**9`), as is
`int()`/`float()` of long or non-ASCII text, and one evaluation (with the rules it reads) has at
most `MAX_STEPS` operations and `MAX_SECONDS` of wall clock. The source itself is bounded
(`MAX_SOURCE` characters, `MAX_NODES` syntax nodes) and its names are ASCII.

A template is text with `{expression}` holes (`{{` and `}}` for literal braces); each hole's value
is written as grammar text: integers as digits, integral floats without `.0`, booleans as 1/0.
"""

from __future__ import annotations

import ast
import contextvars
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lab.errors import LabError
from lab.kinds import REGISTRY, traits

MAX_SOURCE = 2_000      # characters of one expression (the shipped spaces' longest: under 100)
MAX_NODES = 500         # syntax nodes of one expression (the shipped spaces' largest: 33)
MAX_INT_BITS = 4_096    # an integer result of more bits is refused (no network needs a 1233-digit number)
MAX_SIZE = 100_000      # characters of a string, items (nested ones and their text included) of a list/tuple
MAX_TEXT_NUMBER = 100   # characters of text that int() / float() read
MAX_STEPS = 100_000     # operations of one evaluation, the rules it reads included
MAX_SECONDS = 2.0       # wall clock of one evaluation, the rules it reads included (checked at each operation)


class ExprError(Exception):
    """A malformed expression or template (raised at load) or one that fails to evaluate."""


class _Refused(Exception):
    """An operation over a bound; Expr.eval names the expression."""


# --- the budget of one evaluation -----------------------------------------------------------

@dataclass
class _Budget:
    deadline: float
    steps: int = 0


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("lab_expr_budget", default=None)


def _tick() -> None:
    """Count one operation against the current evaluation's budget."""
    budget = _BUDGET.get()
    if budget is None:  # an operation called outside Expr.eval (a test, a direct call): unbounded time
        return
    budget.steps += 1
    if budget.steps > MAX_STEPS:
        raise _Refused(f"more than {MAX_STEPS} operations in one evaluation")
    if time.perf_counter() > budget.deadline:
        raise _Refused(f"evaluation took more than {MAX_SECONDS:g} s")


# --- bounded values -------------------------------------------------------------------------

def _short(value: Any) -> str:
    """An operand for an error message: short, and cheap to write whatever its size."""
    if isinstance(value, str) and len(value) > 40:
        return f"{value[:30]!r}... ({len(value)} characters)"
    if isinstance(value, (list, tuple)) and _size(value, 40) > 40:
        return f"<a {type(value).__name__} of {len(value)} item{'s' if len(value) != 1 else ''}>"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<a {value.bit_length()}-bit integer>"
    text = repr(value)
    return f"({text})" if isinstance(value, (int, float)) and text.startswith("-") else text


_NUMBERS = {int, float, bool, type(None)}


def _size(value: Any, cap: int = MAX_SIZE) -> int:
    """The characters of a string, or the items of a list/tuple, nested items and their text
    included (what str() of it would roughly write); stops counting past `cap`."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, (list, tuple)):
        return 1
    total, stack = 0, [value]
    while stack:
        items = stack.pop()
        total += len(items)
        if total > cap:
            return total
        kinds = set(map(type, items))   # at C speed: most lists hold numbers only
        if kinds <= _NUMBERS:
            if int in kinds:   # about the decimal digits of its integers
                ints = items if kinds == {int} else [x for x in items if type(x) is int]
                total += sum(map(int.bit_length, ints)) // 3
            continue
        for x in items:
            if isinstance(x, str):
                total += len(x)
            elif isinstance(x, (list, tuple)):
                stack.append(x)
            elif type(x) is int:
                total += x.bit_length() // 3
        if total > cap:
            return total
    return total


def _long(what: str) -> _Refused:
    return _Refused(f"{what} would be longer than {MAX_SIZE} characters/items")


def _big(what: str) -> _Refused:
    return _Refused(f"{what} would have more than {MAX_INT_BITS} bits")


def _sized(value: Any, what: Callable[[], str]) -> Any:
    """`value` when within MAX_SIZE; `what()` describes it (formatted only for the error)."""
    if isinstance(value, (str, list, tuple)) and _size(value) > MAX_SIZE:
        raise _long(what())
    return value


def _bits(value: Any, a: Any, op: str, b: Any) -> Any:
    """`value` (the result of `a op b`) when within MAX_INT_BITS."""
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _big(f"{_short(a)} {op} {_short(b)}")
    return value


def _is_int(x: Any) -> bool:
    return isinstance(x, int)   # bool included: True * 'a' is 'a'


def _is_seq(x: Any) -> bool:
    return isinstance(x, (str, list, tuple))


def _add(a: Any, b: Any) -> Any:
    _tick()
    if _is_seq(a) and _is_seq(b) and type(a) is type(b):
        if _size(a) + _size(b) > MAX_SIZE:
            raise _long(f"{_short(a)} + {_short(b)}")
        return a + b
    return _bits(a + b, a, "+", b)


def _sub(a: Any, b: Any) -> Any:
    _tick()
    return _bits(a - b, a, "-", b)


def _mul(a: Any, b: Any) -> Any:
    _tick()
    seq, n = (a, b) if _is_seq(a) and _is_int(b) else (b, a) if _is_seq(b) and _is_int(a) else (None, 0)
    if seq is not None:
        if n > 0 and _size(seq) * n > MAX_SIZE:   # n can be huge: the product of two ints is cheap
            raise _long(f"{_short(a)} * {_short(b)}")
        return seq * n
    if _is_int(a) and _is_int(b) and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
        raise _big(f"{_short(a)} * {_short(b)}")
    return _bits(a * b, a, "*", b)


def _truediv(a: Any, b: Any) -> Any:
    _tick()
    return a / b


def _floordiv(a: Any, b: Any) -> Any:
    _tick()
    return a // b


# printf-style conversions: a `*` or a width/precision of more than 5 digits could ask for any length
_FORMAT = re.compile(r"%[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?")


def _mod(a: Any, b: Any) -> Any:
    _tick()
    if isinstance(a, str):   # 'w%d' % x: printf-style formatting
        for m in _FORMAT.finditer(a):
            if any(g == "*" or len(g) > 5 for g in m.groups() if g):
                raise _Refused(f"{_short(a)} % ...: a '*' or a width/precision over 99999 is not allowed")
        for arg in b if isinstance(b, tuple) else (b,):
            _sized(arg, lambda: f"{_short(a)} % {_short(b)}")
        return _sized(a % b, lambda: f"{_short(a)} % {_short(b)}")
    return a % b


def _pow(a: Any, b: Any) -> Any:
    _tick()
    if _is_int(a) and _is_int(b) and b > 0 and abs(a) > 1:
        # the result has about b * log2|a| bits: refuse before computing (9**9**9 would take hours)
        if b > MAX_INT_BITS or b * math.log2(abs(a)) > MAX_INT_BITS:
            raise _big(f"{_short(a)} ** {_short(b)}")
    return a ** b


_BINOPS: dict[type, str] = {
    ast.Add: "$add", ast.Sub: "$sub", ast.Mult: "$mul", ast.Div: "$truediv", ast.FloorDiv: "$floordiv",
    ast.Mod: "$mod", ast.Pow: "$pow",
}
# names no expression can spell ('$' is not in an identifier): the rewritten operators and displays
_HELPERS: dict[str, Callable[..., Any]] = {
    "$add": _add, "$sub": _sub, "$mul": _mul, "$truediv": _truediv, "$floordiv": _floordiv, "$mod": _mod, "$pow": _pow,
    "$list": lambda *items: _sized([*items], lambda: "the list"),
    "$tuple": lambda *items: _sized(items, lambda: "the tuple"),
}


# --- the functions --------------------------------------------------------------------------

def trait(kind: str, name: str) -> Any:
    """The trait `name` of the registered kind `kind` (`trait(mixer, 'token_mixer')`; lab.kinds.traits)."""
    _tick()
    cls = REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ExprError(f"trait({kind!r}, {name!r}): {kind!r} is not a registered kind")
    values = traits(cls)
    if name not in values:
        raise ExprError(f"trait({kind!r}, {name!r}): unknown trait (traits: {', '.join(sorted(values))})")
    return values[name]


def _number_text(fn: str, x: Any) -> None:
    if isinstance(x, (str, bytes)):
        if len(x) > MAX_TEXT_NUMBER:
            raise _Refused(f"{fn}() of a text of {len(x)} characters (at most {MAX_TEXT_NUMBER})")
        if not x.isascii():
            raise _Refused(f"{fn}({_short(x)}): a number is written with ASCII digits")


def _int(x: Any = 0, *base: Any) -> int:
    _tick()
    _number_text("int", x)
    value = int(x, *base)
    if value.bit_length() > MAX_INT_BITS:
        raise _big(f"int({_short(x)})")
    return value


def _float(x: Any = 0.0) -> float:
    _tick()
    _number_text("float", x)
    return float(x)


def _str(x: Any = "") -> str:
    _tick()
    _sized(x, lambda: f"str({_short(x)})")
    return str(x)


def _round(x: Any, *ndigits: Any) -> Any:
    _tick()
    if ndigits and _is_int(ndigits[0]) and abs(ndigits[0]) > MAX_INT_BITS:  # round(5, -10**9) computes 10**10**9
        raise _Refused(f"round({_short(x)}, {_short(ndigits[0])}): at most {MAX_INT_BITS} digits")
    return round(x, *ndigits)


def _sum(items: Any, start: Any = 0) -> Any:
    _tick()
    items = list(items)
    if all(isinstance(x, (int, float)) for x in (start, *items)):   # numbers: the builtin's own rounding
        total = sum(items, start)
        if isinstance(total, int) and total.bit_length() > MAX_INT_BITS:
            raise _big(f"sum({_short(items)})")
        return total
    total = start
    for x in items:   # each concatenation bounded: sum([big_list] * n, []) is refused, not built
        total = _add(total, x)
    return total


def _bounded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` counting one operation (its arguments are values an expression already holds, bounded)."""

    def call(*args: Any) -> Any:
        _tick()
        return fn(*args)

    call.__name__ = call.__qualname__ = fn.__name__
    call.__doc__ = fn.__doc__
    return call


# the callables an expression may call, by name; each counts against the evaluation's budget
FUNCTIONS: dict[str, Any] = {
    "min": _bounded(min), "max": _bounded(max), "abs": _bounded(abs), "int": _int, "float": _float,
    "round": _round, "str": _str, "len": _bounded(len), "sum": _sum, "any": _bounded(any), "all": _bounded(all),
    "ceil": _bounded(math.ceil), "floor": _bounded(math.floor), "trait": trait,
}

_NODES = (
    ast.Expression, ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare,
    ast.IfExp, ast.Call, ast.Tuple, ast.List, ast.Subscript, ast.Slice,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not,
    ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn,
)


class _Bound(ast.NodeTransformer):
    """Operators, list and tuple displays as calls of the bounded `_HELPERS`."""

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        return ast.copy_location(ast.Call(ast.Name(_BINOPS[type(node.op)], ast.Load()), [node.left, node.right], []), node)

    def _display(self, node: ast.List | ast.Tuple, helper: str) -> ast.AST:
        self.generic_visit(node)
        return ast.copy_location(ast.Call(ast.Name(helper, ast.Load()), list(node.elts), []), node)

    def visit_List(self, node: ast.List) -> ast.AST:
        return self._display(node, "$list")

    def visit_Tuple(self, node: ast.Tuple) -> ast.AST:
        return self._display(node, "$tuple")


_GLOBALS: dict[str, Any] = {"__builtins__": {}, **FUNCTIONS, **_HELPERS}


class Expr:
    """One parsed expression; `names` are the variables and rules it reads."""

    def __init__(self, source: str):
        if not isinstance(source, str) or not source.strip():
            raise ExprError(f"expected an expression, got {source!r}")
        self.source = source.strip()
        if len(self.source) > MAX_SOURCE:
            raise ExprError(f"expression {_short(self.source)} is longer than {MAX_SOURCE} characters")
        try:
            tree = ast.parse(self.source, mode="eval")
        except SyntaxError as e:
            raise ExprError(f"invalid expression {self.source!r}: {e.msg}") from None
        except (RecursionError, MemoryError):  # `-----...1` nests deeper than the parser goes
            raise ExprError(f"expression {_short(self.source)} is nested too deeply") from None
        names: set[str] = set()
        nodes = 0
        for node in ast.walk(tree):
            nodes += 1
            if nodes > MAX_NODES:
                raise ExprError(f"expression {_short(self.source)} has more than {MAX_NODES} parts")
            if not isinstance(node, _NODES):
                raise ExprError(f"{type(node).__name__.lower()} is not allowed in an expression ({self.source!r})")
            if isinstance(node, ast.Call):
                if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
                    raise ExprError(f"only the calls {', '.join(sorted(FUNCTIONS))} with positional "
                                    f"arguments are allowed ({self.source!r})")
            if isinstance(node, ast.Name):
                _check_ascii(self.source, node)
                names.add(node.id)
            if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, str, bool, type(None))):
                raise ExprError(f"constant {node.value!r} is not allowed ({self.source!r})")
        self.names = frozenset(n for n in names if n not in FUNCTIONS)
        try:
            self._code = compile(ast.fix_missing_locations(_Bound().visit(tree)), "<space>", "eval")
        except (RecursionError, MemoryError):
            raise ExprError(f"expression {_short(self.source)} is nested too deeply") from None

    def eval(self, scope: Mapping[str, Any]) -> Any:
        outer = _BUDGET.get() is None   # the rules this expression reads share its budget
        token = _BUDGET.set(_Budget(time.perf_counter() + MAX_SECONDS)) if outer else None
        try:
            return eval(self._code, _GLOBALS, scope)
        except (ExprError, LabError):  # LabError: a rule read through the scope already failed, with its place
            raise
        except _Refused as e:
            raise ExprError(f"{self.source!r}: refused: {e}") from None
        except NameError as e:
            raise ExprError(f"{self.source!r}: {e.args[0] if e.args else e}") from None
        except RecursionError:
            raise ExprError(f"{self.source!r}: nested too deeply") from None
        except Exception as e:
            raise ExprError(f"{self.source!r}: {type(e).__name__}: {_one_line(e)}") from None
        finally:
            if token is not None:
                _BUDGET.reset(token)

    def __repr__(self) -> str:
        return f"Expr({self.source!r})"


def _check_ascii(source: str, node: ast.Name) -> None:
    """Python reads `ｗidth` as `width` and `x𝟗` as `x9` (NFKC): a space's names are ASCII as written."""
    written = ast.get_source_segment(source, node)
    if written is not None and not written.isascii():
        raise ExprError(f"name {written!r} is not ASCII (letters, digits 0-9 and _) in {source!r}")


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 200 else text[:200] + "..."


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
