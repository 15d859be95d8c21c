"""Swin Transformer block: window multi-head self-attention (W-MSA), shifted on every second
block of a stage (SW-MSA), with a relative position bias of (2M-1)^2 entries per head.

    swin(w=7,hd=32) 2x96, 2x192/merge, 6x384/merge, 2x768/merge
    swin(w=7,wt=8)  on a clip: P x M x M = 8 x 7 x 7 windows, shifted by (4, 3, 3), and a
                    (2P-1)(2M-1)^2-entry bias per head (Video Swin)

As in Swin and Video Swin, a grid not larger than the window along an axis shrinks the window to
the grid and drops the shift along that axis (the bias table shrinks with it); other grids that
are not a multiple of the window are zero-padded for the attention. An image is a clip of one
frame: its windows are 1 x M x M.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lab.kernels import window as win
from lab.kinds.base import Cost, Saved, Shape, param, register
from lab.kinds.transformer import ACT_CHOICES, HeadsMixin, TokenBlock, attention_cost


class WindowAttention(nn.Module):
    """Attention inside (shifted) windows of an f x h x w token grid (f = 1 for images), all
    windows in one batched call."""

    no_weight_decay = ("relative_position_bias_table",)
    relative_position_index: torch.Tensor  # buffers
    mask: torch.Tensor | None

    def __init__(self, dim: int, heads: int, grid: tuple[int, int, int], window: tuple[int, int, int],
                 shift: tuple[int, int, int], qkv_bias: bool):
        super().__init__()
        self.heads, self.grid, self.window, self.shift = heads, grid, window, shift
        self.padded = tuple(math.ceil(n / m) * m for n, m in zip(grid, window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(math.prod(2 * m - 1 for m in window), heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        device = torch.empty(0).device  # the device being built on (meta for the cost tests)
        self.register_buffer("relative_position_index", win.relative_position_index(window).to(device),
                             persistent=False)
        mask = win.shift_mask(self.padded, window, shift)
        self.register_buffer("mask", None if mask is None else mask.to(device), persistent=False)

    def bias(self, batch: int) -> torch.Tensor:
        """Relative position bias (heads, M, M), plus the shift mask of each window, for all
        batch x windows: (B * nW, heads, M, M). Materialized rather than broadcast: the CPU
        attention kernels run about twice as fast on a contiguous mask."""
        m = math.prod(self.window)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(m, m, self.heads).permute(2, 0, 1)
        nw = math.prod(n // m for n, m in zip(self.padded, self.window))
        bias = bias.expand(nw, -1, -1, -1) if self.mask is None else bias.unsqueeze(0) + self.mask.unsqueeze(1)
        return bias.unsqueeze(0).expand(batch, -1, -1, -1, -1).reshape(batch * nw, self.heads, m, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, *self.grid, c)
        if self.padded != self.grid:
            (f, h, w), (fp, hp, wp) = self.grid, self.padded
            x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h, 0, fp - f))
        if any(self.shift):
            x = torch.roll(x, shifts=tuple(-s for s in self.shift), dims=(1, 2, 3))
        windows = win.partition(x, self.window)  # (B * nW, M, C)
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
        x = win.reverse(out, self.window, self.padded)
        if any(self.shift):
            x = torch.roll(x, shifts=self.shift, dims=(1, 2, 3))
        f, h, w = self.grid
        return x[:, :f, :h, :w].reshape(b, f * h * w, c)


@register
class Swin(HeadsMixin, TokenBlock):
    """Swin block: W-MSA, SW-MSA on odd-numbered units of a stage (when `shift`), then the MLP."""

    kind = "swin"
    norm_eps: ClassVar[float] = 1e-5
    per_frame = False  # windows span wt frames (wt = 1: each frame's own windows)
    mixer_family = "window-attention"
    needs_grid = True
    w: int = param(7, lo=1, hi=256, doc="window size")
    shift: bool = param(True, doc="shift the windows by w//2 on every second block")
    h: int | None = param(None, lo=1, hi=1024, doc="heads (default: width / hd)")
    hd: int = param(32, lo=1, hi=4096, doc="head width (when h is not given)")
    mlp: float = param(4.0, lo=0.0, hi=16, doc="MLP hidden ratio")
    act: str = param("gelu", choices=ACT_CHOICES, doc="MLP activation")
    ls: float = param(0.0, lo=0.0, hi=1.0, doc="layer-scale init (0: none)")
    qkv_bias: bool = param(True, doc="bias of the qkv projection")
    wt: int = param(1, lo=1, hi=256, doc="window length in frames, on a clip (Video Swin: 8)")

    def _sizes(self, s: Shape) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        return (s.f, s.h, s.w), (self.wt, self.w, self.w)

    def window(self, s: Shape) -> tuple[int, int, int]:
        """(frames, rows, columns) of a window: clamped to the grid."""
        return tuple(min(n, m) for n, m in zip(*self._sizes(s)))  # type: ignore[return-value]

    def shift_of(self, s: Shape, index: int) -> tuple[int, int, int]:
        """The shift of the `index`-th block of a stage: half a window on odd blocks, along the
        axes where the grid is larger than the window."""
        if not self.shift or index % 2 == 0:
            return 0, 0, 0
        return tuple(0 if n <= m else m // 2 for n, m in zip(*self._sizes(s)))  # type: ignore[return-value]

    def mixer_cost(self, s: Shape, width: int) -> Cost:
        heads = self.heads(width)
        window = self.window(s)
        padded = math.prod(math.ceil(n / m) * m for n, m in zip((s.f, s.h, s.w), window))
        table = math.prod(2 * m - 1 for m in window) * heads
        return attention_cost(width, padded, math.prod(window), self.qkv_bias) + Cost(table, 0, 0)

    def mixer_saved(self, s: Shape, width: int) -> Saved:
        """Over the padded grid of P tokens in windows of M: the windows (qkv's input), q, k and v,
        the scaled queries, the attention output's copy (the projection's input), and the M x M
        attention of each head and token (the softmax's output in the CPU path, the bias that the fused
        kernel keeps for its gradient on a GPU)."""
        window = self.window(s)
        padded = math.prod(math.ceil(n / m) * m for n, m in zip((s.f, s.h, s.w), window))
        return Saved(6 * padded * width + self.heads(width) * padded * math.prod(window))

    def adapt_weight(self, local: str, value: torch.Tensor, shape: torch.Size, s: Shape,
                     receives_image: bool = False) -> torch.Tensor | None:
        """An image Swin's (2M-1)^2 bias table repeated over the 2P-1 frame offsets of 3D windows, as
        Video Swin starts from ImageNet weights (the frame offset is the table's slowest axis)."""
        window = self.window(s)
        plane = (2 * window[1] - 1) * (2 * window[2] - 1)
        if local != "mixer.relative_position_bias_table" or value.shape != (plane, shape[1]):
            return None
        return value.repeat(2 * window[0] - 1, 1) if shape[0] == (2 * window[0] - 1) * plane else None

    def build_mixer(self, s: Shape, width: int, index: int) -> nn.Module:
        return WindowAttention(width, self.heads(width), (s.f, s.h, s.w), self.window(s), self.shift_of(s, index),
                               self.qkv_bias)
