"""Search spaces as YAML, and the define-by-run sampler that turns an Optuna trial into a grammar point.

A space (`search_spaces/NAME.yaml`, format in the README, "Search spaces") declares variables
(categorical, integer or float ranges, each optionally conditional), an optional per-stage
repetition with per-stage variables, rules (named templates: grammar productions, switches on a
variable, or expressions) and the template of the network's text, plus budgets on MACs and
parameters and optional training hyperparameters. `Space.sample(trial)` suggests exactly the
variables that apply, renders the grammar text, parses and costs it:

    from lab.study.space import load_space
    space = load_space("hybrid")
    point = space.sample(trial, num_classes=10, in_chans=1)   # trial: an optuna.Trial (or look-alike)
    point.reason is None  ->  point.spec is a valid Spec within the budget

Every mistake in a space file is a `SpaceError` naming the file, the key path and the line.
"""

from __future__ import annotations

import copy
import dataclasses
import keyword
import logging
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import optuna

from lab import resources
from lab.cost import steps, totals
from lab.errors import LabError, SpecError, TrainError
from lab.grammar import parse
from lab.kinds import REGISTRY, TRAITS, in_order, traits
from lab.study import samplers, space_yaml
from lab.study.space_expr import FUNCTIONS, Expr, ExprError, Template
from lab.train.recipes import Recipe

# the shipped spaces' folder and names: lab.resources.spaces_dir() and shipped_spaces() (LAB_SPACES overrides)

TOP_KEYS = ("name", "about", "res", "budget", "vars", "stages", "rules", "text", "require", "hparams")
BUDGET_KEYS = ("max_macs", "max_params", "min_macs", "min_params")
VAR_KEYS = ("choice", "kinds", "int", "float", "step", "log", "if")
STAGE_KEYS = ("count", "vars", "text", "join")
BUILTINS = {"res": "the input resolution", "i": "the stage index (from 0)", "n": "the number of stages",
            "stages": "the rendered stages", "macs": "the point's MACs (in require)",
            "params": "the point's parameters (in require)"}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*$")
_SUFFIX = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
_SCALARS = (str, int, float, bool, type(None))


class SpaceError(LabError):
    """An invalid search space (file, key path, line and what was expected), or one without a feasible point."""


@dataclass(frozen=True)
class Point:
    """One sample of a space: the grammar point, or why it was rejected.

    `text` is the canonical text of `spec` when the rendered text parsed, else the rendered text.
    `reason` is None for a valid point within the budget; otherwise one line ("SpecError: ...",
    "over budget: 75.1 MMACs > 60 MMACs", "constraint fails: ..."). `params`/`macs` are known
    whenever the text parsed (also over budget). `values` holds every variable that applied,
    by its trial parameter name (per-stage variables as NAME_i). `run` overrides the study's
    settings for this trial (a scaling grid's fraction, seed and epochs); `family` is the point's
    family when the space knows its name (a grid arm: `lab.catalog.family_of(spec, name)`); None:
    the trial row's family is `lab.catalog.family_of(spec)` (its kinds, for a sampled point).
    """

    spec: Any  # lab.Spec | None
    text: str
    hparams: dict
    params: int | None
    macs: int | None
    reason: str | None
    values: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    family: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


SAMPLERS = ("tpe", "nsga2", "random") + samplers.GRAMMAR_SAMPLERS


class SearchSpace(Protocol):
    """What a study samples: a YAML search space (`Space`) or a scaling study's grid of cells
    (lab.study.grid.ScalingGrid). The runner and the searcher know only this."""

    name: str

    def sample(self, trial: Any, num_classes: int = 10, in_chans: int = 1) -> Point:
        """The point an Optuna trial (define-by-run) samples, with its reason when it may not train."""
        ...

    def over_budget(self, macs: int, params: int) -> str | None:
        """Why a point of this cost lies outside the space's budget, or None."""
        ...

    def check_feasible(self, *, num_classes: int, in_chans: int, frames: int) -> float:
        """The share of sampled points that may train (SpaceError/StudyError when none may)."""
        ...

    def sampler(self, name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
        """The Optuna sampler that walks the space (`name`: one of SAMPLERS, where the space has a choice)."""
        ...


# --- the parsed form ----------------------------------------------------------------------

@dataclass
class Var:
    name: str
    kind: str  # choice | int | float | const
    path: tuple
    choices: tuple = ()
    low: float = 0
    high: float = 0
    step: float | None = None
    log: bool = False
    value: Any = None
    cond: Expr | None = None

    def suggest(self, trial: Any, param: str) -> Any:
        if self.kind == "const":
            return self.value
        if self.kind == "choice":
            return trial.suggest_categorical(param, list(self.choices))
        if self.kind == "int":
            if self.step is None:
                return trial.suggest_int(param, self.low, self.high, log=self.log)
            return trial.suggest_int(param, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_float(param, self.low, self.high, step=self.step, log=self.log)


@dataclass
class Rule:
    kind: str  # template | expr | switch
    path: tuple
    template: Template | None = None
    expr: Expr | None = None
    cases: dict = field(default_factory=dict)
    default: Rule | None = None

    @property
    def names(self) -> frozenset:
        source = (self.template or self.expr) if self.kind != "switch" else self.expr
        assert source is not None  # a template or an expression; a switch's key
        own = source.names
        nested = [r.names for r in self.cases.values()] + ([self.default.names] if self.default else [])
        return own.union(*nested)


@dataclass
class Stages:
    count: int | Expr
    vars: list[Var]
    text: Template
    join: str


class Space:
    """A loaded, validated search space. Build one with `load_space` or `Space.from_dict`."""

    name: str
    # the budget's bounds (BUDGET_KEYS; None: unbounded)
    max_macs: int | None
    max_params: int | None
    min_macs: int | None
    min_params: int | None

    def __init__(self, data: Any, where: str = "<space>", lines: dict | None = None, name: str | None = None):
        self.where = where
        self._lines = lines or {}
        self._raw = data
        self._parse(data, name)

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "<space>") -> Space:
        """A space from its `to_dict()` form (or any mapping in the YAML format)."""
        return cls(copy.deepcopy(dict(data)), where)

    # --- errors -------------------------------------------------------------------------

    def _line(self, path: tuple) -> int | None:
        for k in range(len(path), -1, -1):
            if path[:k] in self._lines:
                return self._lines[path[:k]]
        return None

    def _err(self, path: tuple, message: str) -> SpaceError:
        line = self._line(path) if self._lines else None
        where = _path_text(path)
        loc = f"{where} (line {line})" if where and line else where or (f"line {line}" if line else "")
        return SpaceError(f"{self.where}: {loc}: {message}" if loc else f"{self.where}: {message}")

    def _expr(self, source: Any, path: tuple) -> Expr:
        if not isinstance(source, (str, int, float)) or isinstance(source, bool):
            raise self._err(path, f"expected an expression (text), got {_kind_of(source)}")
        try:
            return Expr(str(source))
        except ExprError as e:
            raise self._err(path, str(e)) from None

    def _template(self, source: Any, path: tuple) -> Template:
        if not isinstance(source, str):
            hint = " (quote a template that starts with '{')" if isinstance(source, dict) else ""
            raise self._err(path, f"expected a template string, got {_kind_of(source)}{hint}")
        try:
            return Template(source)
        except ExprError as e:
            raise self._err(path, str(e)) from None

    # --- parsing ------------------------------------------------------------------------

    def _mapping(self, data: Any, path: tuple, keys: tuple, required: tuple = ()) -> dict:
        if not isinstance(data, dict):
            raise self._err(path, f"expected a mapping, got {_kind_of(data)}")
        for key in data:
            if key not in keys:
                raise self._err(path + (key,), f"unknown key {key!r} (expected one of: {', '.join(keys)})")
        for key in required:
            if key not in data:
                raise self._err(path, f"missing key {key!r}")
        return data

    def _parse(self, data: Any, name: str | None) -> None:
        d = self._mapping(data, (), TOP_KEYS, required=("res", "text"))
        name = d.get("name", name)
        if not isinstance(name, str) or not name:
            raise self._err(("name",), f"expected a name (text), got {_kind_of(name)}")
        self.name = name
        self.about = d.get("about", "")
        if not isinstance(self.about, str):
            raise self._err(("about",), f"expected text, got {_kind_of(self.about)}")
        self.res = d["res"]
        if isinstance(self.res, bool) or not isinstance(self.res, int) or not 1 <= self.res <= 8192:
            raise self._err(("res",), f"expected an input resolution 1..8192, got {self.res!r}")

        budget = self._mapping(d.get("budget", {}) or {}, ("budget",), BUDGET_KEYS)
        for key in BUDGET_KEYS:
            value = _number(budget.get(key), suffixes=True)
            if budget.get(key) is not None and (value is None or value <= 0):
                raise self._err(("budget", key), f"expected a positive number (60e6, 60M, 2.5M), got {budget[key]!r}")
            setattr(self, key, None if value is None else int(value))
        for lo, hi in (("min_macs", "max_macs"), ("min_params", "max_params")):
            if getattr(self, lo) is not None and getattr(self, hi) is not None and getattr(self, lo) > getattr(self, hi):
                raise self._err(("budget", lo), f"{lo} {getattr(self, lo)} > {hi} {getattr(self, hi)}")

        self.vars = self._vars(d.get("vars", {}), ("vars",))
        self.stages = None
        if d.get("stages") is not None:
            s = self._mapping(d["stages"], ("stages",), STAGE_KEYS, required=("count", "text"))
            count = s["count"]
            if isinstance(count, bool) or not isinstance(count, (int, str)):
                raise self._err(("stages", "count"), f"expected a number of stages or an expression, got {_kind_of(count)}")
            if isinstance(count, int) and not 1 <= count <= 64:
                raise self._err(("stages", "count"), f"expected 1..64 stages, got {count}")
            join = s.get("join", " | ")
            if not isinstance(join, str):
                raise self._err(("stages", "join"), f"expected text, got {_kind_of(join)}")
            self.stages = Stages(count if isinstance(count, int) else self._expr(count, ("stages", "count")),
                                 self._vars(s.get("vars", {}), ("stages", "vars")),
                                 self._template(s["text"], ("stages", "text")), join)
        rules = d.get("rules", {}) or {}
        if not isinstance(rules, dict):
            raise self._err(("rules",), f"expected a mapping of rule names to templates, got {_kind_of(rules)}")
        self.rules = {}
        for rname, body in rules.items():
            self._check_name(rname, ("rules", rname), "rule")
            self.rules[rname] = self._rule(body, ("rules", rname))
        self.text = self._template(d["text"], ("text",))
        require = d.get("require", []) or []
        if not isinstance(require, list):
            raise self._err(("require",), f"expected a list of conditions, got {_kind_of(require)}")
        self.require = [self._expr(r, ("require", i)) for i, r in enumerate(require)]
        self.hparams = self._vars(d.get("hparams", {}), ("hparams",))
        self._check_names()

    def _check_name(self, name: Any, path: tuple, what: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name) or keyword.iskeyword(name):
            raise self._err(path, f"{what} name {name!r}: expected letters, digits and single underscores, "
                                  "starting with a letter")
        if name in BUILTINS or name in FUNCTIONS:
            raise self._err(path, f"{what} name {name!r} is reserved (built-in names: "
                                  f"{', '.join(list(BUILTINS) + sorted(FUNCTIONS))})")

    def _vars(self, data: Any, path: tuple) -> list[Var]:
        if data is None:
            return []
        if not isinstance(data, dict):
            raise self._err(path, f"expected a mapping of variable names to choices or ranges, got {_kind_of(data)}")
        out = []
        for vname, spec in data.items():
            vpath = path + (vname,)
            self._check_name(vname, vpath, "variable")
            out.append(self._var(vname, spec, vpath))
        return out

    def _var(self, vname: str, spec: Any, path: tuple) -> Var:
        if isinstance(spec, list):
            spec = {"choice": spec}
        elif not isinstance(spec, dict):
            if not isinstance(spec, _SCALARS) or spec is None:
                raise self._err(path, f"expected a value, a list of choices or a mapping, got {_kind_of(spec)}")
            return Var(vname, "const", path, value=spec)
        self._mapping(spec, path, VAR_KEYS)
        if "kinds" in spec:   # a choice among the registered kinds with these traits (after any listed choices)
            spec = self._kinds_choice(spec, path)
        kinds = [k for k in ("choice", "int", "float") if k in spec]
        if len(kinds) != 1:
            raise self._err(path, "expected exactly one of choice: [...], int: [low, high], float: [low, high]"
                            + (f" (got {', '.join(kinds)})" if kinds else ""))
        kind = kinds[0]
        cond = self._expr(spec["if"], path + ("if",)) if "if" in spec else None
        if kind == "choice":
            choices = spec["choice"]
            if not isinstance(choices, list) or not choices:
                raise self._err(path + ("choice",), f"expected a non-empty list of choices, got {_kind_of(choices)}")
            for i, c in enumerate(choices):
                if not isinstance(c, _SCALARS):
                    raise self._err(path + ("choice", i), f"a choice is a number, text, boolean or null, "
                                                          f"got {_kind_of(c)}")
            if len(set(map(repr, choices))) != len(choices):
                raise self._err(path + ("choice",), f"duplicate choices in {choices}")
            for key in ("step", "log"):
                if key in spec:
                    raise self._err(path + (key,), f"{key!r} applies to int and float ranges, not to choices")
            return Var(vname, "choice", path, choices=tuple(choices), cond=cond)
        rng, rpath = spec[kind], path + (kind,)
        if not isinstance(rng, list) or len(rng) != 2:
            raise self._err(rpath, f"expected [low, high], got {_kind_of(rng)}")
        low, high = (_number(x) for x in rng)
        if low is None or high is None:
            raise self._err(rpath, f"expected two numbers [low, high], got {rng}")
        if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
            raise self._err(rpath, f"expected two integers [low, high], got {rng}")
        if low > high:
            raise self._err(rpath, f"low {_fmt(low)} > high {_fmt(high)}")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise self._err(path + ("log",), f"expected true or false, got {log!r}")
        if log and low <= 0:
            raise self._err(rpath, f"a log range needs low > 0, got {_fmt(low)}")
        step = spec.get("step")
        if step is not None:
            step = _number(step)
            if step is None or step <= 0 or (kind == "int" and not float(step).is_integer()):
                raise self._err(path + ("step",), f"expected a positive {'integer' if kind == 'int' else 'number'}, "
                                                  f"got {spec['step']!r}")
            if log and (kind == "float" or step != 1):
                raise self._err(path + ("step",), "a log range cannot have a step")
        if kind == "int":
            low, high = int(low), int(high)
            step = None if step is None else int(step)
        else:
            low, high = float(low), float(high)
            step = None if step is None else float(step)
        return Var(vname, kind, path, low=low, high=high, step=step, log=log, cond=cond)

    def _kinds_choice(self, spec: dict, path: tuple) -> dict:
        """`spec` with its `kinds` selection turned into choices: every registered kind whose traits
        satisfy the expression (lab.kinds.traits: token_mixer, mixer_family, per_frame, ...), in the
        lecture's order of token mixers (lab.kinds.in_order), after the listed `choice`s."""
        if "int" in spec or "float" in spec:
            raise self._err(path + ("kinds",), "kinds selects choices: it goes with choice, not with a range")
        expr = self._expr(spec["kinds"], path + ("kinds",))
        known = {"kind", "role", *TRAITS}
        unknown = sorted(expr.names - known)
        if unknown:
            raise self._err(path + ("kinds",), f"unknown trait {unknown[0]!r} (traits: {', '.join(sorted(known))})")
        listed = spec.get("choice", [])
        if not isinstance(listed, list):
            raise self._err(path + ("choice",), f"expected a list of choices, got {_kind_of(listed)}")
        try:
            selected = in_order(name for name, cls in REGISTRY.items() if expr.eval(traits(cls)))
        except ExprError as e:
            raise self._err(path + ("kinds",), str(e)) from None
        if not selected:
            raise self._err(path + ("kinds",), f"no registered kind has the traits {expr.source!r}")
        out = {k: v for k, v in spec.items() if k != "kinds"}
        out["choice"] = listed + [k for k in selected if k not in listed]
        return out

    def _rule(self, body: Any, path: tuple) -> Rule:
        if isinstance(body, str):
            return Rule("template", path, template=self._template(body, path))
        if isinstance(body, (int, float)) and not isinstance(body, bool):
            return Rule("template", path, template=self._template(str(body), path))
        if not isinstance(body, dict):
            raise self._err(path, f"expected a template, {{expr: ...}} or {{switch: ..., cases: ...}}, got {_kind_of(body)}")
        if "expr" in body:
            self._mapping(body, path, ("expr",))
            return Rule("expr", path, expr=self._expr(body["expr"], path + ("expr",)))
        if "switch" not in body:
            raise self._err(path, "expected a template, {expr: ...} or {switch: ..., cases: ...} "
                                  "(quote a template that starts with '{')")
        self._mapping(body, path, ("switch", "cases", "default"), required=("cases",))
        cases = body["cases"]
        if not isinstance(cases, dict) or not cases:
            raise self._err(path + ("cases",), f"expected a mapping of values to templates, got {_kind_of(cases)}")
        rule = Rule("switch", path, expr=self._expr(body["switch"], path + ("switch",)))
        rule.cases = {k: self._rule(v, path + ("cases", k)) for k, v in cases.items()}
        if "default" in body:
            rule.default = self._rule(body["default"], path + ("default",))
        return rule

    def _check_names(self) -> None:
        gnames = [v.name for v in self.vars]
        snames = [v.name for v in self.stages.vars] if self.stages else []
        hnames = [v.name for v in self.hparams]
        rnames = list(self.rules)
        seen: dict[str, tuple] = {}
        for v in self.vars + (self.stages.vars if self.stages else []):
            if v.name in seen:
                raise self._err(v.path, f"variable {v.name!r} is already declared at {_path_text(seen[v.name])}")
            seen[v.name] = v.path
        if snames:   # per-stage variables become trial parameters NAME_i: no other name may look like one
            per_stage = re.compile(rf"(?:{'|'.join(map(re.escape, snames))})_\d+")
            for v in self.vars + self.hparams:
                if per_stage.fullmatch(v.name):
                    raise self._err(v.path, f"variable {v.name!r} has the name of a per-stage variable's trial parameter")
        for rname in rnames:
            if rname in seen:
                raise self._err(("rules", rname), f"rule {rname!r} has the name of a variable ({_path_text(seen[rname])})")
        fields = [f.name for f in dataclasses.fields(Recipe) if f.name != "name"]
        for v in self.hparams:
            if v.name not in fields:
                raise self._err(v.path, f"unknown hyperparameter {v.name!r} (fields of lab.train.recipes.Recipe: "
                                        f"{', '.join(fields)})")
            if v.name in seen or v.name in self.rules:
                raise self._err(v.path, f"hyperparameter {v.name!r} has the name of a variable or rule")
            self._check_hparam(v, Recipe)

        used: set[str] = set()

        def check(expr, path: tuple, allowed: set[str], hint: str) -> None:
            for nm in sorted(expr.names):
                if nm not in allowed:
                    known = sorted(allowed - set(FUNCTIONS))
                    why = hint if nm in everything else "unknown variable or rule"
                    raise self._err(path, f"{why} {nm!r} (known here: {', '.join(known) or 'none'})")
            used.update(expr.names)

        everything = set(gnames) | set(snames) | set(rnames) | set(hnames) | set(BUILTINS)
        order_hint = "a condition reads only variables declared before it, not"
        for k, v in enumerate(self.vars):
            if v.cond:
                check(v.cond, v.path + ("if",), set(gnames[:k]) | {"res"}, order_hint)
        if self.stages:
            if isinstance(self.stages.count, Expr):
                check(self.stages.count, ("stages", "count"), set(gnames) | {"res"},
                      "the stage count reads only the global variables, not")
            for k, v in enumerate(self.stages.vars):
                if v.cond:
                    check(v.cond, v.path + ("if",), set(gnames) | set(snames[:k]) | {"res", "i", "n"}, order_hint)
            check(self.stages.text, ("stages", "text"), set(gnames) | set(snames) | set(rnames) | {"res", "i", "n"},
                  "a stage's text cannot read")
        arch = set(gnames) | set(snames) | set(rnames) | {"res", "i", "n"} | ({"stages"} if self.stages else set())
        for rule in self.rules.values():
            for part, path in _rule_parts(rule):
                if isinstance(part, Rule):
                    self._check_cases(part)
                else:
                    check(part, path, arch, "rules cannot read")
        top = set(gnames) | set(snames) | set(rnames) | {"res"} | ({"stages"} if self.stages else set())
        check(self.text, ("text",), top, "the network's text cannot read")
        for k, r in enumerate(self.require):
            check(r, ("require", k), top | {"macs", "params"}, "a requirement cannot read")
        for k, v in enumerate(self.hparams):
            if v.cond:
                check(v.cond, v.path + ("if",), set(gnames) | set(snames) | set(hnames[:k]) | {"res"}, order_hint)
        for v in self.vars + (self.stages.vars if self.stages else []):
            if v.name not in used:
                raise self._err(v.path, f"variable {v.name!r} is never used (no template, rule or condition reads it)")
        for rname in rnames:
            if rname not in used:
                raise self._err(("rules", rname), f"rule {rname!r} is never used")
        if self.stages and "stages" not in used:
            raise self._err(("text",), "the stages are never used: put {stages} in the network's text")
        self._check_cycles()

    def _check_hparam(self, v: Var, recipe_cls: type) -> None:
        """The ends of a range and every choice must make a valid recipe (type and bounds)."""
        ftype = {f.name: str(f.type) for f in dataclasses.fields(recipe_cls)}[v.name]
        values = {"const": [v.value], "choice": list(v.choices)}.get(v.kind, [v.low, v.high])
        for value in values:
            ok = (isinstance(value, bool) if ftype.startswith("bool") else
                  isinstance(value, str) if ftype == "str" else
                  isinstance(value, int) and not isinstance(value, bool) if ftype == "int" else
                  (isinstance(value, (int, float)) and not isinstance(value, bool)) or (value is None and "None" in ftype))
            if not ok or (ftype == "int" and v.kind == "float"):
                raise self._err(v.path, f"{v.name} is {ftype}, got {value!r}"
                                + (" from a float range" if v.kind == "float" else ""))
            try:
                recipe_cls(**{v.name: value})
            except TrainError as e:
                raise self._err(v.path, str(e).replace("recipe 'default': ", "")) from None

    def _check_cases(self, rule: Rule) -> None:
        assert rule.expr is not None  # a switch's key
        src = rule.expr.source
        var = next((v for v in self.vars + (self.stages.vars if self.stages else []) if v.name == src), None)
        if var is None or var.kind != "choice":
            return
        for key in rule.cases:
            if not any(_case({key: 1}, c) for c in var.choices):
                raise self._err(rule.path + ("cases", key), f"case {key!r} is not a choice of {src} "
                                                            f"({', '.join(map(repr, var.choices))})")
        missing = [c for c in var.choices if _case(rule.cases, c) is None]
        if missing and rule.default is None:
            raise self._err(rule.path + ("cases",), f"no case for {src} = {missing[0]!r} (add it or a default)")

    def _check_cycles(self) -> None:
        state: dict[str, int] = {}

        def visit(rname: str, trail: list[str]) -> None:
            if state.get(rname) == 2:
                return
            if state.get(rname) == 1:
                cycle = trail[trail.index(rname):] + [rname]
                raise self._err(("rules", cycle[0]), f"rules refer to each other in a cycle: {' -> '.join(cycle)}")
            state[rname] = 1
            for nm in sorted(self.rules[rname].names):
                if nm in self.rules:
                    visit(nm, trail + [rname])
            state[rname] = 2

        for rname in self.rules:
            visit(rname, [])

    # --- public -------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"Space({self.name!r}, res={self.res}, max_macs={self.max_macs}, max_params={self.max_params})"

    @property
    def variables(self) -> list[str]:
        """The names of the architecture variables (per-stage ones without their _i suffix), then the hyperparameters."""
        return [v.name for v in self.vars] + [v.name for v in (self.stages.vars if self.stages else [])] + \
            [v.name for v in self.hparams]

    def to_dict(self) -> dict:
        """The space as JSON-able data (what a study freezes); `Space.from_dict` reads it back."""
        d = copy.deepcopy(self._raw)
        d["name"] = self.name
        budget = {k: getattr(self, k) for k in BUDGET_KEYS if getattr(self, k) is not None}
        if budget:
            d["budget"] = budget
        else:
            d.pop("budget", None)
        return _jsonable(d)

    def sample(self, trial: Any, num_classes: int = 10, in_chans: int = 1) -> Point:
        """Suggest this space's variables on `trial` (define-by-run) and return the grammar point.

        Only the variables that apply are suggested. A point the grammar rejects, one outside the
        budget (per image at `res`, with a `num_classes` head on `in_chans` channels) or one that
        fails a `require` condition comes back with its `reason`; a mistake in the space itself
        raises SpaceError.
        """
        x = self._expand(trial)
        try:
            spec = parse(x.text)
            total = totals(spec, num_classes, in_chans)
        except SpecError as e:
            return Point(None, x.text, x.hparams, None, None, f"SpecError: {e}", x.values)
        reason = self.over_budget(total.macs, total.params) or x.requirement(total.macs, total.params)
        return Point(spec, spec.text, x.hparams, total.params, total.macs, reason, x.values)

    def over_budget(self, macs: int, params: int) -> str | None:
        """Why a point of `macs` MACs and `params` parameters is outside the budget, or None."""
        if self.max_macs is not None and macs > self.max_macs:
            return f"over budget: {macs / 1e6:.1f} MMACs > {_mega(self.max_macs)} MMACs"
        if self.max_params is not None and params > self.max_params:
            return f"over budget: {params / 1e6:.2f} M params > {_mega(self.max_params)} M params"
        if self.min_macs is not None and macs < self.min_macs:
            return f"under budget: {macs / 1e6:.1f} MMACs < {_mega(self.min_macs)} MMACs"
        if self.min_params is not None and params < self.min_params:
            return f"under budget: {params / 1e6:.2f} M params < {_mega(self.min_params)} M params"
        return None

    def sampler(self, name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
        """TPE (the default), NSGA-II or random sampling for a study of `trials` trials, or a grammar-aware
        one (lab.study.samplers: evolution, local, gp). Rejected points are pruned trials with a violated
        `budget` constraint (lab.study.search.tell), which TPE and gp read (NSGA-II reads complete trials only)."""
        if name in samplers.GRAMMAR_SAMPLERS:
            return samplers.make(name, seed, trials)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, trials // 2)))
        if name != "tpe":
            raise SpaceError(f"sampler {name!r}: expected one of {', '.join(SAMPLERS)}")
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, min(10, trials // 3)), constant_liar=True)

    def check_feasible(self, num_classes: int = 10, in_chans: int = 1, tries: int = 300, seed: int = 0,
                       frames: int = 1) -> float:
        """The share of `tries` random points (Optuna's RandomSampler) that are valid and within budget,
        and take the data's input: clips (`frames` > 1) for video models, images for image models.

        Raises SpaceError when none is: a space whose budget excludes everything fails before any
        study starts.
        """
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(logging.WARNING)
        try:
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
            ok, example = 0, None
            kinds: Counter[str] = Counter()
            for _ in range(tries):
                point = self.sample(study.ask(), num_classes, in_chans)
                if point.reason is None and (point.spec.frames > 1) != (frames > 1):
                    point = dataclasses.replace(point, reason=(
                        f"input mismatch: {'a video' if point.spec.frames > 1 else 'an image'} model, but the "
                        f"dataset holds {'clips' if frames > 1 else 'images'}"))
                if point.reason is None:
                    ok += 1
                else:
                    kinds[_reason_kind(point.reason)] += 1
                    example = example or point.reason
        finally:
            optuna.logging.set_verbosity(verbosity)
        if ok == 0:
            counts = ", ".join(f"{k}: {n}" for k, n in kinds.most_common())
            raise SpaceError(f"{self.where}: no feasible point in {tries} samples of space {self.name!r} "
                             f"({counts}; e.g. {example}); widen the budget or the ranges")
        return ok / tries

    # --- expansion ----------------------------------------------------------------------

    def _expand(self, trial: Any) -> Expansion:
        """Suggest and render: the text, hyperparameters, values, the parameters read, the requirement check."""
        run = _Run(self, trial)
        top = _Scope(run, None, {"res": self.res})
        for v in self.vars:
            run.assign(top, v, v.name)
        if self.stages:
            st = self.stages
            count = st.count if isinstance(st.count, int) else run.eval(st.count, top, ("stages", "count"))
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 64:
                # an int count was checked when parsed: here it is an expression
                raise run.error(("stages", "count"), f"the stage count {cast(Expr, st.count).source!r} is {count!r}, "
                                                     "expected an integer 1..64")
            scopes = []
            for i in range(count):
                scope = _Scope(run, top, {"i": i, "n": count})
                for v in st.vars:
                    run.assign(scope, v, f"{v.name}_{i}")
                scopes.append(scope)
            for v in st.vars:
                top.set(v.name, tuple(s.values[v.name] for s in scopes), tuple(p for s in scopes for p in s.params[v.name]))
            texts = [run.render(st.text, s, ("stages", "text")) for s in scopes]
            top.set("stages", st.join.join(texts), ())
        text = run.render(self.text, top, ("text",))
        hscope = _Scope(run, top)
        hparams = {}
        for v in self.hparams:
            if run.assign(hscope, v, v.name):
                hparams[v.name] = hscope.values[v.name]

        def requirement(macs: int, params: int) -> str | None:
            scope = _Scope(run, top, {"macs": macs, "params": params})
            for k, r in enumerate(self.require):
                if not run.eval(r, scope, ("require", k)):
                    return f"constraint fails: {r.source}"
            return None

        for r in self.require:   # what a requirement reads counts as read, whatever the cost
            for nm in r.names - {"macs", "params"}:
                top[nm]
        return Expansion(text, hparams, run.values, frozenset(run.used), requirement)


@dataclass(frozen=True)
class Expansion:
    text: str
    hparams: dict
    values: dict      # every suggested variable by its trial parameter name
    used: frozenset   # the suggested parameters that a template, rule or condition read
    requirement: Any  # (macs, params) -> the first failing `require` condition, or None


class _Run:
    """One expansion: the trial, the values suggested so far, and the variables read."""

    def __init__(self, space: Space, trial: Any):
        self.space, self.trial = space, trial
        self.values: dict[str, Any] = {}
        self.used: set[str] = set()

    def error(self, path: tuple, message: str) -> SpaceError:
        at = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return self.space._err(path, message + (f" (with {at})" if at else ""))

    def assign(self, scope: _Scope, v: Var, param: str) -> bool:
        if v.cond is not None and not self.eval(v.cond, scope, v.path + ("if",)):
            scope.set(v.name, None, ())
            return False
        value = v.suggest(self.trial, param)
        if v.kind != "const":
            self.values[param] = value
        scope.set(v.name, value, (param,))
        return True

    def eval(self, expr: Expr, scope: _Scope, path: tuple) -> Any:
        try:
            return expr.eval(scope)
        except ExprError as e:
            raise self.error(path, str(e)) from None

    def render(self, template: Template, scope: _Scope, path: tuple) -> str:
        try:
            return template.render(scope)
        except ExprError as e:
            raise self.error(path, str(e)) from None

    def rule(self, rname: str, scope: _Scope) -> Any:
        rule = self.space.rules[rname]
        return self._rule(rule, scope)

    def _rule(self, rule: Rule, scope: _Scope) -> Any:
        if rule.kind == "template":
            assert rule.template is not None
            return self.render(rule.template, scope, rule.path)
        assert rule.expr is not None  # an expr rule's expression, a switch's key
        if rule.kind == "expr":
            return self.eval(rule.expr, scope, rule.path)
        key = self.eval(rule.expr, scope, rule.path + ("switch",))
        case = _case(rule.cases, key)
        if case is None:
            case = rule.default
        if case is None:
            raise self.error(rule.path + ("cases",), f"no case for {rule.expr.source} = {key!r}")
        return self._rule(case, scope)


class _Scope(Mapping):
    """Names visible to an expression: this scope's variables, then the rules (evaluated here), then the parent's."""

    def __init__(self, run: _Run, parent: _Scope | None, base: dict | None = None):
        self.run, self.parent = run, parent
        # the scope's own variables; shadows Mapping.values(), which nothing calls on a scope
        self.values: dict[str, Any] = dict(base or {})  # type: ignore[assignment]
        self.params: dict[str, tuple] = {k: () for k in self.values}
        self._rules: dict[str, Any] = {}

    def set(self, name: str, value: Any, params: tuple) -> None:
        self.values[name], self.params[name] = value, params

    def __getitem__(self, name: str) -> Any:
        if name in self.values:
            self.run.used.update(self.params[name])
            return self.values[name]
        if name in self.run.space.rules:
            if name not in self._rules:
                self._rules[name] = self.run.rule(name, self)
            return self._rules[name]
        if self.parent is not None:
            return self.parent[name]
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


# --- loading ------------------------------------------------------------------------------

def load_space(space: str | Path) -> Space:
    """A shipped space by name (`NAME.yaml` in lab.resources.spaces_dir(), the shipped search_spaces
    folder or the folder LAB_SPACES names) or a space file by path."""
    if isinstance(space, Space):
        return space
    path = Path(space)
    if isinstance(space, str) and space in resources.shipped_spaces():
        path = resources.space_file(space)
        override = resources.spaces_override()
        where = f"search_spaces/{space}.yaml" if override is None else str(path)
    elif path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise SpaceError(f"{space}: no such space file")
        where = str(space)
    else:
        shipped, override = resources.shipped_spaces(), resources.spaces_override()
        origin = f" in {resources.ENV}={override}" if override is not None else ""
        names = f"shipped{origin}: {', '.join(shipped)}" if shipped else f"no spaces found in {resources.spaces_dir()}"
        raise SpaceError(f"unknown space {str(space)!r} ({names}; or give a path to a YAML file)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpaceError(f"{where}: cannot read: {e}") from None
    try:
        data, lines = space_yaml.load(text)
    except space_yaml.YamlError as e:
        key, line = _path_text(e.path), f"line {e.line}" if e.line else ""
        loc = f"{key} ({line})" if key and line else key or line
        raise SpaceError(f"{where}: {loc + ': ' if loc else ''}{e.message}") from None
    if data is None:
        raise SpaceError(f"{where}: the file is empty")
    return Space(data, where, lines, name=path.stem)


def describe(spec: Any) -> dict:
    """Block kinds, layout and stem of a grammar point (what a study records per trial).

    `layout` is "isotropic" when every stage runs at one resolution (no downsampling between or
    inside stages), "hierarchical" otherwise; `stem` is "patch" when the stem patchifies.
    """
    grids = set()
    for step in steps(spec):
        if step.section in ("down", "stage"):
            grids.add((step.shape_in.h, step.shape_in.w))
            grids.add((step.shape_out.h, step.shape_out.w))
    return {
        "kinds": sorted({st.block.kind for st in spec.stages}),
        "layout": "isotropic" if len(grids) <= 1 else "hierarchical",
        "stem": "patch" if any(op.patchifies for op in spec.stem) else "conv",
    }


# --- helpers ------------------------------------------------------------------------------

def _rule_parts(rule: Rule) -> Iterator[tuple[Any, tuple]]:
    """The expressions and templates of a rule, each with its key path (switches as themselves)."""
    if rule.kind == "template":
        yield rule.template, rule.path
    elif rule.kind == "expr":
        yield rule.expr, rule.path + ("expr",)
    else:
        yield rule.expr, rule.path + ("switch",)
        yield rule, rule.path  # for the check of its cases against the choices
        for case in list(rule.cases.values()) + ([rule.default] if rule.default else []):
            yield from _rule_parts(case)


def _path_text(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) and not isinstance(p, bool) else (f".{p}" if out else str(p))
    return out


def _kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return repr(value)


def _number(value: Any, suffixes: bool = False) -> float | None:
    """A number from YAML: 3, 0.5, '1e-4' (PyYAML reads a dotless exponent as text), '60M' with suffixes."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        s = value.strip().replace("_", "")
        if not s.isascii():   # float() would read other scripts' digits ('６0M')
            return None
        scale = 1.0
        if suffixes and s[-1:] in _SUFFIX:
            s, scale = s[:-1], _SUFFIX[s[-1]]
        try:
            x = float(s) * scale
        except ValueError:
            return None
        return x if math.isfinite(x) else None
    return None


def _case(cases: dict, key: Any) -> Any:
    """The case of `key`; keys also match as text (a case keyed 2 in YAML is "2" after JSON)."""
    try:
        if key in cases:
            return cases[key]
    except TypeError:
        return None
    return cases.get(str(key)) if not isinstance(key, str) else None


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _mega(x: int) -> str:
    return f"{x / 1e6:g}"


def _reason_kind(reason: str) -> str:
    for prefix in ("over budget", "under budget", "SpecError", "constraint fails", "input mismatch"):
        if reason.startswith(prefix):
            return prefix
    return "other"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    return x
