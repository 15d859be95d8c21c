"""MBConv (EfficientNet): inverted residual with depthwise conv, squeeze-excitation and SiLU.

    mbconv(e=6,k=5)   1x1 expand to 6x input, BN, SiLU, 5x5 depthwise (strided), BN, SiLU, SE, 1x1 project, BN
    mbconv(e=1,k=3)   no expansion conv: depthwise, BN, SiLU, SE, 1x1 project, BN
The residual is used when the stride is 1 and the width is unchanged. SE reduces to `se` x the
block's input channels.
"""

from __future__ import annotations

import torch
from torch import nn

from lab.errors import SpecError
from lab.kinds.base import (
    Block,
    Cost,
    Flow,
    Saved,
    Shape,
    conv_cost,
    input_saved,
    norm_cost,
    out_size,
    param,
    register,
    se_cost,
)
from lab.layers import DropPath, SqueezeExcite, init_conv_, make_conv


class MBConvUnit(nn.Module):
    def __init__(self, cin: int, cout: int, mid: int, k: int, stride: int, rd: int, drop_path: float):
        super().__init__()
        layers: list[nn.Module] = []
        if mid != cin:
            layers += [make_conv(cin, mid, 1), nn.BatchNorm2d(mid), nn.SiLU(inplace=True)]
        layers += [make_conv(mid, mid, k, stride, groups=mid), nn.BatchNorm2d(mid), nn.SiLU(inplace=True)]
        if rd:
            layers.append(SqueezeExcite(mid, rd, act=nn.SiLU))
        layers += [make_conv(mid, cout, 1), nn.BatchNorm2d(cout)]
        self.branch = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch(x)
        if not self.residual:
            return y
        y = self.drop_path(y)
        y += x  # in place: the last norm does not need its output for backward
        return y


@register
class MBConv(Block):
    """Mobile inverted bottleneck with depthwise kxk conv and squeeze-excitation."""

    kind = "mbconv"
    e: float = param(6.0, lo=1.0, hi=16, doc="expansion ratio of the input channels")
    k: int = param(3, lo=1, hi=15, doc="depthwise kernel (odd)")
    se: float = param(0.25, lo=0.0, hi=1.0, doc="squeeze-excitation width as a ratio of the block input")

    def check(self) -> None:
        if self.k % 2 == 0:
            raise SpecError(f"kernel must be odd, got {self.k}", "k")

    def mid(self, cin: int) -> int:
        mid = cin * self.e
        if mid != int(mid):
            raise SpecError(f"{cin} input channels x e={self.e:g} is not a whole number", "e")
        return int(mid)

    def se_width(self, cin: int, mid: int) -> int:
        # timm rounds the SE width from the expanded channels: round(mid * se / e)
        return max(1, round(mid * (self.se / self.e))) if self.se else 0

    def unit(self, s: Shape, width: int, stride: int) -> tuple[Shape, Cost]:
        mid = self.mid(s.c)
        h, w = out_size(s.h, self.k, stride, self.k // 2), out_size(s.w, self.k, stride, self.k // 2)
        cost = Cost()
        if mid != s.c:
            cost = conv_cost(s.c, mid, 1, s.h, s.w) + norm_cost(mid)
        cost = cost + conv_cost(mid, mid, self.k, h, w, groups=mid) + norm_cost(mid)
        if self.se:
            cost = cost + se_cost(mid, self.se_width(s.c, mid))
        cost = cost + conv_cost(mid, width, 1, h, w) + norm_cost(width)
        return Shape(width, h, w), cost

    def saved_unit(self, s: Shape, width: int, stride: int, flow: Flow) -> tuple[Saved, Flow]:
        """Its input; the expansion's and the depthwise conv's outputs three times each (the norm's
        input, the in-place SiLU's copy of its input, the SiLU's output for the next conv or the
        gate), plus the gated map (the projection's input); the projection's output once (its norm's)."""
        mid = self.mid(s.c)
        h, w = out_size(s.h, self.k, stride, self.k // 2), out_size(s.w, self.k, stride, self.k // 2)
        expand = 3 * mid * s.h * s.w if mid != s.c else 0
        depthwise = (4 if self.se else 3) * mid * h * w
        return input_saved(s, flow, cast=True) + Saved(expand + depthwise + width * h * w), Flow(False, False)

    def timm_names(self, dialect: str) -> dict[str, str] | None:
        if dialect != "efficientnet":
            return None
        se = {"reduce": "conv_reduce", "expand": "conv_expand"}
        if self.e == 1:  # no expansion: timm's DepthwiseSeparableConv
            names = ["conv_dw", "bn1", None] + (["se"] if self.se else []) + ["conv_pw", "bn2"]
        else:  # timm's InvertedResidual
            names = ["conv_pw", "bn1", None, "conv_dw", "bn2", None] + (["se"] if self.se else []) + ["conv_pwl", "bn3"]
        rules = {f"branch.{i}": name for i, name in enumerate(names) if name}
        if self.se:
            i = names.index("se")
            rules |= {f"branch.{i}.{ours}": f"se.{theirs}" for ours, theirs in se.items()}
        return rules

    def build_unit(self, s: Shape, width: int, stride: int, drop_path: float) -> nn.Module:
        mid = self.mid(s.c)
        unit = MBConvUnit(s.c, width, mid, self.k, stride, self.se_width(s.c, mid), drop_path)
        init_conv_(unit)
        return unit
