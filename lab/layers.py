"""Small torch primitives shared by the block kinds (timm supplies DropPath)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

__all__ = ["DropPath", "StdConv2d", "LayerNorm2d", "SqueezeExcite", "make_conv", "make_norm", "make_act"]


class StdConv2d(nn.Conv2d):
    """Conv2d with Weight Standardization (BiT): each filter is normalized to zero mean, unit variance."""

    def __init__(self, *args, eps: float = 1e-8, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight  # standardized per filter (biased variance, as timm's batch_norm trick)
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, correction=0)
        w = (w - mean) * torch.rsqrt(var + self.eps)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (ConvNeXt stem and downsamplers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global pool, reduce to `rd`, activation, expand, sigmoid gate."""

    def __init__(self, channels: int, rd: int, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.reduce = nn.Conv2d(channels, rd, 1)
        self.act = act(inplace=True)
        self.expand = nn.Conv2d(rd, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.expand(self.act(self.reduce(s))).sigmoid()


def make_conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, ws: bool = False,
              bias: bool = False, padding: int | None = None) -> nn.Conv2d:
    p = (k - 1) // 2 if padding is None else padding
    cls = StdConv2d if ws else nn.Conv2d
    return cls(cin, cout, k, stride=stride, padding=p, groups=groups, bias=bias)


def make_norm(kind: str, c: int, groups: int = 32) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(c)
    if kind == "gn":
        return nn.GroupNorm(math.gcd(c, groups), c)
    if kind == "ln":
        return LayerNorm2d(c, eps=1e-6)
    raise ValueError(kind)


ACTS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


def make_act(kind: str, inplace: bool = True) -> nn.Module:
    cls = ACTS[kind]
    return cls() if cls is nn.GELU else cls(inplace=inplace)


def init_conv_(m: nn.Module) -> None:
    """He (fan-out) init for convs, unit/zero for norms, small normal for linears (torchvision's rule)."""
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if mod.weight is not None:
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)
