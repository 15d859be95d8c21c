"""Multipliers: scaled variants of any point are points too (``resnet50@32px,w=0.25``,
``vit_s16@32px,p=4``)."""

from __future__ import annotations

import math
from dataclasses import replace

from lab.errors import SpecError
from lab.grammar.spec import Spec, Stage
from lab.kinds.base import round_channels


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def scale(spec: Spec, width: float = 1.0, depth: float = 1.0, res: int | None = None,
          patch: int | None = None, frames: int | None = None) -> Spec:
    """`spec` with every channel count times `width` (rounded to a multiple of 8 that the block
    accepts), every stage depth times `depth` (rounded up), input resolution `res`, the
    stem's patchify op taking `patch` x `patch` patches, and clips of `frames` frames (a video
    model's)."""
    if frames is not None and frames != spec.frames and spec.frames == 1:
        raise SpecError(f"clips of {frames} frames asked of an image model (its text starts @{spec.res}, "
                        f"not @FRAMESx{spec.res})", "frames")
    if not (0 < width <= 64):
        raise SpecError(f"width multiplier must be in (0, 64], got {width}", "w")
    if not (0 < depth <= 64):
        raise SpecError(f"depth multiplier must be in (0, 64], got {depth}", "d")
    # a channel count equal to a stage width scales to that stage's (rounded) width, so that a
    # stem or transition that sets a stage's width (patch(c=384) before mhsa 12x384) still does
    def plain(c: int) -> int:
        return round_channels(c * width)

    stage_widths: dict[int, int] = {}
    blocks = []
    for st in spec.stages:
        block = st.block.widen(width, plain) if width != 1 else st.block
        blocks.append(block)
        stage_widths.setdefault(st.width, round_channels(st.width * width, _lcm(8, block.width_quantum())))

    def channels(c: int) -> int:
        return stage_widths.get(c) or plain(c)

    stages = []
    for st, block in zip(spec.stages, blocks):
        w = st.width if width == 1 else round_channels(st.width * width, _lcm(8, block.width_quantum()))
        d = st.depth if depth == 1 else max(1, math.ceil(st.depth * depth - 1e-9))
        down = tuple(op.widen(width, channels) for op in st.down) if width != 1 else st.down
        stages.append(Stage(block, d, w, st.stride, down))
    stem = tuple(op.widen(width, channels) for op in spec.stem) if width != 1 else spec.stem
    if patch is not None:
        if not any(op.patchifies for op in stem):
            raise SpecError("the patch multiplier needs a stem that patchifies (patch(p=N,...))", "p")
        if not 1 <= patch <= 256:
            raise SpecError(f"patch size must be in 1..256, got {patch}", "p")
        stem = tuple(replace(op, p=patch) if op.patchifies else op for op in stem)
    head = tuple(op.widen(width, channels) for op in spec.head) if width != 1 else spec.head
    return Spec(spec.res if res is None else res, stem, tuple(stages), head,
                spec.frames if frames is None else frames)
