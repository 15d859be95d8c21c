"""One builder for every grammar point: ``build(spec) -> Net``. No per-architecture classes."""

from __future__ import annotations

import torch
from torch import nn

from lab.cost import steps
from lab.grammar.spec import Spec


class Net(nn.Module):
    """stem -> stages -> head, with timm's forward_features / forward_head split."""

    def __init__(self, stem: nn.Sequential, stages: nn.Sequential, head: nn.Sequential, num_features: int):
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.head = head
        self.num_features = num_features

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
    num_features = 0
    done = 0
    for step in steps(spec, num_classes, in_chans):
        if step.section == "stem":
            stem += _converter(step) + [step.element.build(step.shape_in, step.ctx)]
        elif step.section == "down":
            down += _converter(step) + [step.element.build(step.shape_in, step.ctx)]
        elif step.section == "stage":
            st = spec.stages[step.stage]
            down += _converter(step)
            units = st.block.build_stage(step.shape_in, st.width, st.depth, st.stride,
                                         rates[done:done + st.depth])
            done += st.depth
            stages.append(StageModule(nn.Sequential(*down) if down else nn.Identity(), nn.Sequential(*units)))
            down = []
            num_features = step.shape_out.c
        else:
            head += _converter(step) + [step.element.build(step.shape_in, step.ctx)]
    return Net(nn.Sequential(*stem), nn.Sequential(*stages), nn.Sequential(*head), num_features)
