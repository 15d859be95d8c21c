"""Ops: the elements of stems, stage transitions and heads.

    conv(c=64,k=7,s=2)  bn  gn(g=32)  ln  relu  silu  gelu
    maxpool(k=3,s=2)  avgpool(k=2,s=2)  pad(p=1)  gap  drop(p=0.2)  fc
    conv(c=64,k=7,s=2,kt=5,st=2)   a 3D conv over a clip's frames (temporal kernel kt, stride st)

On a clip, convs with kt = st = 1, pools, pads and gn work on each frame; bn, ln, activations and
dropout on each position; gap pools the frames too; fc needs one pooled vector per clip.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from lab.errors import SpecError
from lab.kinds.base import (
    ANY,
    NLC,
    ZERO,
    Context,
    Cost,
    Flow,
    Op,
    Saved,
    Shape,
    check_clip,
    check_gn,
    conv_cost,
    gn_groups,
    input_saved,
    norm_cost,
    numel,
    out_size,
    param,
    register,
)
from lab.layers import LayerNorm2d, MaxPool2dSame, clip_of, fit_filters, make_act, make_conv, make_conv3d


def _same(s: Shape, st: int) -> tuple[int, int]:
    """Output size under TensorFlow 'SAME' padding: ceil(in / stride)."""
    return -(-s.h // st), -(-s.w // st)


def _spatial(s: Shape, k: int, st: int, p: int, what: str) -> tuple[int, int]:
    h, w = out_size(s.h, k, st, p), out_size(s.w, k, st, p)
    if h < 1 or w < 1:
        raise SpecError(f"{what} collapses the {s.h}x{s.w} map below 1 pixel (k={k}, s={st}, p={p})")
    return h, w


@register
class Conv(Op):
    """Convolution. Output channels: `c`, else `r` x input channels, else the stage width (in a transition)."""

    kind = "conv"
    inplace_after = True
    c: int | None = param(None, lo=1, hi=65536, doc="output channels")
    r: float | None = param(None, lo=0.01, hi=64, doc="output channels as a ratio of the input's")
    k: int = param(3, lo=1, hi=64, doc="kernel size")
    s: int = param(1, lo=1, hi=64, doc="stride")
    p: int | None = param(None, lo=0, hi=64, doc="padding (default: 0 when k == s, else (k-1)//2)")
    g: int = param(1, lo=1, hi=65536, doc="groups")
    bias: bool = param(False, doc="learned bias")
    ws: bool = param(False, doc="weight standardization (BiT)")
    same: bool = param(False, doc="TensorFlow 'SAME' padding: out = ceil(in / s), odd padding bottom/right")
    kt: int = param(1, lo=1, hi=64, doc="temporal kernel size (a 3D conv over a clip's frames when > 1)")
    st: int = param(1, lo=1, hi=64, doc="temporal stride")
    pt: int | None = param(None, lo=0, hi=64, doc="temporal padding (default: 0 when kt == st, else (kt-1)//2)")

    def check(self) -> None:
        if self.c is not None and self.r is not None:
            raise SpecError("give either c (channels) or r (ratio), not both", "r")
        if self.same and self.p is not None:
            raise SpecError("give either p (padding) or same=1, not both", "same")
        if not self.per_frame and (self.same or self.ws):
            raise SpecError(f"{'same=1' if self.same else 'ws=1'} is for 2D convs: drop it or use kt=1, st=1",
                            "same" if self.same else "ws")
        if self.per_frame and self.pt:
            raise SpecError("temporal padding needs a temporal kernel or stride (kt or st > 1)", "pt")

    @property
    def per_frame(self) -> bool:  # type: ignore[override]
        return self.kt == 1 and self.st == 1

    @property
    def tpad(self) -> int:
        if self.pt is not None:
            return self.pt
        return 0 if self.kt == self.st else (self.kt - 1) // 2

    @property
    def pad(self) -> int:
        if self.p is not None:
            return self.p
        return 0 if self.k == self.s else (self.k - 1) // 2

    def out_channels(self, s: Shape, ctx: Context) -> int:
        if self.c is not None:
            return self.c
        if self.r is not None:
            return max(1, int(s.c * self.r))
        if ctx.width is None:
            raise SpecError("conv needs its output channels here: c=N", "c")
        return ctx.width

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        cout = self.out_channels(s, ctx)
        if s.c % self.g or cout % self.g:
            raise SpecError(f"{self.g} groups must divide input channels {s.c} and output channels {cout}", "g")
        if self.ws and (s.c // self.g) * self.k * self.k == 1:
            raise SpecError("weight standardization of a filter with a single weight leaves zero (a dead "
                            "layer): use a larger kernel, fewer groups, or ws=0", "ws")
        h, w = _same(s, self.s) if self.same else _spatial(s, self.k, self.s, self.pad, "conv")
        f = 1
        if not self.per_frame:
            check_clip(s, f"a temporal kernel or stride (kt={self.kt}, st={self.st})", "kt")
            f = out_size(s.f, self.kt, self.st, self.tpad)
            if f < 1:
                raise SpecError(f"conv collapses the {s.f} frames below 1 (kt={self.kt}, st={self.st}, "
                                f"pt={self.tpad})", "kt")
        return Shape(cout, h, w, 0, f), conv_cost(s.c, cout, self.k, h, w, self.g, self.bias, self.kt, f)

    def saved(self, s: Shape, out: Shape, ctx: Context, flow: Flow) -> tuple[Saved, Flow]:
        """Its input (autocast's half-precision copy of it, under mixed precision)."""
        return input_saved(s, flow, cast=True), Flow(False, False)

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        if not self.per_frame:
            return make_conv3d(s.c, self.out_channels(s, ctx), self.k, self.kt, s.f, self.s, self.st, self.g,
                               self.bias, self.pad, self.tpad)
        return make_conv(s.c, self.out_channels(s, ctx), self.k, self.s, self.g, self.ws, self.bias, self.pad,
                         self.same)

    def adapt_weight(self, local: str, value: torch.Tensor, shape: torch.Size, s: Shape,
                     receives_image: bool = False) -> torch.Tensor | None:
        """Pretrained filters for other image channels (the input layer's; RGB on grey: summed), and
        2D filters inflated to this conv's temporal kernel (I3D)."""
        if local != "weight":
            return None
        return fit_filters(value, shape, adapt_channels=receives_image and self.g == 1)

    def widen(self, m: float, channels: Callable[[int], int]) -> Conv:
        if self.c is None:
            return self
        return dataclasses.replace(self, c=channels(self.c))


class _Norm(Op):
    per_frame = False  # on each position (bn: its statistics over the frames too, as a 3D batch norm)
    inplace_after = True

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        return s, norm_cost(s.c)


@register
class BatchNorm(_Norm):
    """Batch normalization."""

    kind = "bn"

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        return nn.BatchNorm2d(s.c)


@register
class GroupNorm(_Norm):
    """Group normalization with gcd(channels, g) groups (g when g divides the channels)."""

    kind = "gn"
    per_frame = True  # each frame's groups normalized over that frame
    g: int = param(32, lo=1, hi=4096, doc="groups (gcd with the channels is used)")

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        try:
            check_gn(s.c, s.h * s.w, self.g)
        except SpecError as e:
            raise SpecError(e.message, "g") from None
        return s, norm_cost(s.c)

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        return nn.GroupNorm(gn_groups(s.c, self.g), s.c)


@register
class LayerNorm(_Norm):
    """Layer normalization over channels (of a map or of tokens)."""

    kind = "ln"
    layout = ANY
    eps: float = param(1e-6, lo=0, hi=1, doc="epsilon")

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        return nn.LayerNorm(s.c, eps=self.eps) if ctx.layout == NLC else LayerNorm2d(s.c, eps=self.eps)


class _Act(Op):
    per_frame = False  # on each position

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        return s, ZERO

    def saved(self, s: Shape, out: Shape, ctx: Context, flow: Flow) -> tuple[Saved, Flow]:
        """SiLU and GELU keep their input (in place, a copy of it: the output overwrites it); the next
        layer keeps the output again."""
        return Saved(0, numel(s)) if flow.wide else Saved(numel(s)), Flow(False, flow.wide)

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        return make_act(self.kind, inplace=ctx.inplace)


@register
class ReLU(_Act):
    """ReLU activation."""

    kind = "relu"

    def saved(self, s: Shape, out: Shape, ctx: Context, flow: Flow) -> tuple[Saved, Flow]:
        """Its output only (the next conv saving it adds nothing)."""
        return Saved(0, numel(out)) if flow.wide else Saved(numel(out)), Flow(True, flow.wide)


@register
class SiLU(_Act):
    """SiLU (swish) activation."""

    kind = "silu"


@register
class GELU(_Act):
    """GELU activation."""

    kind = "gelu"


@register
class MaxPool(Op):
    """Max pooling (padding default (k-1)//2)."""

    kind = "maxpool"
    k: int = param(3, lo=1, hi=64, doc="window")
    s: int = param(2, lo=1, hi=64, doc="stride")
    p: int | None = param(None, lo=0, hi=32, doc="padding (default (k-1)//2)")
    same: bool = param(False, doc="TensorFlow 'SAME' padding: out = ceil(in / s), odd padding bottom/right")

    @property
    def pad(self) -> int:
        return (self.k - 1) // 2 if self.p is None else self.p

    def check(self) -> None:
        if self.pad * 2 > self.k:
            raise SpecError(f"padding {self.pad} exceeds half the window {self.k}", "p")
        if self.same and self.p is not None:
            raise SpecError("give either p (padding) or same=1, not both", "same")

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        h, w = _same(s, self.s) if self.same else _spatial(s, self.k, self.s, self.pad, "maxpool")
        return Shape(s.c, h, w), ZERO

    def saved(self, s: Shape, out: Shape, ctx: Context, flow: Flow) -> tuple[Saved, Flow]:
        """Its input and the int64 index of each output's maximum."""
        return input_saved(s, flow) + Saved(int64=numel(out)), Flow(False, flow.wide)

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        return MaxPool2dSame(self.k, self.s) if self.same else nn.MaxPool2d(self.k, self.s, self.pad)


@register
class AvgPool(Op):
    """Average pooling."""

    kind = "avgpool"
    k: int = param(2, lo=1, hi=64, doc="window")
    s: int = param(2, lo=1, hi=64, doc="stride")
    p: int = param(0, lo=0, hi=32, doc="padding")

    def check(self) -> None:
        if self.p * 2 > self.k:
            raise SpecError(f"padding {self.p} exceeds half the window {self.k}", "p")

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        h, w = _spatial(s, self.k, self.s, self.p, "avgpool")
        return Shape(s.c, h, w), ZERO

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        return nn.AvgPool2d(self.k, self.s, self.p)


@register
class Pad(Op):
    """Zero padding on every side (BiT's stem pads before its unpadded max pool)."""

    kind = "pad"
    p: int = param(1, lo=1, hi=64, doc="pixels")

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        return Shape(s.c, s.h + 2 * self.p, s.w + 2 * self.p), ZERO

    def saved(self, s: Shape, out: Shape, ctx: Context, flow: Flow) -> tuple[Saved, Flow]:
        return Saved(), Flow(False, flow.wide)

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        return nn.ZeroPad2d(self.p)


class ClipAvgPool(nn.Module):
    """Average of a clip's maps over frames, rows and columns: (B*F, C, H, W) -> (B, C, 1, 1)."""

    def __init__(self, frames: int):
        super().__init__()
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return clip_of(x, self.frames).mean((2, 3, 4), keepdim=True)[:, :, 0]


class TokenMean(nn.Module):
    """Average of the grid tokens (prefix tokens left out, as timm's 'avg' pool): (B, 1, C)."""

    def __init__(self, prefix: int):
        super().__init__()
        self.prefix = prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.prefix:].mean(1, keepdim=True)


@register
class GlobalAvgPool(Op):
    """Global average pooling: of a map to 1x1, of tokens to one token (prefix tokens left out);
    a clip's frames are pooled too."""

    kind = "gap"
    layout = ANY
    per_frame = False

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        return Shape(s.c, 1, 1), ZERO

    def saved(self, s: Shape, out: Shape, ctx: Context, flow: Flow) -> tuple[Saved, Flow]:
        """A mean over tokens keeps nothing; adaptive pooling of a map keeps its input."""
        return (Saved() if ctx.layout == NLC else input_saved(s, flow)), Flow(False, flow.wide)

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        if ctx.layout == NLC:
            return TokenMean(s.t)
        return ClipAvgPool(s.f) if s.f > 1 else nn.AdaptiveAvgPool2d(1)


@register
class Dropout(Op):
    """Dropout."""

    kind = "drop"
    per_frame = False
    p: float = param(0.0, lo=0.0, hi=0.99, doc="probability")

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        return s, ZERO

    def saved(self, s: Shape, out: Shape, ctx: Context, flow: Flow) -> tuple[Saved, Flow]:
        """A boolean mask (one byte an element, counted as a quarter of a float32)."""
        return Saved(0, -(-numel(s) // 4)) if self.p > 0 else Saved(), Flow(False, flow.wide)

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        return nn.Dropout(self.p)


class Classifier(nn.Linear):
    """The final linear layer; flattens a pooled 1x1 map (or a single pooled token) first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))


@register
class FullyConnected(Op):
    """The classifier: a linear layer to the number of classes (identity when num_classes=0)."""

    kind = "fc"
    layout = ANY
    classifier = True
    per_frame = False
    bias: bool = param(True, doc="learned bias")

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        if s.h != 1 or s.w != 1 or s.t or s.f != 1:
            where = f"{s.t} + {s.h}x{s.w} tokens" if s.t else f"a {s.h}x{s.w} map"
            where += f" in each of {s.f} frames" if s.f != 1 else ""
            raise SpecError(f"fc needs a pooled input, got {where}: put gap (or token) before it")
        if ctx.num_classes == 0:
            return s, ZERO
        n = ctx.num_classes
        return Shape(n, 1, 1), Cost(s.c * n + (n if self.bias else 0), s.c * n, n)

    def saved(self, s: Shape, out: Shape, ctx: Context, flow: Flow) -> tuple[Saved, Flow]:
        return input_saved(s, flow, cast=True), Flow(False, False)

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        if ctx.num_classes == 0:
            return nn.Flatten(1)
        fc = Classifier(s.c, ctx.num_classes, bias=self.bias)
        nn.init.normal_(fc.weight, std=0.01)
        if fc.bias is not None:
            nn.init.zeros_(fc.bias)
        return fc
