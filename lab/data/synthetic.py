"""A procedural shape-classification task: ten shape kinds at random position, scale, rotation
and contrast, over a shaded background with noise and distractor clutter.

Why this design: the class is a *shape*, never a location or an intensity, so a linear model on
raw pixels has little to hold on to (a shape can be anywhere, any size, any rotation), while a
small CNN's local filters and pooling recognise it. All ten shapes are mirror-symmetric up to a
rotation, so a horizontal flip never changes a label.

Image i depends only on i and a fixed seed: images are made in chunks of `CHUNK`, each chunk
from its own generator seeded by its index, so `synthetic:20000` starts with `synthetic:10000`.
Labels are `i % 10`, so every block of ten consecutive images holds each class once.
"""

from __future__ import annotations

import math

import torch

from lab.data.split import mix

SIZE = 32
CLASSES = ("disk", "ring", "square", "square outline", "plus", "triangle", "triangle outline", "bars", "ellipse", "corner")
CHUNK = 1000
_SEED = 0x5EED_5A9E


def _box(px: torch.Tensor, py: torch.Tensor, hx: torch.Tensor, hy: torch.Tensor) -> torch.Tensor:
    """Signed distance to an axis-aligned box of half-sizes (hx, hy) centred at the origin."""
    qx, qy = px.abs() - hx, py.abs() - hy
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    return outside + torch.maximum(qx, qy).clamp(max=0)


def _triangle(px: torch.Tensor, py: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance to an equilateral triangle of circumradius r (Inigo Quilez's formula)."""
    k = math.sqrt(3.0)
    s = r * k / 2  # half the side length
    py = -py + r / 2  # apex up, centroid at the origin
    px = px.abs() - s
    py = py + s / k
    flip = px + k * py > 0
    px, py = torch.where(flip, (px - k * py) / 2, px), torch.where(flip, (-k * px - py) / 2, py)
    px = px - torch.clamp(px, min=-2 * s, max=torch.zeros_like(px))
    return -torch.sqrt(px**2 + py**2) * torch.sign(py)


def _sdf(kind: int, px: torch.Tensor, py: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, negative inside) to shape `kind` of size r and stroke t."""
    if kind == 0:
        return torch.sqrt(px**2 + py**2) - r
    if kind == 1:
        return (torch.sqrt(px**2 + py**2) - r).abs() - t
    if kind == 2:
        return _box(px, py, 0.8 * r, 0.8 * r)
    if kind == 3:
        return _box(px, py, 0.8 * r, 0.8 * r).abs() - t
    if kind == 4:
        return torch.minimum(_box(px, py, r, t), _box(px, py, t, r))
    if kind == 5:
        return _triangle(px, py, 1.1 * r)
    if kind == 6:
        return _triangle(px, py, 1.1 * r).abs() - t
    if kind == 7:
        gap = 0.5 * r
        return torch.minimum(_box(px, py - gap, r, t), _box(px, py + gap, r, t))
    if kind == 8:  # ellipse, aspect ~2.2: the scaled-circle approximation is exact enough here
        a, b = r, 0.45 * r
        return (torch.sqrt((px / a) ** 2 + (py / b) ** 2) - 1) * b
    # corner: two perpendicular arms meeting at a right angle, centred on its bounding box
    return torch.minimum(_box(px + 0.5 * r, py, t, r), _box(px, py + 0.5 * r, r, t))


def _chunk(k: int) -> torch.Tensor:
    """Chunk k: images k*CHUNK ... (k+1)*CHUNK - 1 as uint8 (CHUNK, 1, SIZE, SIZE)."""
    g = torch.Generator().manual_seed(mix(_SEED, k))
    n = CHUNK
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    r = 4.0 + 6.0 * u(n)  # shape size (px)
    t = 0.9 + 1.1 * u(n)  # stroke half-width (px)
    margin = r + 1.0
    cx = margin + (SIZE - 1 - 2 * margin) * u(n)
    cy = margin + (SIZE - 1 - 2 * margin) * u(n)
    angle = 2 * math.pi * u(n)
    bg = 0.05 + 0.35 * u(n)
    contrast = 0.25 + 0.5 * u(n)
    noise = 0.03 + 0.09 * u(n)

    ys, xs = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32), indexing="ij")
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    px, py = cos * dx + sin * dy, -sin * dx + cos * dy
    rr, tt = r[:, None, None], t[:, None, None]

    labels = torch.arange(n) % len(CLASSES)
    dist = torch.empty(n, SIZE, SIZE)
    for kind in range(len(CLASSES)):  # a loop over the ten kinds, each vectorized over its images
        m = labels == kind
        dist[m] = _sdf(kind, px[m], py[m], rr[m], tt[m])
    shape = torch.sigmoid(-dist / 0.5)  # anti-aliased coverage

    # background: a random linear ramp, so absolute intensity says nothing about the class
    ramp = 0.15 * (2 * u(n, 2) - 1)
    field = bg[:, None, None] + ramp[:, 0, None, None] * (xs - SIZE / 2) / SIZE + ramp[:, 1, None, None] * (ys - SIZE / 2) / SIZE

    # clutter: short random strokes and small blobs anywhere, at the shape's contrast range
    clutter = torch.zeros(n, SIZE, SIZE)
    for _ in range(3):
        bx, by = SIZE * u(n, 1, 1), SIZE * u(n, 1, 1)
        ba, bl = math.pi * u(n, 1, 1), 1.0 + 4.0 * u(n, 1, 1)
        ex, ey = xs - bx, ys - by
        along = torch.cos(ba) * ex + torch.sin(ba) * ey
        across = -torch.sin(ba) * ex + torch.cos(ba) * ey
        d = _box(along, across, bl, torch.full_like(bl, 0.6))
        clutter = torch.maximum(clutter, (0.3 + 0.6 * u(n, 1, 1)) * torch.sigmoid(-d / 0.5))

    img = (field + contrast[:, None, None] * torch.maximum(shape, clutter)
           + noise[:, None, None] * torch.randn(n, SIZE, SIZE, generator=g))
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).unsqueeze(1)


def generate(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n images (uint8 (n, 1, 32, 32)) and labels (int64 (n,)) of the task."""
    chunks = [_chunk(k) for k in range(-(-n // CHUNK))]
    images = torch.cat(chunks)[:n] if chunks else torch.empty(0, 1, SIZE, SIZE, dtype=torch.uint8)
    return images.contiguous(), torch.arange(n, dtype=torch.int64) % len(CLASSES)
