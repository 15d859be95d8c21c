"""ConvNeXt block: 7x7 depthwise conv, LayerNorm, inverted MLP (4x, GELU), layer scale, residual.

    convnext 3x96, 3x192/(ln,conv(k=2,s=2)), ...
The block keeps its width; stages change width through a separate downsampling transition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lab.errors import SpecError
from lab.kinds.base import Block, Cost, Flow, Saved, Shape, conv_cost, input_saved, linear_cost, norm_cost, param, register
from lab.layers import DropPath


class ConvNeXtUnit(nn.Module):
    def __init__(self, dim: int, k: int, mlp: float, ls: float, drop_path: float):
        super().__init__()
        hidden = int(mlp * dim)
        self.dwconv = nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.full((dim,), ls)) if ls > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        for lin in (self.fc1, self.fc2):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        nn.init.trunc_normal_(self.dwconv.weight, std=0.02)
        assert self.dwconv.bias is not None  # a Conv2d has a bias by default
        nn.init.zeros_(self.dwconv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # NHWC: norm and MLP act on the channel axis
        y = self.fc2(F.gelu(self.fc1(self.norm(y))))
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))


@register
class ConvNeXt(Block):
    """Depthwise kxk conv -> LayerNorm -> Linear(mlp x) -> GELU -> Linear -> layer scale, residual."""

    kind = "convnext"
    k: int = param(7, lo=1, hi=31, doc="depthwise kernel (odd)")
    mlp: float = param(4.0, lo=0.25, hi=16, doc="MLP hidden ratio")
    ls: float = param(1e-6, lo=0.0, hi=1.0, doc="layer-scale init (0: none)")

    def check(self) -> None:
        if self.k % 2 == 0:
            raise SpecError(f"kernel must be odd, got {self.k}", "k")

    def unit(self, s: Shape, width: int, stride: int) -> tuple[Shape, Cost]:
        if stride != 1:
            raise SpecError("convnext blocks keep their resolution: downsample with a transition "
                            "such as /(ln,conv(k=2,s=2))")
        if s.c != width:
            raise SpecError(f"convnext blocks keep their width: input has {s.c} channels, stage is {width} "
                            "wide; add a transition such as /(ln,conv(k=2,s=2))")
        n = s.h * s.w
        hidden = int(self.mlp * width)
        cost = (conv_cost(width, width, self.k, s.h, s.w, groups=width, bias=True) + norm_cost(width)
                + linear_cost(width, hidden, n) + linear_cost(hidden, width, n)
                + Cost(width if self.ls > 0 else 0, 0, 0))
        return s, cost

    def saved_unit(self, s: Shape, width: int, stride: int, flow: Flow) -> tuple[Saved, Flow]:
        """Its input (the depthwise conv's); the depthwise output twice (the norm's input, the norm's
        output as fc1's input); the hidden layer twice (GELU's input, fc2's input); fc2's output once
        under layer scale. Layer scale's float32 parameter makes the residual stream float32 under
        autocast."""
        n = s.h * s.w * s.f
        hidden = int(self.mlp * width)
        kept = Saved(2 * width * n + 2 * hidden * n + (width * n if self.ls > 0 else 0))
        return input_saved(s, flow, cast=True) + kept, Flow(False, flow.wide or self.ls > 0)

    def timm_names(self, dialect: str) -> dict[str, str] | None:
        if dialect != "convnext":
            return None
        return {"": "", "dwconv": "conv_dw", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}

    def build_unit(self, s: Shape, width: int, stride: int, drop_path: float) -> nn.Module:
        return ConvNeXtUnit(width, self.k, self.mlp, self.ls, drop_path)
