"""Pre-activation bottleneck (ResNet-v2) with GroupNorm + Weight Standardization, as in Big Transfer.

    preact(e=4)   norm, ReLU -> 1x1 -> norm, ReLU -> 3x3 (strided) -> norm, ReLU -> 1x1, plus shortcut
The projection shortcut is taken from the pre-activated input and has no norm of its own.
A network of these blocks needs a final norm and ReLU in its head (``gn,relu,gap,fc``).
"""

from __future__ import annotations

import torch
from torch import nn

from lab.kinds.base import (
    Block,
    Cost,
    Flow,
    Saved,
    Shape,
    block_norm_cost,
    conv_cost,
    input_saved,
    numel,
    out_size,
    param,
    register,
)
from lab.kinds.bottleneck import quantum_for, split_width
from lab.kinds.residual import make_shortcut, shortcut_cost
from lab.layers import DropPath, init_conv_, make_conv, make_norm


class PreActUnit(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int, norm: str, ws: bool, drop_path: float):
        super().__init__()
        self.norm1 = make_norm(norm, cin)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = make_shortcut(cin, cout, stride, norm=None, ws=ws)
        self.branch = nn.Sequential(
            make_conv(cin, mid, 1, ws=ws), make_norm(norm, mid), nn.ReLU(inplace=True),
            make_conv(mid, mid, 3, stride, ws=ws), make_norm(norm, mid), nn.ReLU(inplace=True),
            make_conv(mid, cout, 1, ws=ws))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act(self.norm1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        y = self.drop_path(self.branch(pre))
        y += skip  # in place: a conv does not need its output for backward
        return y


@register
class PreAct(Block):
    """BiT / ResNet-v2 block: pre-activation bottleneck, GroupNorm and weight-standardized convs."""

    kind = "preact"
    e: float = param(4.0, lo=0.0625, hi=64, doc="expansion: width / bottleneck channels")
    norm: str = param("gn", choices=("bn", "gn"), doc="normalization")
    ws: bool = param(True, doc="weight-standardized convs")

    def width_quantum(self) -> int:
        return quantum_for(self.e, 1)

    def unit(self, s: Shape, width: int, stride: int) -> tuple[Shape, Cost]:
        mid = split_width(width, self.e)
        h, w = out_size(s.h, 3, stride, 1), out_size(s.w, 3, stride, 1)
        n = self.norm
        cost = (block_norm_cost(n, s.c, s.h * s.w) + conv_cost(s.c, mid, 1, s.h, s.w)
                + block_norm_cost(n, mid, s.h * s.w) + conv_cost(mid, mid, 3, h, w)
                + block_norm_cost(n, mid, h * w) + conv_cost(mid, width, 1, h, w)
                + shortcut_cost(s.c, width, stride, h, w, norm=False))
        return Shape(width, h, w), cost

    def saved_unit(self, s: Shape, width: int, stride: int, flow: Flow) -> tuple[Saved, Flow]:
        """Its input (the first norm's) and the pre-activation (ReLU output, the convs' input); the
        two inner convs' outputs twice (norm input, ReLU output); the last conv's output nothing."""
        mid = split_width(width, self.e)
        h, w = out_size(s.h, 3, stride, 1), out_size(s.w, 3, stride, 1)
        stream = Saved(0, numel(s)) if flow.wide else Saved(numel(s))
        return input_saved(s, flow) + stream + Saved(2 * mid * (s.h * s.w + h * w)), Flow(False, False)

    def timm_names(self, dialect: str) -> dict[str, str] | None:
        if dialect != "resnetv2":
            return None
        return {"norm1": "norm1", "shortcut": "downsample.conv", "branch.0": "conv1", "branch.1": "norm2",
                "branch.3": "conv2", "branch.4": "norm3", "branch.6": "conv3"}

    def build_unit(self, s: Shape, width: int, stride: int, drop_path: float) -> nn.Module:
        unit = PreActUnit(s.c, split_width(width, self.e), width, stride, self.norm, self.ws, drop_path)
        init_conv_(unit)
        return unit
