"""The typed grammar point: ``Spec = stem -> stages -> head``.

A stage is ``depth x block`` at one width, entered through an optional transition: a stride
taken by its first block (``/2``) or a sequence of ops (``/(ln,conv(k=2,s=2))``, ``/merge``).
A Spec validates itself on construction: an invalid point cannot exist.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from lab.errors import SpecError
from lab.grammar.format import format_spec
from lab.grammar.trace import Step, trace
from lab.kinds import REGISTRY, Block, Kind, Op

MAX_RES = 8192
MAX_FRAMES = 4096
MAX_DEPTH = 1000
MAX_WIDTH = 65536
MAX_STRIDE = 8


def make_kind(name: Any, args: dict[str, Any], role: str, path: str) -> Kind:
    """Instantiate a registered kind from its name and parameters, checking both."""
    cls = REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        known = ", ".join(sorted(k for k, c in REGISTRY.items() if c.role == role))
        raise SpecError(f"unknown {role} kind {name!r} (known: {known})", path)
    if cls.role != role:
        raise SpecError(
            f"{name!r} is {'a block' if cls.role == 'block' else 'an op'}, not {'a block' if role == 'block' else 'an op'}", path
        )
    names = [f.name for f in dataclasses.fields(cls)]
    for key in args:
        if key not in names:
            expected = ", ".join(names) if names else "no parameters"
            raise SpecError(f"unknown parameter {key!r} of {name} (expected {expected})", f"{path}.{key}")
    try:
        return cls(**args)
    except SpecError as e:
        raise e.at(path) from None


def _check_int(value: Any, lo: int, hi: int, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"expected an integer, got {value!r}", path)
    if not lo <= value <= hi:
        raise SpecError(f"expected {lo}..{hi}, got {value}", path)
    return value


def _check_ops(ops: Any, path: str, allow_empty: bool) -> tuple[Op, ...]:
    ops = tuple(ops)
    if not ops and not allow_empty:
        raise SpecError("expected at least one op", path)
    for i, op in enumerate(ops):
        if not isinstance(op, Op):
            raise SpecError(f"expected an op, got {op!r}", f"{path}[{i}]")
    return ops


@dataclass(frozen=True)
class Stage:
    """`depth` blocks `width` wide; the first takes `stride`, after the `down` transition ops."""

    block: Block
    depth: int
    width: int
    stride: int = 1
    down: tuple[Op, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.block, Block):
            raise SpecError(f"expected a block, got {self.block!r}", "block")
        _check_int(self.depth, 1, MAX_DEPTH, "depth")
        _check_int(self.width, 1, MAX_WIDTH, "width")
        _check_int(self.stride, 1, MAX_STRIDE, "stride")
        object.__setattr__(self, "down", _check_ops(self.down, "down", allow_empty=True))
        if self.down and self.stride != 1:
            raise SpecError("a stage enters through a stride or a transition, not both", "stride")


@dataclass(frozen=True)
class Spec:
    """One point of the grammar: input resolution, stem ops, stages and head ops; `frames` > 1
    makes it a video model, whose input is a clip (B, C, frames, res, res)."""

    res: int
    stem: tuple[Op, ...]
    stages: tuple[Stage, ...]
    head: tuple[Op, ...] = field(default=())
    frames: int = 1
    if TYPE_CHECKING:  # not a field at run time: __post_init__ sets it (the walk, kept for cost())
        _trace: tuple[Step, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_int(self.res, 1, MAX_RES, "res")
        _check_int(self.frames, 1, MAX_FRAMES, "frames")
        object.__setattr__(self, "stem", _check_ops(self.stem, "stem", allow_empty=False))
        object.__setattr__(self, "head", _check_ops(self.head, "head", allow_empty=False))
        stages = tuple(self.stages)
        if not stages:
            raise SpecError("expected at least one stage", "stages")
        for i, st in enumerate(stages):
            if not isinstance(st, Stage):
                raise SpecError(f"expected a stage, got {st!r}", f"stages[{i}]")
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "_trace", trace(self))  # validates every shape; kept for cost()

    def input_shape(self, in_chans: int = 3) -> tuple[int, ...]:
        """One input's shape: (C, res, res) for an image model, (C, frames, res, res) for a video one."""
        return (in_chans, self.res, self.res) if self.frames == 1 else (in_chans, self.frames, self.res, self.res)

    # --- identity -------------------------------------------------------------------
    @property
    def text(self) -> str:
        return format_spec(self)

    @property
    def arch_id(self) -> str:
        """A short stable name of the point: a hash of its canonical text."""
        return hashlib.blake2b(self.text.encode(), digest_size=5).hexdigest()

    def __str__(self) -> str:
        return self.text

    # --- dict / JSON / YAML ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def kind(k: Kind) -> dict[str, Any]:
            return {"kind": k.kind, **k.args()}

        return {
            "res": self.res,
            **({"frames": self.frames} if self.frames != 1 else {}),
            "stem": [kind(op) for op in self.stem],
            "stages": [{"block": kind(st.block), "depth": st.depth, "width": st.width,
                        **({"stride": st.stride} if st.stride != 1 else {}),
                        **({"down": [kind(op) for op in st.down]} if st.down else {})}
                       for st in self.stages],
            "head": [kind(op) for op in self.head],
        }

    @classmethod
    def from_dict(cls, d: Any) -> Spec:
        if not isinstance(d, dict):
            raise SpecError(f"expected a mapping with res, stem, stages, head; got {type(d).__name__}")
        unknown = set(d) - {"res", "frames", "stem", "stages", "head"}
        if unknown:
            raise SpecError(f"unknown field {sorted(unknown)[0]!r} (expected res, frames, stem, stages, head)",
                            sorted(unknown)[0])
        for key in ("res", "stem", "stages", "head"):
            if key not in d:
                raise SpecError("missing field", key)

        def kinds(items: Any, role: str, path: str) -> list[Kind]:
            if not isinstance(items, list):
                raise SpecError("expected a list", path)
            return [_kind_from_dict(x, role, f"{path}[{i}]") for i, x in enumerate(items)]

        if not isinstance(d["stages"], list):
            raise SpecError("expected a list", "stages")
        stages = []
        for i, st in enumerate(d["stages"]):
            path = f"stages[{i}]"
            if not isinstance(st, dict):
                raise SpecError("expected a mapping with block, depth, width", path)
            extra = set(st) - {"block", "depth", "width", "stride", "down"}
            if extra:
                raise SpecError("unknown field (expected block, depth, width, stride, down)",
                                f"{path}.{sorted(extra)[0]}")
            for key in ("block", "depth", "width"):
                if key not in st:
                    raise SpecError("missing field", f"{path}.{key}")
            try:  # make_kind checked each kind's role: the block is a Block, the others are Ops
                block = cast(Block, _kind_from_dict(st["block"], "block", "block"))
                down = cast(tuple[Op, ...], tuple(kinds(st.get("down", []), "op", "down")))
                stages.append(Stage(block, st["depth"], st["width"], st.get("stride", 1), down))
            except SpecError as e:
                raise e.at(path) from None
        return cls(d["res"], cast(tuple[Op, ...], tuple(kinds(d["stem"], "op", "stem"))), tuple(stages),
                   cast(tuple[Op, ...], tuple(kinds(d["head"], "op", "head"))), d.get("frames", 1))


def _kind_from_dict(d: Any, role: str, path: str) -> Kind:
    if isinstance(d, str):
        return make_kind(d, {}, role, path)
    if not isinstance(d, dict) or "kind" not in d:
        raise SpecError(f"expected a mapping with a 'kind' key, got {d!r}", path)
    args = {k: v for k, v in d.items() if k != "kind"}
    return make_kind(d["kind"], args, role, path)
