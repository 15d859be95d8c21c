"""Bottleneck block (ResNet v1.5, post-activation) and its relatives as parameters.

    bottleneck(e=4)            ResNet-50/101/152: 1x1 reduce to width/4, 3x3 (strided), 1x1 expand
    bottleneck(e=2,g=32)       ResNeXt-50 32x4d: grouped 3x3
    bottleneck(e=2)            Wide ResNet-50-2: twice the bottleneck width
    bottleneck(e=1,gw=64,se=0.25)  RegNetY: group width 64, squeeze-excitation of the input width
    bottleneck(norm=gn,ws=1,same=1)  ResNet-v2 without pre-activation, TF padding (the ViT hybrid backbone)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

from torch import nn

from lab.errors import SpecError
from lab.kinds.base import (
    Block,
    Cost,
    Flow,
    Saved,
    Shape,
    block_norm_cost,
    conv_cost,
    input_saved,
    out_size,
    param,
    register,
    round_channels,
    se_cost,
)
from lab.kinds.residual import PostActResidual, make_shortcut, needs_projection, shortcut_cost, zero_init_last_norm
from lab.layers import SqueezeExcite, init_conv_, make_conv, make_norm


def split_width(width: int, e: float) -> int:
    """Bottleneck channels of a block `width` wide with expansion `e`; must be whole."""
    mid = width / e
    if mid != int(mid) or mid < 1:
        raise SpecError(f"width {width} / e={e:g} is not a whole number of channels", "e")
    return int(mid)


def quantum_for(e: float, per: int) -> int:
    """Smallest width w with w/e whole and divisible by `per` (for width multipliers)."""
    for q in range(1, 1 << 16):
        mid = q / e
        if mid == int(mid) and int(mid) % per == 0:
            return q
    return 1


@register
class Bottleneck(Block):
    """1x1 -> 3x3 (grouped, strided) -> [SE] -> 1x1, norm after each, ReLU, projected shortcut."""

    kind = "bottleneck"
    e: float = param(4.0, lo=0.0625, hi=64, doc="expansion: width / bottleneck channels")
    g: int = param(1, lo=1, hi=4096, doc="groups of the 3x3 conv")
    gw: int = param(0, lo=0, hi=65536, doc="channels per group of the 3x3 conv (overrides g)")
    se: float = param(0.0, lo=0.0, hi=1.0, doc="squeeze-excitation width as a ratio of the block input")
    norm: str = param("bn", choices=("bn", "gn"), doc="normalization")
    ws: bool = param(False, doc="weight-standardized convs")
    same: bool = param(False, doc="TensorFlow 'SAME' padding of the 3x3 conv (ViT-hybrid backbones)")

    def check(self) -> None:
        if self.gw and self.g != 1:
            raise SpecError("give either g (groups) or gw (group width), not both", "gw")

    def groups(self, mid: int) -> int:
        if self.gw:
            if mid % self.gw:
                raise SpecError(f"group width {self.gw} does not divide {mid} bottleneck channels", "gw")
            return mid // self.gw
        if mid % self.g:
            raise SpecError(f"{self.g} groups do not divide {mid} bottleneck channels", "g")
        return self.g

    def se_width(self, cin: int) -> int:
        return max(1, round(cin * self.se)) if self.se else 0

    def width_quantum(self) -> int:
        return quantum_for(self.e, self.gw or self.g)

    def widen(self, m: float, channels: Callable[[int], int]) -> Bottleneck:
        if not self.gw:
            return self
        return dataclasses.replace(self, gw=round_channels(self.gw * m))

    def unit(self, s: Shape, width: int, stride: int) -> tuple[Shape, Cost]:
        mid = split_width(width, self.e)
        groups = self.groups(mid)
        h, w = out_size(s.h, 3, stride, 1), out_size(s.w, 3, stride, 1)
        n = self.norm
        cost = (conv_cost(s.c, mid, 1, s.h, s.w) + block_norm_cost(n, mid, s.h * s.w)
                + conv_cost(mid, mid, 3, h, w, groups) + block_norm_cost(n, mid, h * w)
                + conv_cost(mid, width, 1, h, w) + block_norm_cost(n, width, h * w)
                + shortcut_cost(s.c, width, stride, h, w))
        if self.se:
            cost = cost + se_cost(mid, self.se_width(s.c))
        return Shape(width, h, w), cost

    def saved_unit(self, s: Shape, width: int, stride: int, flow: Flow) -> tuple[Saved, Flow]:
        """Its input; each of the three convs' outputs twice (norm input, ReLU output); squeeze-excite's
        gated map once (the last conv's input); the projection's output once (its norm's input)."""
        mid = split_width(width, self.e)
        h, w = out_size(s.h, 3, stride, 1), out_size(s.w, 3, stride, 1)
        m1, m2, out = mid * s.h * s.w, mid * h * w, width * h * w
        proj = out if needs_projection(s.c, width, stride) else 0
        return (input_saved(s, flow, cast=True) + Saved(2 * (m1 + m2 + out) + (m2 if self.se else 0) + proj),
                Flow(True, False))

    # timm's names of the i-th conv and norm of the branch, and of the shortcut's conv and norm
    TIMM_NAMES: ClassVar[dict[str, tuple[str, str, str, str]]] = {"resnet": ("conv{}", "bn{}", "downsample.0", "downsample.1"),
                  "regnet": ("conv{}.conv", "conv{}.bn", "downsample.conv", "downsample.bn"),
                  "vit_hybrid": ("conv{}", "norm{}", "downsample.conv", "downsample.norm")}

    def timm_names(self, dialect: str) -> dict[str, str] | None:
        if dialect not in self.TIMM_NAMES:
            return None
        conv, norm, short_conv, short_norm = self.TIMM_NAMES[dialect]
        last = 7 if self.se else 6  # the SE module sits between the 3x3's ReLU and the last conv
        rules = {"branch.0": conv.format(1), "branch.1": norm.format(1), "branch.3": conv.format(2),
                 "branch.4": norm.format(2), f"branch.{last}": conv.format(3), f"branch.{last + 1}": norm.format(3),
                 "shortcut.0": short_conv, "shortcut.1": short_norm}
        if self.se:
            rules |= {"branch.6.reduce": "se.fc1", "branch.6.expand": "se.fc2"}
        return rules

    def build_unit(self, s: Shape, width: int, stride: int, drop_path: float) -> nn.Module:
        mid = split_width(width, self.e)
        layers = [make_conv(s.c, mid, 1, ws=self.ws), make_norm(self.norm, mid), nn.ReLU(inplace=True),
                  make_conv(mid, mid, 3, stride, self.groups(mid), ws=self.ws, same=self.same), make_norm(self.norm, mid),
                  nn.ReLU(inplace=True)]
        if self.se:
            layers.append(SqueezeExcite(mid, self.se_width(s.c)))
        layers += [make_conv(mid, width, 1, ws=self.ws), make_norm(self.norm, width)]
        branch = nn.Sequential(*layers)
        unit = PostActResidual(branch, make_shortcut(s.c, width, stride, self.norm, self.ws), drop_path)
        init_conv_(unit)
        zero_init_last_norm(branch)
        return unit
