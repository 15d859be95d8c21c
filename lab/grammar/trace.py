"""The one walk through a Spec: the shape entering and leaving every element, and its cost.

Validation, the cost model and the builder all follow this walk, so what is costed is
exactly what is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from lab.errors import SpecError
from lab.kinds import Context, Cost, Kind, Shape

if TYPE_CHECKING:
    from lab.grammar.spec import Spec


class Step(NamedTuple):
    path: str  # "stem[0]", "stages[1].down[0]", "stages[1]", "head[2]"
    section: str  # "stem" | "down" | "stage" | "head"
    element: Kind
    stage: int | None
    shape_in: Shape
    shape_out: Shape
    cost: Cost
    ctx: Context


def trace(spec: "Spec", num_classes: int = 1000, in_chans: int = 3) -> tuple[Step, ...]:
    """Walk the spec for an input of `in_chans` x res x res and a `num_classes` head."""
    steps: list[Step] = []
    s = Shape(in_chans, spec.res, spec.res)
    ctx = Context(num_classes, in_chans)

    def op_step(op, path: str, section: str, stage: int | None, c: Context) -> None:
        nonlocal s
        try:
            out, cost = op.shape(s, c)
        except SpecError as e:
            raise e.at(path) from None
        steps.append(Step(path, section, op, stage, s, out, cost, c))
        s = out

    for i, op in enumerate(spec.stem):
        op_step(op, f"stem[{i}]", "stem", None, ctx)
    for si, st in enumerate(spec.stages):
        if st.down:
            down_ctx = Context(num_classes, in_chans, st.width)
            for j, op in enumerate(st.down):
                op_step(op, f"stages[{si}].down[{j}]", "down", si, down_ctx)
        path = f"stages[{si}]"
        try:
            out, cost = st.block.stage(s, st.width, st.depth, st.stride)
        except SpecError as e:
            raise e.at(f"{path}.block") from None
        if out.h < 1 or out.w < 1:
            raise SpecError(f"resolution collapses below 1 pixel ({s.h}x{s.w} in, stride {st.stride})",
                            f"{path}.stride")
        steps.append(Step(path, "stage", st.block, si, s, out, cost, ctx))
        s = out
    for i, op in enumerate(spec.head):
        op_step(op, f"head[{i}]", "head", None, ctx)
    if spec.head[-1].kind != "fc":
        raise SpecError("a head ends with the classifier fc", f"head[{len(spec.head) - 1}]")
    return tuple(steps)
