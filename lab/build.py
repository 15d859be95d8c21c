"""One builder for every grammar point: ``build(spec) -> Net``. No per-architecture classes."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from lab.cost import steps
from lab.grammar.spec import Spec
from lab.grammar.trace import frame_of
from lab.kinds.base import NCHW, NLC, Kind, Shape
from lab.layers import DropPath, fold_frames


class Placement(NamedTuple):
    """Where one grammar element sits in a built Net: its module path, the element, its section
    (stem, down, block, head), its stage (None in the stem and head), its index in the section
    (the block's index within its stage; the element's among the section's elements otherwise)
    and the shape it receives (a stage's input, for its blocks)."""

    path: str
    element: Kind
    section: str
    stage: int | None
    index: int  # type: ignore[assignment]  # a field that shadows tuple.index, on purpose
    shape: Shape


class Net(nn.Module):
    """stem -> stages -> head, with timm's forward_features / forward_head split. `placements`
    says which grammar element built which submodule (weight interop names keys by it)."""

    def __init__(self, stem: nn.Sequential, stages: nn.Sequential, head: nn.Sequential, num_features: int,
                 placements: tuple[Placement, ...] = (), frames: int = 1):
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.head = head
        self.num_features = num_features
        self.placements = placements
        self.frames = frames  # > 1: a video model, whose input is a clip (B, C, frames, H, W)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.frames > 1:  # frames travel folded into the batch (see lab.kinds.base.Shape)
            if x.dim() != 5 or x.shape[2] != self.frames:
                raise ValueError(f"this video model takes clips (B, C, {self.frames}, H, W), got {tuple(x.shape)}")
            x = fold_frames(x)
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ToTokens(nn.Module):
    """(B, C, H, W) map -> (B, H*W, C) tokens; a clip's (B*F, C, H, W) -> (B, F*H*W, C)."""

    def __init__(self, frames: int = 1):
        super().__init__()
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)
        return x if self.frames == 1 else x.reshape(-1, self.frames * x.shape[1], x.shape[2])


class ToMap(nn.Module):
    """(B, H*W, C) tokens -> (B, C, H, W) map; a clip's (B, F*H*W, C) -> (B*F, C, H, W)."""

    def __init__(self, h: int, w: int):
        super().__init__()
        self.h, self.w = h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[2]
        return x.reshape(-1, self.h * self.w, c).transpose(1, 2).reshape(-1, c, self.h, self.w)


def _converter(step) -> list[nn.Module]:
    if step.convert is None:
        return []
    s = step.shape_in
    return [ToTokens(s.f)] if step.convert == "nchw->nlc" else [ToMap(s.h, s.w)]


def _takes_frame_tokens(step) -> bool:
    """Does a per-frame element receive or hand on a clip's tokens (which must be folded into frames)?"""
    return (step.shape_in.f > 1 and step.element.per_frame
            and NLC in (step.ctx.layout, step.element.layout_out(step.ctx.layout)))


def _frames_in_batch(step) -> bool:
    """Does the element's input carry a clip's frames in its batch dimension? Maps always do;
    tokens do when a per-frame stage gets them folded."""
    return step.shape_in.f > 1 and (step.ctx.layout == NCHW or _takes_frame_tokens(step))


class StageModule(nn.Module):
    """A stage: its transition, then its blocks. Blocks that work on each frame of a clip's tokens
    (`fold` = the frames) get them as (B*F, H*W, C), and hand them back as (B, F*H*W, C)."""

    def __init__(self, down: nn.Module, blocks: nn.Sequential, fold: int = 1):
        super().__init__()
        self.down = down
        self.blocks = blocks
        self.fold = fold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        if self.fold == 1:
            return self.blocks(x)
        c = x.shape[2]
        x = self.blocks(x.reshape(x.shape[0] * self.fold, -1, c))
        return x.reshape(-1, self.fold * x.shape[1], x.shape[2])


def build(spec: Spec, num_classes: int = 1000, in_chans: int = 3, drop_path: float = 0.0) -> Net:
    """Build `spec` as a torch module. `drop_path` is the stochastic-depth rate of the last block
    (rising linearly from 0 over all blocks)."""
    total_blocks = sum(st.depth for st in spec.stages)
    rates = [drop_path * i / max(1, total_blocks - 1) for i in range(total_blocks)]
    stem: list[nn.Module] = []
    head: list[nn.Module] = []
    stages: list[nn.Module] = []
    down: list[nn.Module] = []
    placed: list[Placement] = []
    counts = {"stem": 0, "down": 0, "head": 0}
    num_features = 0
    done = 0

    def add(modules: list[nn.Module], path: str, step) -> None:
        if _takes_frame_tokens(step):  # a kind's bug, not a user's: ops fold a clip's tokens themselves (merge)
            raise RuntimeError(f"{step.element.kind} works on each frame but receives or hands on tokens: "
                               "it must handle Shape.f itself (set per_frame = False)")
        modules += _converter(step)
        placed.append(Placement(f"{path}.{len(modules)}", step.element, step.section,
                                None if step.section != "down" else len(stages), counts[step.section],
                                step.shape_in))
        counts[step.section] += 1
        modules.append(step.element.build(frame_of(step.element, step.shape_in), step.ctx))

    for step in steps(spec, num_classes, in_chans):
        if step.section == "stem":
            add(stem, "stem", step)
        elif step.section == "down":
            add(down, f"stages.{len(stages)}.down", step)
        elif step.section == "stage":
            assert step.stage is not None  # a stage's step has its index
            st = spec.stages[step.stage]
            down += _converter(step)
            units = nn.Sequential(*st.block.build_stage(frame_of(st.block, step.shape_in), st.width, st.depth,
                                                        st.stride, rates[done:done + st.depth]))
            if _frames_in_batch(step):  # stochastic depth drops a clip's branch, not single frames
                for m in units.modules():
                    if isinstance(m, DropPath):
                        m.frames = step.shape_in.f
            placed += [Placement(f"stages.{len(stages)}.blocks.{j}", st.block, "block", len(stages), j, step.shape_in)
                       for j in range(st.depth)]
            done += st.depth
            stages.append(StageModule(nn.Sequential(*down) if down else nn.Identity(), units,
                                      step.shape_in.f if _takes_frame_tokens(step) else 1))
            down, counts["down"] = [], 0
            num_features = step.shape_out.c
        else:
            add(head, "head", step)
    return Net(nn.Sequential(*stem), nn.Sequential(*stages), nn.Sequential(*head), num_features, tuple(placed),
               spec.frames)
