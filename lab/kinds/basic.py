"""ResNet basic block (v1, post-activation): 3x3 conv, norm, ReLU, 3x3 conv, norm, add, ReLU.

``basic(kt=3)`` inflates both convs to 3 x 3 x 3 over a clip's frames (R3D, inflated 3D); the
projection shortcut stays a 1x1 conv on each frame.
"""

from __future__ import annotations

import torch
from torch import nn

from lab.errors import SpecError
from lab.kinds.base import (
    Block,
    Cost,
    Flow,
    Saved,
    Shape,
    check_clip,
    conv_cost,
    input_saved,
    norm_cost,
    out_size,
    param,
    register,
)
from lab.kinds.residual import PostActResidual, make_shortcut, needs_projection, shortcut_cost, zero_init_last_norm
from lab.layers import fit_filters, init_conv_, make_conv, make_conv3d


@register
class Basic(Block):
    """ResNet-18/34 block: two 3x3 convs with BatchNorm and a residual connection."""

    kind = "basic"
    kt: int = param(1, lo=1, hi=15, doc="temporal kernel of both convs, on a clip (odd; 3: inflated 3D)")

    def check(self) -> None:
        if self.kt % 2 == 0:
            raise SpecError(f"temporal kernel kt={self.kt} must be odd (the frames keep their count)", "kt")

    @property
    def per_frame(self) -> bool:  # type: ignore[override]
        return self.kt == 1

    def unit(self, s: Shape, width: int, stride: int) -> tuple[Shape, Cost]:
        if self.kt > 1:
            check_clip(s, f"a temporal kernel (kt={self.kt})", "kt")
        h, w = out_size(s.h, 3, stride, 1), out_size(s.w, 3, stride, 1)
        cost = (conv_cost(s.c, width, 3, h, w, kt=self.kt, f_out=s.f) + norm_cost(width)
                + conv_cost(width, width, 3, h, w, kt=self.kt, f_out=s.f) + norm_cost(width))
        cost = cost + shortcut_cost(s.c, width, stride, h, w).on_frames(s.f)
        return Shape(width, h, w, 0, s.f), cost

    def saved_unit(self, s: Shape, width: int, stride: int, flow: Flow) -> tuple[Saved, Flow]:
        """Its input; each conv's output twice (the norm's input, then the ReLU's output: after the
        first conv, and after the residual add); the projection's output once (its norm's input)."""
        shape, _ = self.unit(s, width, stride)
        out = width * shape.h * shape.w * shape.f
        proj = out if needs_projection(s.c, width, stride) else 0
        return input_saved(s, flow, cast=True) + Saved(4 * out + proj), Flow(True, False)

    def timm_names(self, dialect: str) -> dict[str, str] | None:
        if dialect != "resnet":
            return None
        return {"branch.0": "conv1", "branch.1": "bn1", "branch.3": "conv2", "branch.4": "bn2",
                "shortcut.0": "downsample.0", "shortcut.1": "downsample.1"}

    def adapt_weight(self, local: str, value: torch.Tensor, shape: torch.Size, s: Shape,
                     receives_image: bool = False) -> torch.Tensor | None:
        """2D filters inflated to the 3 x 3 x kt convs (I3D: a clip of identical frames sees the 2D block)."""
        if local not in ("branch.0.weight", "branch.3.weight"):
            return None
        return fit_filters(value, shape, adapt_channels=False)

    def _conv(self, s: Shape, cin: int, cout: int, stride: int) -> nn.Module:
        return make_conv(cin, cout, 3, stride) if self.kt == 1 else make_conv3d(cin, cout, 3, self.kt, s.f, stride)

    def build_unit(self, s: Shape, width: int, stride: int, drop_path: float) -> nn.Module:
        branch = nn.Sequential(
            self._conv(s, s.c, width, stride), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            self._conv(s, width, width, 1), nn.BatchNorm2d(width))
        unit = PostActResidual(branch, make_shortcut(s.c, width, stride), drop_path)
        init_conv_(unit)
        zero_init_last_norm(branch)
        return unit
