"""The residual rule shared by the ResNet-family blocks: identity, or a projected shortcut."""

from __future__ import annotations

import torch
from torch import nn

from lab.kinds.base import ZERO, Cost, conv_cost, norm_cost
from lab.layers import DropPath, make_conv, make_norm


def needs_projection(cin: int, cout: int, stride: int) -> bool:
    return stride != 1 or cin != cout


def shortcut_cost(cin: int, cout: int, stride: int, h_out: int, w_out: int, norm: bool = True) -> Cost:
    """A 1x1 strided projection (plus its norm) when shape changes; free otherwise."""
    if not needs_projection(cin, cout, stride):
        return ZERO
    c = conv_cost(cin, cout, 1, h_out, w_out)
    return c + norm_cost(cout) if norm else c


def make_shortcut(cin: int, cout: int, stride: int, norm: str | None = "bn", ws: bool = False) -> nn.Module | None:
    if not needs_projection(cin, cout, stride):
        return None
    conv = make_conv(cin, cout, 1, stride, ws=ws)
    return nn.Sequential(conv, make_norm(norm, cout)) if norm else conv


class PostActResidual(nn.Module):
    """out = act(branch(x) + shortcut(x)), the v1 residual rule (post-activation)."""

    def __init__(self, branch: nn.Module, shortcut: nn.Module | None, drop_path: float):
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        y = self.drop_path(self.branch(x))
        y += skip  # in place: the branch's last norm does not need its output for backward
        return self.act(y)


def zero_init_last_norm(branch: nn.Sequential) -> None:
    """Start each residual branch as the identity (the last norm's scale at zero)."""
    for m in reversed(list(branch.modules())):
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.zeros_(m.weight)
            return
