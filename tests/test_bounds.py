"""Bounded inputs: a space's expressions cannot hang or exhaust a study (huge powers, repetitions,
conversions; a budget of operations and seconds), a space file's YAML aliases cannot expand
without bound, and numbers in grammar text, expressions and flags are written with ASCII digits."""

from __future__ import annotations

import argparse
import math
import time

import pytest
import yaml
from optuna.trial import FixedTrial

import lab
from lab.cli.args import bounded
from lab.study import space_expr, space_yaml
from lab.study.space import SpaceError, load_space
from lab.study.space_expr import MAX_INT_BITS, MAX_SIZE, Expr, ExprError, Template

FAST = 2.0   # seconds: an upper bound only; what is checked is the error

HUGE = [
    ("9**9**9", "9 ** 387420489 would have more than 4096 bits"),
    ("2**10**8", "2 ** 100000000 would have more than 4096 bits"),
    ("(9**9)**(9**9)", "387420489 ** 387420489 would have more than 4096 bits"),
    ("(-3)**10**6", "(-3) ** 1000000 would have more than 4096 bits"),
    ("(2**4000)*(2**4000)", "<a 4001-bit integer> * <a 4001-bit integer> would have more than 4096 bits"),
    ("'a'*10**9", "'a' * 1000000000 would be longer than 100000 characters/items"),
    ("10**9*'a'", "1000000000 * 'a' would be longer than 100000 characters/items"),
    ("[1]*10**9", "[1] * 1000000000 would be longer than 100000 characters/items"),
    ("'ab'*50000 + 'c'", "+ 'c' would be longer than 100000 characters/items"),
    ("len(str([[0]*50000]*50000))", "<a list of 1 item> * 50000 would be longer"),
    ("sum([[1]*1000]*1000, [])", "would be longer than 100000 characters/items"),
    ("int('9'*5000)", "int() of a text of 5000 characters (at most 100)"),
    ("round(5, -10**9)", "round(5, (-1000000000)): at most 4096 digits"),
    ("'%999999999d' % 1", "a '*' or a width/precision over 99999 is not allowed"),
    ("'%*d' % (10**9, 1)", "a '*' or a width/precision over 99999 is not allowed"),
]


def _refused(fn, *args):
    start = time.perf_counter()
    with pytest.raises((ExprError, lab.LabError)) as info:
        fn(*args)
    assert time.perf_counter() - start < FAST
    return str(info.value)


@pytest.mark.parametrize("source, message", HUGE, ids=[h[0] for h in HUGE])
def test_huge_operations_are_refused_before_computing(source, message):
    text = _refused(Expr(source).eval, {})
    assert text.startswith(f"{source!r}: refused: ") and message in text, text
    assert "\n" not in text


@pytest.mark.parametrize("source, message", HUGE[:4], ids=[h[0] for h in HUGE[:4]])
def test_huge_operations_in_a_template_are_refused(source, message):
    text = _refused(Template("@{res} | conv(c={" + source + "})").render, {"res": 28})
    assert text.startswith(f"{source!r}: refused: ") and message in text, text


SPACE = """\
name: bounded
res: 28
vars:
  width: {int: [32, 64], step: 32}
rules:
  pad: {expr: "RULE"}
text: "@{res} | patch(p=4,c={width}) | mhsa(hd=16) 2x{width} | ln,gap,fc{'' if pad else ''}"
"""


@pytest.mark.parametrize("source, message", HUGE, ids=[h[0] for h in HUGE])
def test_a_huge_rule_fails_the_feasibility_check_fast(tmp_path, source, message):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.replace("RULE", source.replace('"', '\\"')))
    space = load_space(path)   # it loads: an expression is evaluated when sampled
    text = _refused(space.check_feasible)
    assert text.startswith(f"{path}: rules.pad (line 6): {source!r}: refused: "), text
    assert message in text and "\n" not in text, text


def test_a_huge_hole_in_the_text_names_the_text(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.replace("RULE", "1").replace("c={width}", "c={width + 9**9**9}"))
    text = _refused(load_space(path).sample, FixedTrial({"width": 32}))
    assert text.startswith(f"{path}: text (line 7): 'width + 9**9**9': refused: 9 ** 387420489 would have more "
                           "than 4096 bits (with width=32)"), text


def test_the_bounds_are_exact():
    assert Expr("2**4096").eval({}) == 2 ** MAX_INT_BITS
    assert Expr("-(2**4096) + 1").eval({}) == -(2 ** MAX_INT_BITS) + 1
    with pytest.raises(ExprError, match="2 \\*\\* 4097 would have more than 4096 bits"):
        Expr("2**4097").eval({})
    with pytest.raises(ExprError, match="would have more than 4096 bits"):
        Expr("2**4096 + 2**4096").eval({})
    assert len(Expr("'a' * n").eval({"n": MAX_SIZE})) == MAX_SIZE
    with pytest.raises(ExprError, match="would be longer than 100000"):
        Expr("'a' * n").eval({"n": MAX_SIZE + 1})
    assert Expr("len([0] * n + [1])").eval({"n": MAX_SIZE - 1}) == MAX_SIZE
    with pytest.raises(ExprError, match="would be longer than 100000"):
        Expr("[0] * n + [1]").eval({"n": MAX_SIZE})


LEGITIMATE = [
    "quantum * max(1, round(w0 * wm ** i / quantum))", "width * 2 ** i", "2 ** -2", "(-2) ** 3", "2.0 ** 0.5",
    "7 // 2", "7 % 3", "-7 / 2", "'ab' * 3", "3 * 'ab'", "[1, 2] * 2", "[1, 2] + [3]", "(1, 2) + (3,)",
    "'w%d_%s' % (3, 'x')", "'%.3f' % 0.5", "round(2.675, 2)", "round(7.5)", "int('12')", "int(' -12 ')",
    "int('ff', 16)", "int(3.9)", "float('1e-3')", "str(2 ** 100)", "sum([1, 2.5, 0.1])", "sum([[1], [2]], [])",
    "sum((0.1,) * 10)", "min(3, 1, 2)", "max([4, 9])", "abs(-3)", "len('abc')", "any([0, 1])", "all([])",
    "ceil(2.1)", "floor(-2.1)", "(1, 2, 3)[1:]", "'conv'[-1]", "i > 0 and mixer not in ('conv3d', 'conv2d')",
    "'a' if i else 'b'", "True * 'x'", "[] * 10 ** 9", "'' * 10 ** 9", "2 ** 4096 // 2 ** 4000",
]


@pytest.mark.parametrize("source", LEGITIMATE)
def test_legitimate_expressions_keep_their_python_value(source):
    scope = {"quantum": 8, "w0": 16, "wm": 1.5, "i": 2, "width": 32, "mixer": "mhsa"}
    python = {"__builtins__": {}, "min": min, "max": max, "abs": abs, "int": int, "float": float, "round": round,
              "str": str, "len": len, "sum": sum, "any": any, "all": all, "ceil": math.ceil, "floor": math.floor}
    reference = eval(source, python, dict(scope))   # plain Python: the reference
    value = Expr(source).eval(scope)
    assert value == reference and type(value) is type(reference)


def test_the_operation_budget_is_shared_with_the_rules_read(monkeypatch):
    monkeypatch.setattr(space_expr, "MAX_STEPS", 6)
    inner = Expr("1 + 1 + 1")   # 2 operations

    class Scope(dict):   # like a space's scope: the rule `r` evaluated when read
        def __missing__(self, name):
            if name != "r":
                raise KeyError(name)
            return inner.eval({})

    assert Expr("r + 1 + 1").eval(Scope()) == 5   # 2 + 2
    with pytest.raises(ExprError, match="'1 \\+ 1 \\+ 1': refused: more than 6 operations in one evaluation"):
        Expr("r + r + r").eval(Scope())   # 2 + 2 + 1 + 2: the rule read third runs out, and says so
    assert inner.eval({}) == 3   # a fresh budget for the next evaluation


def test_the_wall_clock_budget(monkeypatch):
    monkeypatch.setattr(space_expr, "MAX_SECONDS", -1.0)   # already past: the first operation stops
    with pytest.raises(ExprError, match="'1 \\+ 1': refused: evaluation took more than -1 s"):
        Expr("1 + 1").eval({})
    assert Expr("x").eval({"x": 1}) == 1   # no operation, nothing to stop


@pytest.mark.parametrize("source, message", [
    ("-" * 100_000 + "1", "is longer than 2000 characters"),
    ("1+" * 600 + "1", "has more than 500 parts"),
    ("-" * 1500 + "1", "has more than 500 parts"),
    ("ｗidth", "name 'ｗidth' is not ASCII"),    # Python would read it as `width` (NFKC)
    ("x𝟗 + 1", "name 'x𝟗' is not ASCII"),       # ... and this as `x9`
])
def test_oversized_or_non_ascii_sources_are_refused_when_parsed(source, message):
    start = time.perf_counter()
    with pytest.raises(ExprError, match=message):
        Expr(source)
    assert time.perf_counter() - start < FAST


@pytest.mark.parametrize("source", ["int('１２')", "float('１.５')", "int('٣')", "int(x)"])
def test_expressions_read_ascii_digits_only(source):
    with pytest.raises(ExprError, match="a number is written with ASCII digits"):
        Expr(source).eval({"x": "𝟗"})


# --- YAML aliases ---------------------------------------------------------------------------

def laughs(levels: int = 9) -> str:
    """The "billion laughs": each level lists the previous one nine times (9**levels leaves)."""
    lines = ["l0: &l0 [ha, ha, ha, ha, ha, ha, ha, ha, ha]"]
    lines += [f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 9)}]" for k in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_space_is_refused_fast_naming_the_file(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(SPACE.replace("RULE", "1") + laughs())
    start = time.perf_counter()
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert time.perf_counter() - start < 1.0
    assert str(info.value).startswith(f"{path}: line 1: invalid YAML: aliases repeat "), info.value
    assert "at most 10000" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text, message", [
    (laughs(), "aliases repeat"),
    ("a: &a [1, [2, *a]]", "an alias inside its own anchor"),
    ("a: " + "[" * 5000 + "]" * 5000, "nested more than 100 levels deep"),
    ("".join(" " * k + f"k{k}:\n" for k in range(300)), "nested more than 100 levels deep"),
])
def test_bounded_yaml_refuses_fast(text, message):
    for load in (space_yaml.load, space_yaml.safe_load):
        start = time.perf_counter()
        with pytest.raises((space_yaml.YamlError, yaml.YAMLError)) as info:
            load(text)
        assert time.perf_counter() - start < 1.0
        assert message in str(info.value)


def test_the_alias_bound_counts_the_repeated_nodes(monkeypatch):
    doc = "a: &a [1, 2, 3]\nb: [*a, *a]\n"   # each alias repeats the list and its 3 items: 8 nodes
    assert space_yaml.safe_load(doc) == yaml.safe_load(doc)
    monkeypatch.setattr(space_yaml, "MAX_ALIAS_NODES", 8)
    assert space_yaml.load(doc)[0] == yaml.safe_load(doc)
    monkeypatch.setattr(space_yaml, "MAX_ALIAS_NODES", 7)
    with pytest.raises(space_yaml.YamlError, match="aliases repeat 8 nodes"):
        space_yaml.load(doc)


def test_ordinary_anchors_and_merge_keys_keep_working():
    doc = "base: &b {lr: 0.1, ops: [bn, relu]}\nx: *b\ny: {<<: *b, wd: 0.2}\nz: [*b, *b]\n"
    assert space_yaml.load(doc)[0] == yaml.safe_load(doc)
    assert space_yaml.safe_load(doc) == yaml.safe_load(doc)


def test_a_huge_yaml_integer_is_a_yaml_error():
    with pytest.raises(space_yaml.YamlError, match=r"invalid YAML value: .*4300 digits") as info:
        space_yaml.load("a: 1\nb: " + "9" * 5000)
    assert (info.value.line, info.value.path) == (2, ("b",))
    with pytest.raises(yaml.YAMLError, match="4300 digits"):
        space_yaml.safe_load("b: " + "9" * 5000)


# --- ASCII digits in grammar text and flags -------------------------------------------------

@pytest.mark.parametrize("text, digit", [
    ("@2𝟗4 | conv(c=16),bn | basic 1x16 | gap,fc", "𝟗"),
    ("@32 | conv(c=１6),bn | basic 1x16 | gap,fc", "１"),
    ("@32 | conv(c=16),bn | basic ٣x16 | gap,fc", "٣"),
])
def test_grammar_digits_are_ascii(text, digit):
    col = text.index(digit) + 1
    with pytest.raises(lab.SpecError) as info:
        lab.parse(text)
    assert info.value.col == col and "grammar text is ASCII" in str(info.value)
    assert lab.parse(text[:col - 1] + "2" + text[col:]).text   # the ASCII spelling parses


@pytest.mark.parametrize("text, col", [
    ("@" + "9" * 5000 + " | conv(c=16),bn | basic 1x16 | gap,fc", 2),
    ("@32 | conv(c=" + "9" * 5000 + "),bn | basic 1x16 | gap,fc", 14),
    ("@32 | conv(c=16),bn | basic 1x" + "1" * 50 + " | gap,fc", 31),
    ("@32 | conv(c=16),bn | basic " + "1" * 50 + "x16 | gap,fc", 29),
    ("@32 | conv(c=16),bn | basic 1x16/" + "2" * 50 + " | gap,fc", 34),
])
def test_overlong_numbers_are_a_spec_error(text, col):
    with pytest.raises(lab.SpecError, match=r"a number of [0-9]+ characters \(at most 40\)") as info:
        lab.parse(text)
    assert info.value.col == col


@pytest.mark.parametrize("text", ["٣", "𝟗", "１2"])
def test_flag_numbers_are_ascii(text):
    whole = bounded(int, lambda n: n >= 0, "a whole number >= 0")
    real = bounded(float, lambda x: x > 0, "a number > 0")
    assert (whole("3"), real("1.5")) == (3, 1.5)
    for parse in (whole, real):
        with pytest.raises(argparse.ArgumentTypeError, match=f"{text!r}: expected"):
            parse(text)
