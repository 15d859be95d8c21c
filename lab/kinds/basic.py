"""ResNet basic block (v1, post-activation): 3x3 conv, norm, ReLU, 3x3 conv, norm, add, ReLU."""

from __future__ import annotations

from torch import nn

from lab.kinds.base import Block, Cost, Shape, conv_cost, norm_cost, out_size, register
from lab.kinds.residual import PostActResidual, make_shortcut, shortcut_cost, zero_init_last_norm
from lab.layers import init_conv_, make_conv


@register
class Basic(Block):
    """ResNet-18/34 block: two 3x3 convs with BatchNorm and a residual connection."""

    kind = "basic"

    def unit(self, s: Shape, width: int, stride: int) -> tuple[Shape, Cost]:
        h, w = out_size(s.h, 3, stride, 1), out_size(s.w, 3, stride, 1)
        cost = (conv_cost(s.c, width, 3, h, w) + norm_cost(width)
                + conv_cost(width, width, 3, h, w) + norm_cost(width)
                + shortcut_cost(s.c, width, stride, h, w))
        return Shape(width, h, w), cost

    def timm_names(self, dialect: str) -> dict[str, str] | None:
        if dialect != "resnet":
            return None
        return {"branch.0": "conv1", "branch.1": "bn1", "branch.3": "conv2", "branch.4": "bn2",
                "shortcut.0": "downsample.0", "shortcut.1": "downsample.1"}

    def build_unit(self, s: Shape, width: int, stride: int, drop_path: float) -> nn.Module:
        branch = nn.Sequential(
            make_conv(s.c, width, 3, stride), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            make_conv(width, width, 3), nn.BatchNorm2d(width))
        unit = PostActResidual(branch, make_shortcut(s.c, width, stride), drop_path)
        init_conv_(unit)
        zero_init_last_norm(branch)
        return unit
