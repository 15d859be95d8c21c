"""Ops that make, carry and pool tokens (the stems, transitions and heads of transformers).

    patch(p=16,c=768)   patchify: a p x p, stride-p conv, flattened to tokens (ViT, Mixer, Swin)
    cls  dist           a learned class / distillation token, appended after the prefix tokens
    pos                 learned absolute position embedding over all tokens (prefix included)
    merge               Swin patch merging: 2x2 neighbours concatenated, LayerNorm, linear
    token               pool: the class token (ViT, DeiT)
    distill             DeiT's two classifiers on the class and distillation tokens

Tokens are (B, prefix + H*W, C); the prefix tokens (class, distillation) sit in front of the grid.
A clip's tokens are (B, prefix + F*H*W, C): position embeddings, prefix tokens and pooling span
all frames; patch merging works on each frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lab.errors import SpecError
from lab.kinds.base import (
    NCHW,
    NLC,
    ZERO,
    Context,
    Cost,
    Flow,
    Op,
    Saved,
    Shape,
    conv_cost,
    input_saved,
    linear_cost,
    norm_cost,
    param,
    register,
)
from lab.layers import clip_of, fit_filters, resample_grid

# --- modules ---------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> non-overlapping p x p patches, linearly embedded -> (B, H/p * W/p, dim).
    On a clip of `frames` (folded into the batch): pt x p x p tubelets -> (B, F/pt * H/p * W/p, dim)."""

    def __init__(self, cin: int, dim: int, p: int, pt: int = 1, frames: int = 1):
        super().__init__()
        self.frames = frames
        self.proj = nn.Conv2d(cin, dim, p, stride=p) if pt == 1 else nn.Conv3d(cin, dim, (pt, p, p), stride=(pt, p, p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.proj, nn.Conv3d):
            return self.proj(clip_of(x, self.frames)).flatten(2).transpose(1, 2)
        x = self.proj(x).flatten(2).transpose(1, 2)
        return x if self.frames == 1 else x.reshape(-1, self.frames * x.shape[1], x.shape[2])


class PrefixToken(nn.Module):
    """A learned token inserted after the `index` prefix tokens already in front of the grid."""

    no_weight_decay = ("token",)  # parameter names the optimizer must not decay (lab/train/optim.py)

    def __init__(self, dim: int, index: int):
        super().__init__()
        self.index = index
        self.token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.token, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        token = self.token.expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :self.index], token, x[:, self.index:]], dim=1)


class PositionEmbedding(nn.Module):
    no_weight_decay = ("pos",)

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, n, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos


class PatchMerging(nn.Module):
    """Swin: each 2x2 group of tokens concatenated (4C), normalized and projected (no bias).
    Odd maps are zero-padded on the bottom/right first, as timm does."""

    def __init__(self, h: int, w: int, dim: int, out: int, eps: float, frames: int = 1):
        super().__init__()
        self.h, self.w, self.frames = h, w, frames
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[2]
        x = x.reshape(-1, self.h, self.w, c)  # a clip's frames merge each on its own (space only)
        b = x.shape[0]
        x = F.pad(x, (0, 0, 0, self.w % 2, 0, self.h % 2))
        h2, w2 = x.shape[1] // 2, x.shape[2] // 2
        # order of the 4C features: (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1), as Swin
        x = x.view(b, h2, 2, w2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b // self.frames, self.frames * h2 * w2, 4 * c)
        return self.reduction(self.norm(x))


class ClassToken(nn.Module):
    """Pool: the class token, as one token (B, 1, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


class DistilledHead(nn.Module):
    """DeiT: a classifier on the class token and one on the distillation token. Training returns
    both logits (the second is trained against the teacher); evaluation returns their average."""

    def __init__(self, dim: int, num_classes: int, bias: bool):
        super().__init__()
        self.head = nn.Linear(dim, num_classes, bias=bias) if num_classes else nn.Identity()
        self.head_dist = nn.Linear(dim, num_classes, bias=bias) if num_classes else nn.Identity()
        for lin in (self.head, self.head_dist):
            if isinstance(lin, nn.Linear):
                nn.init.trunc_normal_(lin.weight, std=0.02)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits, logits_dist = self.head(x[:, 0]), self.head_dist(x[:, 1])
        if self.training and isinstance(self.head, nn.Linear):
            return logits, logits_dist
        return (logits + logits_dist) / 2


# --- kinds -----------------------------------------------------------------------------


@register
class Patch(Op):
    """Patchify: a p x p conv with stride p (and bias), flattened to tokens."""

    kind = "patch"
    layout = NCHW
    patchifies = True
    per_frame = False  # the tokens of all frames form one sequence
    p: int | None = param(None, lo=1, hi=256, doc="patch size (required; must divide the input)")
    c: int | None = param(None, lo=1, hi=65536, doc="embedding width (default: the stage width, in a transition)")
    pt: int = param(1, lo=1, hi=64, doc="frames per tubelet, on a clip (must divide its frames)")

    def check(self) -> None:
        if self.p is None:
            raise SpecError("patch needs its size: p=N", "p")

    def layout_out(self, layout_in: str) -> str:
        return NLC

    def out_channels(self, ctx: Context) -> int:
        if self.c is not None:
            return self.c
        if ctx.width is None:
            raise SpecError("patch needs its embedding width here: c=N", "c")
        return ctx.width

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        assert self.p is not None  # check() requires it
        if s.h % self.p or s.w % self.p:
            raise SpecError(f"patch size {self.p} does not divide the {s.h}x{s.w} input", "p")
        if s.f % self.pt:
            raise SpecError(f"tubelets of {self.pt} frames do not divide the {s.f} frame(s) of the input", "pt")
        c = self.out_channels(ctx)
        h, w, f = s.h // self.p, s.w // self.p, s.f // self.pt
        return Shape(c, h, w, 0, f), conv_cost(s.c, c, self.p, h, w, bias=True, kt=self.pt, f_out=f)

    def saved(self, s: Shape, out: Shape, ctx: Context, flow: Flow) -> tuple[Saved, Flow]:
        """The patch conv's input (a half-precision copy under autocast)."""
        return input_saved(s, flow, cast=True), Flow(False, False)

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        assert self.p is not None  # check() requires it
        return PatchEmbed(s.c, self.out_channels(ctx), self.p, self.pt, s.f)

    def adapt_weight(self, local: str, value: torch.Tensor, shape: torch.Size, s: Shape,
                     receives_image: bool = False) -> torch.Tensor | None:
        """Pretrained patch filters for other image channels (the input layer's; RGB on grey: summed),
        and 2D patches inflated to tubelets (Video Swin's start from an image Swin)."""
        if local != "proj.weight":
            return None
        return fit_filters(value, shape, adapt_channels=receives_image)

    def widen(self, m: float, channels: Callable[[int], int]) -> Patch:
        return self if self.c is None else dataclasses.replace(self, c=channels(self.c))


class _PrefixOp(Op):
    layout = NLC
    per_frame = False  # one token for the whole clip

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        return s._replace(t=s.t + 1), Cost(s.c, 0, 0)

    def saved(self, s: Shape, out: Shape, ctx: Context, flow: Flow) -> tuple[Saved, Flow]:
        """Nothing; joined with a float32 parameter, the tokens are float32 under autocast from here."""
        return Saved(), Flow(False, True)

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        return PrefixToken(s.c, s.t)

    def timm_names(self, dialect: str) -> dict[str, str] | None:
        return {"token": ""}  # timm keeps the token itself at the element's place (cls_token)


@register
class ClassTokenOp(_PrefixOp):
    """A learned class token (ViT), placed after any prefix tokens already present."""

    kind = "cls"


@register
class DistillationToken(_PrefixOp):
    """DeiT's learned distillation token, placed after the class token."""

    kind = "dist"


@register
class Position(Op):
    """Learned absolute position embedding, one vector per token (prefix tokens included)."""

    kind = "pos"
    layout = NLC
    per_frame = False  # one position per token of the clip
    n: int | None = param(None, lo=1, hi=1 << 24, doc="number of positions (default: the tokens it receives)")

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        n = s.tokens
        if self.n is not None and self.n != n:
            grid = f"{s.f}x{s.h}x{s.w}" if s.f > 1 else f"{s.h}x{s.w}"
            raise SpecError(f"position embedding has {self.n} positions, but {n} tokens arrive "
                            f"({s.t} prefix + {grid})", "n")
        return s, Cost(n * s.c, 0, 0)

    def saved(self, s: Shape, out: Shape, ctx: Context, flow: Flow) -> tuple[Saved, Flow]:
        """Nothing; adding a float32 parameter makes the tokens float32 under autocast."""
        return Saved(), Flow(False, True)

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        return PositionEmbedding(s.tokens, s.c)

    def timm_names(self, dialect: str) -> dict[str, str] | None:
        return {"pos": ""}  # timm: pos_embed

    def adapt_weight(self, local: str, value: torch.Tensor, shape: torch.Size, s: Shape,
                     receives_image: bool = False) -> torch.Tensor | None:
        """A pretrained embedding of another (square) token grid, resampled to this one."""
        if local != "pos" or value.dim() != 3 or value.shape[2] != shape[2] or s.f > 1:
            return None
        return resample_grid(value, s.t, s.h, s.w)


@register
class Merge(Op):
    """Swin patch merging: halves the grid, concatenates each 2x2 group, LayerNorm(4C), linear to c
    (on a clip, each frame's grid: Video Swin merges in space only)."""

    kind = "merge"
    layout = NLC
    needs_grid = True
    per_frame = False  # works on each frame, folding the clip's tokens itself
    c: int | None = param(None, lo=1, hi=65536, doc="output width (default: the stage width, else 2x input)")
    eps: float = param(1e-5, lo=0, hi=1, doc="LayerNorm epsilon")

    def out_channels(self, s: Shape, ctx: Context) -> int:
        return self.c if self.c is not None else (ctx.width if ctx.width is not None else 2 * s.c)

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        c = self.out_channels(s, ctx)
        h, w = (s.h + 1) // 2, (s.w + 1) // 2
        return Shape(c, h, w, 0, s.f), norm_cost(4 * s.c) + linear_cost(4 * s.c, c, s.f * h * w, bias=False)

    def saved(self, s: Shape, out: Shape, ctx: Context, flow: Flow) -> tuple[Saved, Flow]:
        """The 2x2 neighbours gathered into one copy (the norm's input), and the norm's output (the
        linear's input): each the size of the (padded) input."""
        n = s.c * s.f * (s.h + s.h % 2) * (s.w + s.w % 2)
        return Saved(n, 0) + (Saved(0, n) if flow.wide else Saved(n)), Flow(False, False)

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        return PatchMerging(s.h, s.w, s.c, self.out_channels(s, ctx), self.eps, s.f)

    def widen(self, m: float, channels: Callable[[int], int]) -> Merge:
        return self if self.c is None else dataclasses.replace(self, c=channels(self.c))


@register
class TokenPool(Op):
    """Pool by taking the class token (the first prefix token)."""

    kind = "token"
    layout = NLC
    per_frame = False

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        if s.t < 1:
            raise SpecError("token pooling needs a class token: put cls in the stem (or pool with gap)")
        return Shape(s.c, 1, 1), ZERO

    def saved(self, s: Shape, out: Shape, ctx: Context, flow: Flow) -> tuple[Saved, Flow]:
        return Saved(), Flow(False, flow.wide)

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        return ClassToken()


@register
class Distill(Op):
    """DeiT's classifier pair on the class and distillation tokens (ends a head, like fc)."""

    kind = "distill"
    layout = NLC
    classifier = True
    per_frame = False
    bias: bool = param(True, doc="learned bias")

    def shape(self, s: Shape, ctx: Context) -> tuple[Shape, Cost]:
        if s.t < 2:
            raise SpecError(f"distill needs a class and a distillation token, the tokens carry {s.t} prefix "
                            "token(s): put cls,dist in the stem")
        n = ctx.num_classes
        if n == 0:  # features: the average of the two tokens, as timm's pre-logits
            return Shape(s.c, 1, 1), ZERO
        return Shape(n, 1, 1), linear_cost(s.c, n, bias=self.bias).times(2)

    def saved(self, s: Shape, out: Shape, ctx: Context, flow: Flow) -> tuple[Saved, Flow]:
        """Two tokens' worth (the classifiers' inputs): nothing to count."""
        return Saved(), Flow(False, False)

    def build(self, s: Shape, ctx: Context) -> nn.Module:
        return DistilledHead(s.c, ctx.num_classes, self.bias)
