"""Window attention (Swin, Video Swin): the token grid is cut into windows (M x M, or P x M x M
on a clip) and attention runs inside each, all windows batched into one call, with a learned
relative position bias.

Shifted windows: the (padded) grid is rolled by -s along every axis before partitioning, so
windows straddle the previous layer's window borders, and rolled back afterwards. Tokens that the
roll wrapped around from the opposite edge share a window with tokens that are not their
neighbours; a mask keeps them apart. Grids that are not a multiple of the window are zero-padded
at the end of each axis first (as the official Swin and Video Swin code do; the mask follows the
padded geometry).

Every function takes the grid and window as tuples, one entry per axis (2 for images, 3 for clips).
"""

from __future__ import annotations

import functools
import math

import torch

# The cached index tables and masks are made on the CPU (whatever the default device is when
# first asked for) and moved to the module's device by the caller.


def partition(x: torch.Tensor, window: tuple[int, ...]) -> torch.Tensor:
    """(B, *grid, C) -> (B * windows, prod(window), C), windows and their tokens in row-major order."""
    b, *grid, c = x.shape
    n = len(window)
    split = [b]
    for size, m in zip(grid, window):
        split += [size // m, m]
    x = x.view(*split, c).permute(0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1)
    return x.reshape(-1, math.prod(window), c)


def reverse(windows: torch.Tensor, window: tuple[int, ...], grid: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`partition`: (B * windows, prod(window), C) -> (B, *grid, C)."""
    c, n = windows.shape[-1], len(window)
    x = windows.view(-1, *(size // m for size, m in zip(grid, window)), *window, c)
    order = [0] + [d for i in range(n) for d in (1 + i, 1 + n + i)] + [2 * n + 1]
    return x.permute(order).reshape(-1, *grid, c)


@functools.lru_cache(maxsize=64)
def relative_position_index(window: tuple[int, ...]) -> torch.Tensor:
    """(M, M) index into a prod(2m-1)-entry bias table: the offset between two tokens of a window,
    the first axis most significant (Swin's (2M-1)^2 table; Video Swin's (2P-1)(2M-1)^2)."""
    axes = torch.meshgrid(*(torch.arange(m, device="cpu") for m in window), indexing="ij")
    coords = torch.stack([a.flatten() for a in axes])  # (axes, M)
    rel = coords[:, :, None] - coords[:, None, :]
    index = torch.zeros(rel.shape[1:], dtype=torch.long, device="cpu")
    for axis, m in enumerate(window):
        index = index * (2 * m - 1) + rel[axis] + m - 1
    return index


def _regions(length: int, window: int, shift: int) -> torch.Tensor:
    """Per position of a rolled axis: 0 for tokens never wrapped, 1 / 2 for the two sides that
    meet in the last window after a shift (all 0 without a shift)."""
    r = torch.zeros(length, dtype=torch.long, device="cpu")
    if shift:
        r[length - window:length - shift] = 1
        r[length - shift:] = 2
    return r


@functools.lru_cache(maxsize=64)
def shift_mask(grid: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...]) -> torch.Tensor | None:
    """Additive mask (windows, M, M) for a grid (a multiple of the window) rolled by -shift:
    0 where two tokens may attend, -inf where the roll made strangers neighbours."""
    if not any(shift):
        return None
    label = torch.zeros(grid, dtype=torch.long, device="cpu")
    for axis, (size, m, s) in enumerate(zip(grid, window, shift)):
        view = [1] * len(grid)
        view[axis] = size
        label = label * 3 + _regions(size, m, s).view(view)
    label = partition(label[None, ..., None], window).squeeze(-1)  # (windows, M)
    same = label[:, :, None] == label[:, None, :]
    return torch.zeros(same.shape, device="cpu").masked_fill(~same, float("-inf"))
