"""A grammar backbone under torchvision's FeaturePyramidNetwork, with a tiny segmentation head,
trained for a step on random data (CPU, a few seconds):

    python examples/fpn_backbone.py

Any grammar point works the same way: conv stages hand out maps, token stages (Swin, ViT, NAT)
are reshaped to maps; `feature_info` gives the channels FPN needs.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import FeaturePyramidNetwork

from lab.build import build
from lab.catalog import resolve


class Segmenter(nn.Module):
    """backbone -> FPN -> a 3x3 conv on the finest level -> per-pixel logits at the input size."""

    def __init__(self, ref: str = "swin_t@32px,w=0.25", out_indices: tuple[int, ...] = (0, 1, 2),
                 classes: int = 5, fpn_channels: int = 64):
        super().__init__()
        self.backbone = build(resolve(ref), features_only=True, out_indices=out_indices)
        self.fpn = FeaturePyramidNetwork(self.backbone.feature_info.channels(), fpn_channels)
        self.head = nn.Conv2d(fpn_channels, classes, 3, padding=1)

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.backbone(x)
        return list(self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps))).values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        finest = self.levels(x)[0]
        return F.interpolate(self.head(finest), size=x.shape[-2:], mode="bilinear", align_corners=False)


def main(steps: int = 1, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = Segmenter()
    images, masks = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.backbone.parameters()]
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        levels = [tuple(m.shape) for m in model.levels(images)]
    changed = all(not torch.equal(a, b) for a, b in zip(before, model.backbone.parameters()))
    print(f"FPN levels {levels}; loss {' -> '.join(f'{v:.4f}' for v in losses)}; backbone updated: {changed}")
    return {"levels": levels, "losses": losses, "changed": changed}


if __name__ == "__main__":
    main(steps=3)
