"""Moving digits: an offline video task whose class is a *motion*, not a digit.

Each clip shows one mnist5k digit, shrunk 28 -> 14 px by 2x2 average pooling, moving over a
black size x size frame along one of ten paths: classes 0-7 are straight lines in the directions
k * 45 degrees (row index grows downward, so class 1 is "down-right"), 8 and 9 are clockwise and
counter-clockwise arcs of a circle. Every clip draws its own travel (speed), start offset,
radius, start angle and arc length; positions are rounded to whole pixels and keep the whole
14 x 14 patch inside the frame on every frame, so the digit is never clipped.

Mirror classes differ only in temporal order: a clip of class k + 4 (k < 4) is a class-k path
played backwards, and a counter-clockwise clip is a clockwise one played backwards. A single
frame, or the unordered set of frames, is distributed alike in both classes of a mirror pair: to
tell left from right, or clockwise from counter-clockwise, a model must use the frames' order.

Fixed like mnist5k: clip i is digit i, everything is drawn from one generator seeded by `SEED`,
and path classes are dealt evenly within each group the caller names (the loader's groups are
digit x split part, so every split holds every path class equally often and for every digit).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lab.errors import DataError

CLASSES = ("right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right", "clockwise", "counter-clockwise")
FRAMES = 16
SIZE = 32
SEED = 0x0D1_6175
# per-frame-travel signs (dx, dy) of the four base directions; classes 4-7 are these paths reversed in time
_STEPS = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1]], dtype=torch.float64)


def _deal(groups: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """A class in 0..k-1 for each item: within each group, a seeded shuffle dealt round-robin,
    so each group holds every class equally often (up to one where k does not divide it)."""
    n = len(groups)
    perm = torch.randperm(n, generator=g)
    members = perm[torch.argsort(groups[perm], stable=True)]  # grouped, each group in random order
    counts = torch.unique_consecutive(groups[members], return_counts=True)[1]
    rank = torch.arange(n) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    classes = torch.empty(n, dtype=torch.int64)
    classes[members] = rank % k
    return classes


def _paths(classes: torch.Tensor, room: int, frames: int, g: torch.Generator) -> torch.Tensor:
    """Integer top-left positions (N, T, 2) as (row, col) in [0, room] of each clip's path."""
    n = len(classes)
    u = torch.rand(6, n, 1, generator=g, dtype=torch.float64)  # every clip draws all six, whatever its class
    t = torch.linspace(0, 1, frames, dtype=torch.float64)  # (T,)
    base = classes % 4
    # straight lines: travel e in [room/2, room] along each moving axis, a start that keeps it inside
    step = _STEPS[base]  # (N, 2) as (dx, dy)
    e = room * (0.5 + 0.5 * u[0])  # (N, 1)
    lo = (-step * e).clamp(min=0)
    hi = room - (step * e).clamp(min=0)
    start = lo + (hi - lo) * torch.cat([u[1], u[2]], 1)  # (N, 2) as (x, y)
    line = start[:, None, :] + step[:, None, :] * e[:, :, None] * t[None, :, None]  # (N, T, 2)
    # circles: radius in [room/3, room/2], centre keeping it inside, an arc of 5/8 to 1 turn
    r = room * (1 / 3 + u[3] / 6)
    centre = r + (room - 2 * r) * torch.cat([u[4], u[5]], 1)  # (N, 2) as (x, y)
    phase = 2 * math.pi * u[1]
    sweep = math.pi * (1.25 + 0.75 * u[2])
    angle = phase + sweep * t  # (N, T): increasing angle with y down is clockwise on screen
    circle = centre[:, None, :] + r[:, :, None] * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    xy = torch.where((classes < 8)[:, None, None], line, circle)
    backwards = ((classes >= 4) & (classes < 8)) | (classes == 9)
    xy = torch.where(backwards[:, None, None], xy.flip(1), xy)
    return xy.flip(-1).round().clamp(0, room).to(torch.int64)  # (row, col)


def generate(
    images: torch.Tensor,
    groups: torch.Tensor | None = None,
    *,
    seed: int = SEED,
    frames: int = FRAMES,
    size: int = SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips uint8 (N, 1, frames, size, size) of the digits `images` (uint8 (N, 1, H, H), H even;
    each shrunk to H/2 by 2x2 average pooling) moving along paths, and their path classes int64
    (N,) (indices into `CLASSES`). `groups` (N,) ints: path classes are dealt evenly within each
    group (None: one group). Deterministic in `seed`; vectorized over clips and frames."""
    if (images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]
            or images.shape[2] % 2):
        raise DataError(
            f"moving digits: expected uint8 digits (N, 1, H, H) with H even, got {images.dtype} {tuple(images.shape)}"
        )
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise DataError(f"moving digits: frames must be an integer >= 2, got {frames!r}")
    side = images.shape[2] // 2
    if isinstance(size, bool) or not isinstance(size, int) or size < side + 2:
        raise DataError(
            f"moving digits: size must be an integer >= {side + 2} (the {side} px digit must have room to move), got {size!r}"
        )
    n = images.shape[0]
    if groups is not None and tuple(groups.shape) != (n,):
        raise DataError(f"moving digits: groups must have shape ({n},), got {tuple(groups.shape)}")
    g = torch.Generator().manual_seed(seed)
    classes = _deal(torch.zeros(n, dtype=torch.int64) if groups is None else groups.to(torch.int64), len(CLASSES), g)
    pos = _paths(classes, size - side, frames, g)  # (N, T, 2)
    digits = F.avg_pool2d(images.float(), 2).round().to(torch.uint8).reshape(n, 1, side * side)
    # one scatter paints every frame of every clip: flat pixel indices of each patch (N, T, side*side)
    r = torch.arange(side)
    rows = pos[:, :, 0, None] + r  # (N, T, side)
    cols = pos[:, :, 1, None] + r
    index = (rows[:, :, :, None] * size + cols[:, :, None, :]).reshape(n, frames, side * side)
    clips = torch.zeros(n, frames, size * size, dtype=torch.uint8)
    clips.scatter_(2, index, digits.expand(n, frames, side * side))
    return clips.reshape(n, 1, frames, size, size), classes
