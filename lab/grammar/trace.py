"""The one walk through a Spec: the shape entering and leaving every element, and its cost.

Validation, the cost model and the builder all follow this walk, so what is costed is
exactly what is built.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

from lab.errors import SpecError
from lab.kinds import Context, Cost, Kind, Shape
from lab.kinds.base import ANY, NCHW

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
    ctx: Context  # ctx.layout: the layout the element receives (after any conversion)
    convert: str | None  # "nchw->nlc" or "nlc->nchw" when the walk converts before the element


def frame_of(element: Kind, s: Shape) -> Shape:
    """The shape `element` is costed and built on: one frame's, for an element that works on each
    frame of a clip alone; the clip's otherwise."""
    return s._replace(f=1) if element.per_frame and s.f > 1 else s


def _on_frames(element: Kind, s: Shape, out: Shape, cost: Cost) -> tuple[Shape, Cost]:
    """A per-frame element's output and cost over all the frames of `s`."""
    if not element.per_frame or s.f == 1:
        return out, cost
    return out._replace(f=s.f), cost.on_frames(s.f)


def _check_prefix(element: Kind, s: Shape, path: str) -> None:
    """Class/distillation tokens belong to no grid position and no frame: elements that work on the
    grid, or on each frame alone, cannot take them."""
    if not s.t:
        return
    if element.per_frame and s.f > 1:
        raise SpecError(f"{element.kind} works on each frame alone, but the tokens of the clip carry {s.t} "
                        "prefix token(s) (class/distillation) that belong to no frame", path)
    if element.needs_grid:
        raise SpecError(f"{element.kind} works on the token grid, but the tokens carry {s.t} prefix token(s) "
                        "(class/distillation)", path)


def _enter(element: Kind, s: Shape, layout: str, path: str) -> tuple[str, str | None]:
    """The layout an element receives, and the conversion needed to get there."""
    need = element.layout
    if need == ANY or need == layout:
        return layout, None
    if need == NCHW and s.t:
        raise SpecError(f"{element.kind} works on maps, but the tokens carry {s.t} prefix token(s) "
                        "(class/distillation) that a map cannot hold", path)
    return need, f"{layout}->{need}"


def trace(spec: Spec, num_classes: int = 1000, in_chans: int = 3) -> tuple[Step, ...]:
    """Walk the spec for an input of `in_chans` x res x res (x frames) and a `num_classes` head."""
    steps: list[Step] = []
    s = Shape(in_chans, spec.res, spec.res, 0, spec.frames)
    ctx = Context(num_classes, in_chans)
    layout = NCHW

    def op_step(op, path: str, section: str, stage: int | None, c: Context) -> None:
        nonlocal s, layout
        layout, convert = _enter(op, s, layout, path)
        # an activation may work in place only on the output of a norm or conv, whose backward
        # does not need it (a ReLU's or a block's output is saved for their backward)
        inplace = (convert is None and bool(steps) and steps[-1].section != "stage"
                   and steps[-1].element.inplace_after)
        if layout != c.layout or inplace != c.inplace:
            c = replace(c, layout=layout, inplace=inplace)
        _check_prefix(op, s, path)
        try:
            out, cost = _on_frames(op, s, *op.shape(frame_of(op, s), c))
        except SpecError as e:
            raise e.at(path) from None
        steps.append(Step(path, section, op, stage, s, out, cost, c, convert))
        s, layout = out, op.layout_out(layout)

    for i, op in enumerate(spec.stem):
        op_step(op, f"stem[{i}]", "stem", None, ctx)
    for si, st in enumerate(spec.stages):
        if st.down:
            down_ctx = Context(num_classes, in_chans, st.width)
            for j, op in enumerate(st.down):
                op_step(op, f"stages[{si}].down[{j}]", "down", si, down_ctx)
        path = f"stages[{si}]"
        layout, convert = _enter(st.block, s, layout, f"{path}.block")
        block_ctx = ctx if layout == ctx.layout else replace(ctx, layout=layout)
        _check_prefix(st.block, s, f"{path}.block")
        try:
            out, cost = _on_frames(st.block, s, *st.block.stage(frame_of(st.block, s), st.width, st.depth,
                                                                st.stride))
        except SpecError as e:
            raise e.at(f"{path}.block") from None
        if out.h < 1 or out.w < 1:
            raise SpecError(f"resolution collapses below 1 pixel ({s.h}x{s.w} in, stride {st.stride})",
                            f"{path}.stride")
        steps.append(Step(path, "stage", st.block, si, s, out, cost, block_ctx, convert))
        s, layout = out, st.block.layout_out(layout)
    for i, op in enumerate(spec.head):
        op_step(op, f"head[{i}]", "head", None, ctx)
    last = len(spec.head) - 1
    if not spec.head[last].classifier:
        raise SpecError("a head ends with its classifier (fc or distill)", f"head[{last}]")
    extra = [i for i, op in enumerate(spec.head[:last]) if op.classifier]
    if extra:
        raise SpecError("a head has one classifier, at its end", f"head[{extra[0]}]")
    return tuple(steps)
