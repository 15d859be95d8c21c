"""Small torch primitives shared by the block kinds."""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Conv2dSame",
    "DropPath",
    "FramesConv3d",
    "LayerNorm2d",
    "MaxPool2dSame",
    "SqueezeExcite",
    "StdConv2d",
    "adapt_input_channels",
    "clip_of",
    "fit_filters",
    "fold_frames",
    "make_act",
    "make_conv",
    "make_conv3d",
    "make_norm",
    "resample_grid",
]


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random `p` of the samples and
    scale the rest by 1/(1-p). The `frames` consecutive batch entries of one clip (frames folded
    into the batch) are kept or dropped together."""

    def __init__(self, p: float = 0.0, frames: int = 1):
        super().__init__()
        self.p, self.frames = p, frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1 - self.p
        mask = x.new_empty((x.shape[0] // self.frames,) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        if self.frames > 1:
            mask = mask.repeat_interleave(self.frames, 0)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}" + (f", frames={self.frames}" if self.frames > 1 else "")


def pad_same(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's 'SAME' padding of a k x k window at stride s: out = ceil(in / s), with the odd
    pixel of padding on the bottom/right (the original ViT-hybrid and EfficientNet weights)."""
    ih, iw = x.shape[-2:]
    ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
    pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)
    return x


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (see pad_same)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_same(x, self.kernel_size[0], self.stride[0]))


class StdConv2d(nn.Conv2d):
    """Conv2d with Weight Standardization (BiT): each filter is normalized to zero mean, unit
    variance. `same`: TensorFlow 'SAME' padding instead of the module's own."""

    def __init__(self, *args, eps: float = 1e-8, same: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps
        self.same = same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # each filter standardized (biased variance) by batch_norm over the filters as channels: the
        # same arithmetic as timm's, so that pretrained BiT weights give timm's logits to the last
        # bits through 150 layers (a var_mean formulation drifts by ~1e-4 there)
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0,
                         eps=self.eps).reshape_as(self.weight)
        if self.same:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class MaxPool2dSame(nn.MaxPool2d):
    """MaxPool2d with TensorFlow 'SAME' padding (padded with -inf: padding never wins the max)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # built with int kernel and stride (the maxpool op)
        k, s = cast(int, self.kernel_size), cast(int, self.stride)
        return super().forward(pad_same(x, k, s, value=float("-inf")))


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


def adapt_input_channels(weight: torch.Tensor, cin: int) -> torch.Tensor:
    """A first layer's (out, c, k, k) filters for `cin` input channels, as timm adapts pretrained RGB
    filters: summed for one channel, else repeated cyclically and rescaled by c / cin."""
    c = weight.shape[1]
    if cin == 1:
        return weight.sum(1, keepdim=True)
    reps = [1] * weight.dim()
    reps[1] = math.ceil(cin / c)
    return weight.repeat(*reps)[:, :cin] * (c / cin)


def fit_filters(weight: torch.Tensor, shape: torch.Size, adapt_channels: bool) -> torch.Tensor | None:
    """Pretrained conv filters made to fit `shape`, or None: input channels adapted (for the layer
    that receives the image, `adapt_channels`), and 2D filters (out, in, k, k) inflated to 3D
    (out, in, kt, k, k) as I3D inflates them: repeated over time and divided by kt, so that a clip
    of identical frames gives the 2D layer's output (away from zero-padded frame borders)."""
    if weight.dim() not in (4, 5) or weight.shape[0] != shape[0] or weight.shape[-2:] != shape[-2:]:
        return None
    if weight.shape[1] != shape[1]:
        if not adapt_channels:
            return None
        weight = adapt_input_channels(weight, shape[1])
    if weight.dim() == 4 and len(shape) == 5:
        weight = weight.unsqueeze(2).repeat(1, 1, shape[2], 1, 1) / shape[2]
    return weight if weight.shape == shape else None


def resample_grid(pos: torch.Tensor, prefix: int, h: int, w: int) -> torch.Tensor | None:
    """A (1, prefix + n, C) position embedding of a square grid of n tokens, resampled to h x w
    (bicubic, antialiased, as timm resamples pretrained ViT embeddings); the prefix tokens' rows are
    kept. None when the grid is not square."""
    n = pos.shape[1] - prefix
    side = math.isqrt(max(n, 0))
    if side * side != n or n == 0:
        return None
    grid = pos[:, prefix:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    return torch.cat([pos[:, :prefix], grid.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(pos.dtype)], 1)


def make_conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, ws: bool = False,
              bias: bool = False, padding: int | None = None, same: bool = False) -> nn.Conv2d:
    """A k x k conv: padding (k-1)//2 by default, or TensorFlow's 'SAME' (`same`, same output size
    for odd k, the odd pixel of padding moved to the bottom/right)."""
    if same:
        if ws:
            return StdConv2d(cin, cout, k, stride=stride, padding=0, groups=groups, bias=bias, same=True)
        return Conv2dSame(cin, cout, k, stride=stride, padding=0, groups=groups, bias=bias)
    p = (k - 1) // 2 if padding is None else padding
    cls = StdConv2d if ws else nn.Conv2d
    return cls(cin, cout, k, stride=stride, padding=p, groups=groups, bias=bias)


def clip_of(x: torch.Tensor, frames: int) -> torch.Tensor:
    """A clip's maps with the frames folded into the batch, (B*F, C, H, W), as (B, C, F, H, W) (a view)."""
    bf, c, h, w = x.shape
    return x.view(bf // frames, frames, c, h, w).transpose(1, 2)


def fold_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W): a clip's frames folded into the batch (a copy)."""
    b, c, f, h, w = x.shape
    return x.transpose(1, 2).reshape(b * f, c, h, w)


class FramesConv3d(nn.Conv3d):
    """A kt x k x k conv over a clip whose `frames` travel folded into the batch:
    (B*F, C, H, W) in, (B*F', C', H', W') out."""

    def __init__(self, *args, frames: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fold_frames(super().forward(clip_of(x, self.frames)))


def make_conv3d(cin: int, cout: int, k: int, kt: int, frames: int, stride: int = 1, st: int = 1, groups: int = 1,
                bias: bool = False, padding: int | None = None, tpad: int | None = None) -> FramesConv3d:
    """A kt x k x k conv on a clip of `frames` frames: padding (k-1)//2 and (kt-1)//2 by default."""
    p = (k - 1) // 2 if padding is None else padding
    pt = (kt - 1) // 2 if tpad is None else tpad
    return FramesConv3d(cin, cout, (kt, k, k), stride=(st, stride, stride), padding=(pt, p, p), groups=groups,
                        bias=bias, frames=frames)


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
        if isinstance(mod, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if mod.weight is not None:
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)
