"""MixUp and CutMix on a whole batch (timm's ``Mixup`` with ``mode='batch'``), plus smoothed one-hots.

One mixing coefficient per batch; every image is mixed with its partner in the flipped batch
(``x.flip(0)``), so the batch needs no shuffling and no second loader. The few random numbers a
batch needs are drawn with torch from the caller's generator, so a seeded run mixes identically on
every replay; the pixels never leave the batch's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def one_hot_smooth(labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """(B,) class indices -> (B, K) float targets; `smoothing` eps moves eps of the mass onto the
    uniform distribution (timm: off = eps/K, on = 1 - eps + eps/K), which is exactly the target
    ``F.cross_entropy(..., label_smoothing=eps)`` uses."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    hot = F.one_hot(labels.long(), num_classes).to(torch.get_default_dtype())
    return hot * (on - off) + off


@dataclass(frozen=True)
class Mix:
    """What one batch gets: `lam` is the weight of the batch's own images (1.0: left alone);
    `box` = (y0, y1, x0, x1), the half-open pixel box pasted from the flipped batch (CutMix only;
    on the last two dims, so a clip's frames all get the same box)."""

    lam: float = 1.0
    box: tuple[int, int, int, int] | None = None


def _rand(generator: torch.Generator | None) -> float:
    device = generator.device if generator is not None else "cpu"
    return float(torch.rand((), generator=generator, device=device))


def _randint(high: int, generator: torch.Generator | None) -> int:
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, high, (), generator=generator, device=device))


def _gamma(shape: float, generator: torch.Generator | None) -> float:
    """One Gamma(shape, 1) draw by Marsaglia & Tsang (2000), from the generator's normals and
    uniforms (torch's own Gamma/Beta samplers take no generator). Shapes below 1 use their boost:
    Gamma(a) = Gamma(a + 1) * U^(1/a)."""
    if shape < 1.0:
        u = _rand(generator)
        return _gamma(shape + 1.0, generator) * u ** (1.0 / shape)
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    device = generator.device if generator is not None else "cpu"
    while True:
        z = float(torch.randn((), generator=generator, device=device))
        v = (1.0 + c * z) ** 3
        if v <= 0.0:
            continue
        u = _rand(generator)
        if u > 0.0 and math.log(u) < 0.5 * z * z + d - d * v + d * math.log(v):
            return d * v


def sample_beta(alpha: float, generator: torch.Generator | None = None) -> float:
    """One Beta(alpha, alpha) draw, as G1 / (G1 + G2) of two Gamma(alpha) draws."""
    g1, g2 = _gamma(alpha, generator), _gamma(alpha, generator)
    return g1 / (g1 + g2) if g1 + g2 > 0.0 else 0.5  # both underflow only for tiny alpha: a coin's midpoint


def cutmix_box(height: int, width: int, lam: float,
               generator: torch.Generator | None = None) -> tuple[tuple[int, int, int, int], float]:
    """A box of about (1 - lam) of the image around a uniform centre, clipped to the image (timm's
    rand_bbox: sides int(H sqrt(1-lam)), int(W sqrt(1-lam)), halved with floor either side of the
    centre). Returns the box and lam corrected to the area actually pasted."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = _randint(height, generator), _randint(width, generator)
    y0, y1 = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    x0, x1 = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    return (y0, y1, x0, x1), 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


class Mixer:
    """MixUp / CutMix per batch, with smoothed soft targets (timm's Mixup, mode='batch').

    With probability `prob` a batch is mixed; when both alphas are positive CutMix is chosen with
    probability `switch_prob`, else MixUp; lam ~ Beta(alpha, alpha) of the chosen one. Without
    mixing (both alphas 0, prob 0, or the coin says no) images pass unchanged and the targets are
    the smoothed one-hots."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, smoothing: float = 0.1):
        if num_classes < 1:
            raise ValueError(f"mixing needs at least one class, got num_classes={num_classes}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup/cutmix alphas must be >= 0 (0 turns one off), got {mixup_alpha}, {cutmix_alpha}")
        for name, p in (("prob", prob), ("switch_prob", switch_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"mixing {name} must be in [0, 1], got {p}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob, self.smoothing = float(prob), float(switch_prob), float(smoothing)

    @property
    def active(self) -> bool:
        """Does this mixer ever change a batch? (False: it only turns labels into smoothed one-hots.)"""
        return self.prob > 0.0 and (self.mixup_alpha > 0.0 or self.cutmix_alpha > 0.0)

    def draw(self, height: int, width: int, generator: torch.Generator | None = None) -> Mix:
        """The random part of one batch: whether and how to mix (consumes the generator only when active)."""
        if not self.active or _rand(generator) >= self.prob:
            return Mix()
        if self.mixup_alpha > 0.0 and self.cutmix_alpha > 0.0:
            cutmix = _rand(generator) < self.switch_prob
        else:
            cutmix = self.cutmix_alpha > 0.0
        lam = sample_beta(self.cutmix_alpha if cutmix else self.mixup_alpha, generator)
        if not cutmix:
            return Mix(lam)
        box, lam = cutmix_box(height, width, lam, generator)
        return Mix(lam, box)

    def apply(self, images: Tensor, labels: Tensor, mix: Mix) -> tuple[Tensor, Tensor]:
        """Mix a batch of images (B, C, H, W) or clips (B, C, T, H, W) as `mix` says -> (new images,
        (B, K) soft targets); `images` is not modified."""
        if images.dim() not in (4, 5) or labels.shape != images.shape[:1]:
            raise ValueError(f"expected images (B, C, H, W) or clips (B, C, T, H, W) and labels (B,), got "
                             f"{tuple(images.shape)} and {tuple(labels.shape)}")
        own = one_hot_smooth(labels, self.num_classes, self.smoothing).to(images.device, images.dtype)
        if mix.lam == 1.0:
            return images, own
        flipped = images.flip(0)
        if mix.box is None:
            mixed = images * mix.lam + flipped * (1.0 - mix.lam)
        else:
            y0, y1, x0, x1 = mix.box
            mixed = images.clone()
            mixed[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
        return mixed, own * mix.lam + own.flip(0) * (1.0 - mix.lam)

    def __call__(self, images: Tensor, labels: Tensor,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) images or (B, C, T, H, W) clips and (B,) int labels -> (mixed, (B, K) soft targets)."""
        return self.apply(images, labels, self.draw(images.shape[-2], images.shape[-1], generator))
