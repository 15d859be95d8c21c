"""Pre-norm token-mixing blocks: a token mixer and a channel MLP, each in a residual branch.

    x = x + drop_path(ls1 * mixer(norm1(x)))
    x = x + drop_path(ls2 * mlp(norm2(x)))

The token mixer is what distinguishes the kinds: global multi-head self-attention (``mhsa``,
ViT/DeiT), a token-mixing MLP (``mixer``, MLP-Mixer), shifted-window attention (``swin``) and
neighbourhood attention (``nat``). All work on tokens (B, prefix + H*W, C) and keep their width:
stages change width or resolution through transitions (``/merge``, ``/(conv(k=3,s=2),ln)``).
On a clip, global attention and the token-mixing MLP span the tokens of all frames (joint
space-time), shifted windows are 3D (``swin(wt=8)``), neighbourhood attention works on each frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Self

import torch
import torch.nn.functional as F
from torch import nn

from lab.errors import SpecError
from lab.kinds.base import (
    NLC,
    Block,
    Cost,
    Flow,
    Saved,
    Shape,
    input_saved,
    linear_cost,
    norm_cost,
    numel,
    param,
    register,
    round_channels,
)
from lab.layers import ACTS, DropPath

ACT_CHOICES = tuple(ACTS)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACTS[act]()
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class PreNormBlock(nn.Module):
    def __init__(self, dim: int, mixer: nn.Module, mlp: nn.Module, eps: float, ls: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.mixer = mixer
        self.ls1 = LayerScale(dim, ls) if ls > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = mlp
        self.ls2 = LayerScale(dim, ls) if ls > 0 else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.mixer(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def init_linears_(m: nn.Module) -> None:
    """Transformer init (timm's default): truncated normal(0.02) weights, zero biases."""
    for mod in m.modules():
        if isinstance(mod, nn.Linear):
            nn.init.trunc_normal_(mod.weight, std=0.02)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)


class TokenBlock(Block):
    """Base of the pre-norm token blocks. Subclasses give the mixer's cost and module; `mlp`,
    `act` and `ls` fields are expected on every subclass."""

    layout = NLC
    token_mixer = True
    mixer_family = "other"   # each kind names its own family
    norm_eps: ClassVar[float] = 1e-6  # the reference implementations' LayerNorm epsilon
    mlp: float
    act: str
    ls: float

    def mixer_cost(self, s: Shape, width: int) -> Cost:
        raise NotImplementedError

    def build_mixer(self, s: Shape, width: int, index: int) -> nn.Module:
        """The token mixer of the `index`-th unit of its stage."""
        raise NotImplementedError

    def hidden(self, width: int) -> int:
        return int(self.mlp * width)

    def unit(self, s: Shape, width: int, stride: int) -> tuple[Shape, Cost]:
        if stride != 1:
            raise SpecError(f"{self.kind} blocks keep their resolution: downsample with a transition "
                            "such as /merge or /(conv(k=3,s=2),ln)")
        if s.c != width:
            raise SpecError(f"{self.kind} blocks keep their width: {s.c} channels arrive, the stage is {width} "
                            "wide; enter through a transition such as /merge, /patch(p=1) or /conv(k=1)")
        n = s.tokens
        hidden = self.hidden(width)
        if hidden < 1:
            raise SpecError(f"MLP ratio {self.mlp:g} leaves no hidden unit at width {width}", "mlp")
        cost = (norm_cost(width) + self.mixer_cost(s, width) + norm_cost(width)
                + linear_cost(width, hidden, n) + linear_cost(hidden, width, n))
        if self.ls > 0:
            cost = cost + Cost(2 * width, 0, 0)
        return s, cost

    def mixer_saved(self, s: Shape, width: int) -> Saved:
        """What the token mixer keeps for backward per image, its input (the first norm's output) included.
        The default, for a mixer that does not count its own: its input and twice its activations."""
        return Saved(numel(s) + 2 * self.mixer_cost(s, width).acts)

    def saved_unit(self, s: Shape, width: int, stride: int, flow: Flow) -> tuple[Saved, Flow]:
        """The residual stream twice (each norm's input, float32 when the stream is), the mixer's own
        (`mixer_saved`), the second norm's output (fc1's input), the hidden layer twice (the
        activation's input, fc2's input), and under layer scale the two branches' outputs. Layer
        scale's float32 parameter makes the stream float32 under autocast."""
        n, hidden = numel(s), self.hidden(width) * s.tokens
        wide = flow.wide or self.ls > 0
        second = Saved(0, n) if wide else Saved(n)
        kept = (input_saved(s, flow) + self.mixer_saved(s, width) + second + Saved(n + 2 * hidden)
                + Saved(2 * n if self.ls > 0 else 0))
        return kept, Flow(False, wide)

    def timm_names(self, dialect: str) -> dict[str, str] | None:
        return {"": "", "mixer": "attn"}  # timm's ViT and Swin blocks: norm1, attn, ls1, norm2, mlp, ls2

    def build_unit(self, s: Shape, width: int, stride: int, drop_path: float, index: int = 0) -> nn.Module:
        block = PreNormBlock(width, self.build_mixer(s, width, index), Mlp(width, self.hidden(width), self.act),
                             self.norm_eps, self.ls, drop_path)
        init_linears_(block)
        return block

    def build_stage(self, s: Shape, width: int, depth: int, stride: int, drop_paths: list[float]) -> list[nn.Module]:
        return [self.build_unit(s, width, stride, drop_paths[i], index=i) for i in range(depth)]


class HeadsMixin:
    """Attention heads given as a count (`h`) or as a head width (`hd`, the default)."""

    h: int | None
    hd: int
    if TYPE_CHECKING:  # mixed into registered kinds, which are dataclasses
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def check(self) -> None:
        default_hd = type(self).__dataclass_fields__["hd"].default
        if self.h is not None and self.hd != default_hd:
            raise SpecError("give either h (heads) or hd (head width), not both", "hd")

    def heads(self, width: int) -> int:
        if self.h is not None:
            if width % self.h:
                raise SpecError(f"{self.h} heads do not divide the width {width}", "h")
            return self.h
        if width % self.hd:
            raise SpecError(f"head width {self.hd} does not divide the width {width}", "hd")
        return width // self.hd

    def width_quantum(self) -> int:
        return self.h if self.h is not None else self.hd

    def widen(self, m: float, channels: Callable[[int], int]) -> Self:
        """Under a width multiplier the number of heads stays: the head width scales with the
        width (to a multiple of 8, which stage widths then round to)."""
        if self.h is not None:
            return self
        return dataclasses.replace(self, hd=round_channels(self.hd * m))


def attention_cost(width: int, tokens: int, keys: int, qkv_bias: bool, proj_tokens: int | None = None) -> Cost:
    """qkv projection over `tokens`, q.k and attention.v with `keys` keys per query (the
    attention matmuls count as MACs, as the lecture's tables do), output projection."""
    proj_tokens = tokens if proj_tokens is None else proj_tokens
    return (linear_cost(width, 3 * width, tokens, bias=qkv_bias) + Cost(0, 2 * tokens * keys * width, 0)
            + linear_cost(width, width, proj_tokens))


class GlobalAttention(nn.Module):
    """Multi-head self-attention over all tokens, through scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


@register
class MHSA(HeadsMixin, TokenBlock):
    """Global multi-head self-attention block (ViT, DeiT): every token attends to every token."""

    kind = "mhsa"
    mixer_family = "global-attention"
    per_frame = False
    h: int | None = param(None, lo=1, hi=1024, doc="heads (default: width / hd)")
    hd: int = param(64, lo=1, hi=4096, doc="head width (when h is not given)")
    mlp: float = param(4.0, lo=0.0, hi=16, doc="MLP hidden ratio")
    act: str = param("gelu", choices=ACT_CHOICES, doc="MLP activation")
    ls: float = param(0.0, lo=0.0, hi=1.0, doc="layer-scale init (0: none)")
    qkv_bias: bool = param(True, doc="bias of the qkv projection")

    def mixer_cost(self, s: Shape, width: int) -> Cost:
        self.heads(width)
        n = s.tokens
        return attention_cost(width, n, n, self.qkv_bias)

    def mixer_saved(self, s: Shape, width: int) -> Saved:
        """The qkv projection's input and output (q, k, v, which the attention kernel keeps), the
        attention output (laid out by the fused kernels in (tokens, heads) order, so the projection's
        input is a view of it), and the kernel's float32 log-sum-exp per head and token (no attention
        matrix: fused kernels keep none)."""
        n = numel(s)
        return Saved(5 * n, self.heads(width) * s.tokens)

    def build_mixer(self, s: Shape, width: int, index: int) -> nn.Module:
        return GlobalAttention(width, self.heads(width), self.qkv_bias)


class TokenMlp(nn.Module):
    """MLP-Mixer's token mixing: an MLP across the token axis, shared by all channels."""

    def __init__(self, tokens: int, hidden: int, act: str):
        super().__init__()
        self.mlp = Mlp(tokens, hidden, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.transpose(1, 2)).transpose(1, 2)


@register
class Mixer(TokenBlock):
    """MLP-Mixer block: a token-mixing MLP (hidden `tok` x width) then a channel MLP."""

    kind = "mixer"
    mixer_family = "mlp"
    per_frame = False
    tok: float = param(0.5, lo=0.0, hi=16, doc="token-MLP hidden width as a ratio of the channels")
    mlp: float = param(4.0, lo=0.0, hi=16, doc="channel-MLP hidden ratio")
    act: str = param("gelu", choices=ACT_CHOICES, doc="MLP activation")
    ls: float = param(0.0, lo=0.0, hi=1.0, doc="layer-scale init (0: none)")

    def token_hidden(self, width: int) -> int:
        hidden = int(self.tok * width)
        if hidden < 1:
            raise SpecError(f"token-MLP ratio {self.tok:g} leaves no hidden unit at width {width}", "tok")
        return hidden

    def mixer_cost(self, s: Shape, width: int) -> Cost:
        n, hidden = s.tokens, self.token_hidden(width)
        return linear_cost(n, hidden, width) + linear_cost(hidden, n, width)

    def timm_names(self, dialect: str) -> dict[str, str] | None:
        return {"": "", "mixer.mlp": "mlp_tokens", "mlp": "mlp_channels"} if dialect == "mixer" else None

    def mixer_saved(self, s: Shape, width: int) -> Saved:
        """The token MLP's input, and its hidden layer twice (the activation's input, fc2's input)."""
        return Saved(numel(s) + 2 * self.token_hidden(width) * width)

    def build_mixer(self, s: Shape, width: int, index: int) -> nn.Module:
        return TokenMlp(s.tokens, self.token_hidden(width), self.act)
