"""One builder for every grammar point: ``build(spec) -> Net``. No per-architecture classes."""

from __future__ import annotations

import torch
from torch import nn

from typing import NamedTuple

from lab.cost import steps
from lab.grammar.spec import Spec
from lab.kinds.base import Kind, Shape


class Placement(NamedTuple):
    """Where one grammar element sits in a built Net: its module path, the element, its section
    (stem, down, block, head), its stage (None in the stem and head), its index in the section
    (the block's index within its stage; the element's among the section's elements otherwise)
    and the shape it receives (a stage's input, for its blocks)."""

    path: str
    element: Kind
    section: str
    stage: int | None
    index: int
    shape: Shape


class Net(nn.Module):
    """stem -> stages -> head, with timm's forward_features / forward_head split. `placements`
    says which grammar element built which submodule (weight interop names keys by it)."""

    def __init__(self, stem: nn.Sequential, stages: nn.Sequential, head: nn.Sequential, num_features: int,
                 placements: tuple[Placement, ...] = ()):
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.head = head
        self.num_features = num_features
        self.placements = placements

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ToTokens(nn.Module):
    """(B, C, H, W) map -> (B, H*W, C) tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class ToMap(nn.Module):
    """(B, H*W, C) tokens -> (B, C, H, W) map."""

    def __init__(self, h: int, w: int):
        super().__init__()
        self.h, self.w = h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.h, self.w)


def _converter(step) -> list[nn.Module]:
    if step.convert is None:
        return []
    return [ToTokens()] if step.convert == "nchw->nlc" else [ToMap(step.shape_in.h, step.shape_in.w)]


class StageModule(nn.Module):
    def __init__(self, down: nn.Module, blocks: nn.Sequential):
        super().__init__()
        self.down = down
        self.blocks = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.down(x))


def build(spec: Spec, num_classes: int = 1000, in_chans: int = 3, drop_path: float = 0.0) -> Net:
    """Build `spec` as a torch module. `drop_path` is the stochastic-depth rate of the last block
    (rising linearly from 0 over all blocks)."""
    total_blocks = sum(st.depth for st in spec.stages)
    rates = [drop_path * i / max(1, total_blocks - 1) for i in range(total_blocks)]
    stem, head, stages, down = [], [], [], []
    placed: list[Placement] = []
    counts = {"stem": 0, "down": 0, "head": 0}
    num_features = 0
    done = 0

    def add(modules: list[nn.Module], path: str, step) -> None:
        modules += _converter(step)
        placed.append(Placement(f"{path}.{len(modules)}", step.element, step.section,
                                None if step.section != "down" else len(stages), counts[step.section],
                                step.shape_in))
        counts[step.section] += 1
        modules.append(step.element.build(step.shape_in, step.ctx))

    for step in steps(spec, num_classes, in_chans):
        if step.section == "stem":
            add(stem, "stem", step)
        elif step.section == "down":
            add(down, f"stages.{len(stages)}.down", step)
        elif step.section == "stage":
            st = spec.stages[step.stage]
            down += _converter(step)
            units = st.block.build_stage(step.shape_in, st.width, st.depth, st.stride,
                                         rates[done:done + st.depth])
            placed += [Placement(f"stages.{len(stages)}.blocks.{j}", st.block, "block", len(stages), j, step.shape_in)
                       for j in range(st.depth)]
            done += st.depth
            stages.append(StageModule(nn.Sequential(*down) if down else nn.Identity(), nn.Sequential(*units)))
            down, counts["down"] = [], 0
            num_features = step.shape_out.c
        else:
            add(head, "head", step)
    return Net(nn.Sequential(*stem), nn.Sequential(*stages), nn.Sequential(*head), num_features, tuple(placed))
