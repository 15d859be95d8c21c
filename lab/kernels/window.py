"""Window attention (Swin): the map is cut into M x M windows and attention runs inside each,
all windows batched into one call, with a learned relative position bias.

Shifted windows: the (padded) map is rolled by (-s, -s) before partitioning, so windows straddle
the previous layer's window borders, and rolled back afterwards. Tokens that the roll wrapped
around from the opposite edge share a window with tokens that are not their neighbours; a mask
keeps them apart. Maps that are not a multiple of the window are zero-padded on the bottom/right
first (as the official Swin code does for detection; the mask follows the padded geometry).
"""

from __future__ import annotations

import functools

import torch

# The cached index tables and masks are made on the CPU (whatever the default device is when
# first asked for) and moved to the module's device by the caller.


def partition(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, wh * ww, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def reverse(windows: torch.Tensor, wh: int, ww: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`partition`: (B * windows, wh * ww, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


@functools.lru_cache(maxsize=64)
def relative_position_index(wh: int, ww: int) -> torch.Tensor:
    """(M, M) index into a ((2wh-1)(2ww-1))-entry bias table: the offset between two tokens of a window."""
    ys, xs = torch.meshgrid(torch.arange(wh, device="cpu"), torch.arange(ww, device="cpu"), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, M)
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


def _regions(length: int, window: int, shift: int) -> torch.Tensor:
    """Per position of a rolled axis: 0 for tokens never wrapped, 1 / 2 for the two sides that
    meet in the last window after a shift (all 0 without a shift)."""
    r = torch.zeros(length, dtype=torch.long, device="cpu")
    if shift:
        r[length - window:length - shift] = 1
        r[length - shift:] = 2
    return r


@functools.lru_cache(maxsize=64)
def shift_mask(h: int, w: int, wh: int, ww: int, sh: int, sw: int) -> torch.Tensor | None:
    """Additive mask (windows, M, M) for a map of h x w (a multiple of the window) rolled by
    (-sh, -sw): 0 where two tokens may attend, -inf where the roll made strangers neighbours."""
    if not (sh or sw):
        return None
    label = _regions(h, wh, sh)[:, None] * 3 + _regions(w, ww, sw)[None, :]
    label = partition(label[None, :, :, None], wh, ww).squeeze(-1)  # (windows, M)
    same = label[:, :, None] == label[:, None, :]
    return torch.zeros(same.shape, device="cpu").masked_fill(~same, float("-inf"))
