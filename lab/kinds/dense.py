"""DenseNet layer: concatenation instead of addition.

    dense(bn=4) 6x32   six layers of growth 32: BN, ReLU, 1x1 to bn*32, BN, ReLU, 3x3 to 32, concat
The stage width is the growth rate; the stage leaves with input + depth x growth channels.
Downsampling happens in the transition between dense stages:
``/(bn,relu,conv(k=1,r=0.5),avgpool(k=2,s=2))``.
"""

from __future__ import annotations

import torch
from torch import nn

from lab.errors import SpecError
from lab.kinds.base import Block, Cost, Flow, Saved, Shape, conv_cost, input_saved, norm_cost, numel, param, register
from lab.layers import init_conv_, make_conv


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int, drop: float):
        super().__init__()
        mid = bn_size * growth
        self.branch = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), make_conv(cin, mid, 1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), make_conv(mid, growth, 3))
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.drop(self.branch(x))], 1)


@register
class Dense(Block):
    """DenseNet-BC layer; width = growth rate."""

    kind = "dense"
    bn: int = param(4, lo=1, hi=64, doc="bottleneck width as a multiple of the growth rate")

    def unit(self, s: Shape, width: int, stride: int) -> tuple[Shape, Cost]:
        if stride != 1:
            raise SpecError("dense stages keep their resolution: downsample in a transition instead of /2")
        mid = self.bn * width
        cost = (norm_cost(s.c) + conv_cost(s.c, mid, 1, s.h, s.w) + norm_cost(mid)
                + conv_cost(mid, width, 3, s.h, s.w))
        return Shape(s.c + width, s.h, s.w), cost

    def stage(self, s: Shape, width: int, depth: int, stride: int) -> tuple[Shape, Cost]:
        total = Cost()
        for _ in range(depth):  # each layer sees every earlier layer's output
            s, c = self.unit(s, width, stride)
            total = total + c
        return s, total

    uniform_units = False   # each layer's input grows by the growth rate

    def saved_unit(self, s: Shape, width: int, stride: int, flow: Flow) -> tuple[Saved, Flow]:
        """All earlier features twice (the first norm's input, its ReLU's output), the bottleneck conv's
        output twice (norm input, ReLU output); the concatenation keeps nothing."""
        stream = Saved(0, numel(s)) if flow.wide else Saved(numel(s))
        return input_saved(s, flow) + stream + Saved(2 * self.bn * width * s.h * s.w), Flow(False, flow.wide)

    def timm_names(self, dialect: str) -> dict[str, str] | None:
        if dialect != "densenet":
            return None
        return {"branch.0": "norm1", "branch.2": "conv1", "branch.3": "norm2", "branch.5": "conv2"}

    def build_unit(self, s: Shape, width: int, stride: int, drop_path: float) -> nn.Module:
        layer = DenseLayer(s.c, width, self.bn, 0.0)
        init_conv_(layer)
        return layer
