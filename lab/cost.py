"""Analytic cost of a grammar point, without building a module.

Parameters, MACs (one multiply-accumulate counts once, as the lecture's tables count "FLOPs")
and activations (elements written by conv and linear layers, as pycls counts them), per
stage and in total.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.grammar.format import format_kind
from lab.grammar.spec import Spec
from lab.grammar.trace import Step, frame_of, trace
from lab.kinds import Cost
from lab.kinds.base import NLC, Block, Flow, Saved


@dataclass(frozen=True)
class Row:
    """One line of the per-stage table: the stem, a stage (with its transition), or the head."""

    name: str
    block: str
    depth: int
    channels: int
    h: int
    w: int
    tokens: bool  # the output is tokens (B, prefix + F*H*W, C) rather than a map (B*F, C, H, W)
    prefix: int  # class/distillation tokens in front of the grid
    params: int
    macs: int
    acts: int
    frames: int = 1  # frames of the output grid (1 for images)


@dataclass(frozen=True)
class Report:
    params: int
    macs: int
    acts: int
    rows: tuple[Row, ...]

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def steps(spec: Spec, num_classes: int = 1000, in_chans: int = 3) -> tuple[Step, ...]:
    if num_classes == 1000 and in_chans == 3:
        return spec._trace  # computed when the spec was validated
    return trace(spec, num_classes, in_chans)


def totals(spec: Spec, num_classes: int = 1000, in_chans: int = 3) -> Cost:
    """Total params, MACs and activations (the fast path that samplers use)."""
    total = Cost()
    for step in steps(spec, num_classes, in_chans):
        total = total + step.cost
    return total


def step_saved(step: Step, spec: Spec, flow: Flow) -> tuple[Saved, Flow]:
    """What one step of the walk keeps for backward per image (each kind counts its own: Kind.saved,
    Block.saved_stage), given the flow of its input; per-frame elements count one frame, times the frames."""
    el, s = step.element, frame_of(step.element, step.shape_in)
    if step.convert is not None:   # a layout conversion hands on a view or a fresh copy: nothing kept
        flow = flow._replace(kept=False)
    if isinstance(el, Block):
        assert step.stage is not None  # a stage's step has its index
        st = spec.stages[step.stage]
        kept, out = el.saved_stage(s, st.width, st.depth, st.stride, flow)
    else:
        kept, out = el.saved(s, frame_of(el, step.shape_out), step.ctx, flow)
    frames = step.shape_in.f if el.per_frame and step.shape_in.f > 1 else 1
    return kept.times(frames), out


def saved(spec: Spec, num_classes: int = 1000, in_chans: int = 3) -> tuple[Saved, ...]:
    """Per step of the walk, the elements one image's training forward keeps for backward."""
    flow, out = Flow(), []
    for step in steps(spec, num_classes, in_chans):
        kept, flow = step_saved(step, spec, flow)
        out.append(kept)
    return tuple(out)


def _row_name(step: Step) -> str:
    if step.section in ("stem", "head"):
        return step.section
    assert step.stage is not None  # a stage's or a transition's step has its index
    return f"stage {step.stage + 1}"


def cost(spec: Spec, num_classes: int = 1000, in_chans: int = 3) -> Report:
    """The cost report of `spec` with a `num_classes` head on `in_chans` input channels."""
    groups: dict[str, list[Step]] = {}
    for step in steps(spec, num_classes, in_chans):
        groups.setdefault(_row_name(step), []).append(step)
    rows = []
    for name, group in groups.items():
        c = sum((s.cost for s in group), Cost())
        last = group[-1]
        out = last.shape_out
        tokens = last.element.layout_out(last.ctx.layout) == NLC
        if name in ("stem", "head"):
            label, depth = ",".join(format_kind(s.element) for s in group), 1
        else:
            assert last.stage is not None  # a stage's group (see _row_name)
            st = spec.stages[last.stage]
            label, depth = format_kind(st.block), st.depth
        rows.append(Row(name, label, depth, out.c, out.h, out.w, tokens, out.t, c.params, c.macs, c.acts, out.f))
    total = totals(spec, num_classes, in_chans)
    return Report(total.params, total.macs, total.acts, tuple(rows))
