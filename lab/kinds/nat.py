"""Neighborhood Attention Transformer block (NAT): each token attends to the k x k neighbourhood
around it, clamped inside the map (so border tokens see a full k x k window too), optionally
dilated, with a relative position bias of (2k-1)^2 entries per head.

    nat(k=7,mlp=3) 3x64, 4x128/(conv(k=3,s=2),ln(eps=1e-05)), ...

Maps smaller than k*d along an axis are zero-padded for the attention, as NAT and NATTEN do.
The kernel never forms the N x N score matrix (lab.kernels.neighborhood).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lab.errors import SpecError
from lab.kernels.neighborhood import DENSE_FACTOR, neighborhood_attention
from lab.kinds.base import Cost, Saved, Shape, param, register
from lab.kinds.transformer import ACT_CHOICES, HeadsMixin, TokenBlock, attention_cost


class NeighborhoodAttention(nn.Module):
    no_weight_decay = ("rpb",)

    def __init__(self, dim: int, heads: int, h: int, w: int, kernel: int, dilation: int, qkv_bias: bool):
        super().__init__()
        self.heads, self.h, self.w, self.kernel, self.dilation = heads, h, w, kernel, dilation
        self.hp, self.wp = max(h, kernel * dilation), max(w, kernel * dilation)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.zeros(heads, 2 * kernel - 1, 2 * kernel - 1))
        nn.init.trunc_normal_(self.rpb, std=0.02)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, self.h, self.w, c)
        if (self.hp, self.wp) != (self.h, self.w):
            x = F.pad(x, (0, 0, 0, self.wp - self.w, 0, self.hp - self.h))
        q, k, v = self.qkv(x).view(b, self.hp, self.wp, 3, self.heads, c // self.heads).permute(3, 0, 4, 1, 2, 5)
        out = neighborhood_attention(q, k, v, self.kernel, self.dilation, self.rpb)  # (B, heads, Hp, Wp, hd)
        out = out.permute(0, 2, 3, 1, 4)[:, :self.h, :self.w].reshape(b, self.h * self.w, c)
        return self.proj(out)


@register
class NAT(HeadsMixin, TokenBlock):
    """NAT block: neighbourhood attention (k x k, dilation d), then the MLP."""

    kind = "nat"
    mixer_family = "neighbourhood-attention"
    needs_grid = True
    norm_eps: ClassVar[float] = 1e-5
    k: int = param(7, lo=1, hi=63, doc="neighbourhood size (odd)")
    d: int = param(1, lo=1, hi=64, doc="dilation")
    h: int | None = param(None, lo=1, hi=1024, doc="heads (default: width / hd)")
    hd: int = param(32, lo=1, hi=4096, doc="head width (when h is not given)")
    mlp: float = param(4.0, lo=0.0, hi=16, doc="MLP hidden ratio")
    act: str = param("gelu", choices=ACT_CHOICES, doc="MLP activation")
    ls: float = param(0.0, lo=0.0, hi=1.0, doc="layer-scale init (0: none)")
    qkv_bias: bool = param(True, doc="bias of the qkv projection")

    def check(self) -> None:
        super().check()
        if self.k % 2 == 0:
            raise SpecError(f"neighbourhood size must be odd, got {self.k}", "k")

    def mixer_cost(self, s: Shape, width: int) -> Cost:
        heads = self.heads(width)
        span = self.k * self.d
        padded = max(s.h, span) * max(s.w, span)
        return (attention_cost(width, padded, self.k * self.k, self.qkv_bias, proj_tokens=s.h * s.w)
                + Cost(heads * (2 * self.k - 1) ** 2, 0, 0))

    def mixer_saved(self, s: Shape, width: int) -> Saved:
        """On the padded grid of P tokens: qkv's input; q, k and v and each head's attention weights:
        P x P of them on small maps (the dense kernel, whose matmuls autocast runs in half precision),
        k x k per token otherwise (the portable kernel, which keeps them in float32); the output's copy
        (the projection's input)."""
        span = self.k * self.d
        padded = max(s.h, span) * max(s.w, span)
        around = padded * width + s.h * s.w * width
        if padded <= DENSE_FACTOR * self.k * self.k:
            return Saved(around + 3 * padded * width + self.heads(width) * padded * padded)
        return Saved(around, 3 * padded * width + self.heads(width) * padded * self.k * self.k)

    def timm_names(self, dialect: str) -> dict[str, str] | None:
        return None  # timm has no neighbourhood attention

    def build_mixer(self, s: Shape, width: int, index: int) -> nn.Module:
        return NeighborhoodAttention(width, self.heads(width), s.h, s.w, self.k, self.d, self.qkv_bias)
