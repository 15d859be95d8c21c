"""Swin Transformer block: window multi-head self-attention (W-MSA), shifted on every second
block of a stage (SW-MSA), with a relative position bias of (2M-1)^2 entries per head.

    swin(w=7,hd=32) 2x96, 2x192/merge, 6x384/merge, 2x768/merge

As in Swin, a map not larger than the window along an axis shrinks the window to the map and
drops the shift along that axis (the bias table shrinks with it); other maps that are not a
multiple of the window are zero-padded for the attention.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lab.errors import SpecError
from lab.kernels import window as win
from lab.kinds.base import Cost, Shape, param, register
from lab.kinds.transformer import ACT_CHOICES, HeadsMixin, TokenBlock, attention_cost


class WindowAttention(nn.Module):
    """Attention inside (shifted) windows of an h x w token grid, all windows in one batched call."""

    no_weight_decay = ("relative_position_bias_table",)

    def __init__(self, dim: int, heads: int, h: int, w: int, window: tuple[int, int], shift: tuple[int, int],
                 qkv_bias: bool):
        super().__init__()
        self.heads, self.h, self.w = heads, h, w
        self.wh, self.ww = window
        self.sh, self.sw = shift
        self.hp, self.wp = math.ceil(h / self.wh) * self.wh, math.ceil(w / self.ww) * self.ww
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * self.wh - 1) * (2 * self.ww - 1), heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        device = torch.empty(0).device  # the device being built on (meta for the cost tests)
        self.register_buffer("relative_position_index", win.relative_position_index(self.wh, self.ww).to(device),
                             persistent=False)
        mask = win.shift_mask(self.hp, self.wp, self.wh, self.ww, self.sh, self.sw)
        self.register_buffer("mask", None if mask is None else mask.to(device), persistent=False)

    def bias(self, batch: int) -> torch.Tensor:
        """Relative position bias (heads, M, M), plus the shift mask of each window, for all
        batch x windows: (B * nW, heads, M, M). Materialized rather than broadcast: the CPU
        attention kernels run about twice as fast on a contiguous mask."""
        m = self.wh * self.ww
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(m, m, self.heads).permute(2, 0, 1)
        nw = (self.hp // self.wh) * (self.wp // self.ww)
        bias = bias.expand(nw, -1, -1, -1) if self.mask is None else bias.unsqueeze(0) + self.mask.unsqueeze(1)
        return bias.unsqueeze(0).expand(batch, -1, -1, -1, -1).reshape(batch * nw, self.heads, m, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, self.h, self.w, c)
        if (self.hp, self.wp) != (self.h, self.w):
            x = F.pad(x, (0, 0, 0, self.wp - self.w, 0, self.hp - self.h))
        if self.sh or self.sw:
            x = torch.roll(x, shifts=(-self.sh, -self.sw), dims=(1, 2))
        windows = win.partition(x, self.wh, self.ww)  # (B * nW, M, C)
        bw, m = windows.shape[:2]
        q, k, v = self.qkv(windows).view(bw, m, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.bias(b).to(q.dtype)
        if torch.is_grad_enabled() and q.device.type == "cpu":
            # training on the CPU: SDPA falls back to its math path, which is ~10% slower here than
            # the plain matmuls (it scales q and k separately and re-checks the mask)
            out = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + bias).softmax(-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.proj(out.transpose(1, 2).reshape(bw, m, c))
        x = win.reverse(out, self.wh, self.ww, self.hp, self.wp)
        if self.sh or self.sw:
            x = torch.roll(x, shifts=(self.sh, self.sw), dims=(1, 2))
        return x[:, :self.h, :self.w].reshape(b, self.h * self.w, c)


@register
class Swin(HeadsMixin, TokenBlock):
    """Swin block: W-MSA, SW-MSA on odd-numbered units of a stage (when `shift`), then the MLP."""

    kind = "swin"
    norm_eps: ClassVar[float] = 1e-5
    w: int = param(7, lo=1, hi=256, doc="window size")
    shift: bool = param(True, doc="shift the windows by w//2 on every second block")
    h: int | None = param(None, lo=1, hi=1024, doc="heads (default: width / hd)")
    hd: int = param(32, lo=1, hi=4096, doc="head width (when h is not given)")
    mlp: float = param(4.0, lo=0.0, hi=16, doc="MLP hidden ratio")
    act: str = param("gelu", choices=ACT_CHOICES, doc="MLP activation")
    ls: float = param(0.0, lo=0.0, hi=1.0, doc="layer-scale init (0: none)")
    qkv_bias: bool = param(True, doc="bias of the qkv projection")

    def window(self, s: Shape) -> tuple[int, int]:
        return min(s.h, self.w), min(s.w, self.w)

    def shift_of(self, s: Shape, index: int) -> tuple[int, int]:
        if not self.shift or index % 2 == 0:
            return 0, 0
        return (0 if s.h <= self.w else self.w // 2), (0 if s.w <= self.w else self.w // 2)

    def mixer_cost(self, s: Shape, width: int) -> Cost:
        if s.t:
            raise SpecError(f"window attention works on the token grid, but the tokens carry {s.t} prefix "
                            "token(s)")
        heads = self.heads(width)
        wh, ww = self.window(s)
        padded = math.ceil(s.h / wh) * wh * math.ceil(s.w / ww) * ww
        table = (2 * wh - 1) * (2 * ww - 1) * heads
        return attention_cost(width, padded, wh * ww, self.qkv_bias) + Cost(table, 0, 0)

    def build_mixer(self, s: Shape, width: int, index: int) -> nn.Module:
        return WindowAttention(width, self.heads(width), s.h, s.w, self.window(s), self.shift_of(s, index),
                               self.qkv_bias)
