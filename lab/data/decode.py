"""Encoded images (files, bytes) to uint8 CHW squares, with errors that name the culprit."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from lab.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
# modes whose pixels carry no colour: a dataset made only of these is stored with one channel
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

Source = str | bytes  # a file path, or the encoded bytes themselves


def _open(src: Source):
    from PIL import Image

    return Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src)


def header(src: Source, what: str) -> tuple[int, int, str]:
    """(width, height, PIL mode) from the image's header only (cheap); DataError naming `what`."""
    try:
        with _open(src) as im:
            return im.width, im.height, im.mode
    except Exception as e:  # PIL raises many kinds (UnidentifiedImageError, OSError, SyntaxError...)
        raise DataError(f"{what}: not a readable image ({type(e).__name__}: {_first_line(e)})") from None


def decode(src: Source, size: int, mode: str, what: str) -> np.ndarray:
    """The image as uint8 (size, size, C): converted to `mode` ("L" or "RGB"), its shorter side
    resized to `size` (bilinear, antialiased when shrinking) and centre-cropped to a square."""
    from PIL import Image, ImageOps

    try:
        with _open(src) as im:
            im = im.convert(mode)
            if im.size != (size, size):
                im = ImageOps.fit(im, (size, size), method=Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
    except Exception as e:
        raise DataError(f"{what}: cannot decode image ({type(e).__name__}: {_first_line(e)})") from None
    return a[:, :, None] if a.ndim == 2 else a


def _first_line(e: BaseException) -> str:
    if type(e).__name__ == "UnidentifiedImageError":  # its text repeats the file (or a BytesIO repr)
        return "unknown image format"
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else "no detail"


def _pool_map(fn: Callable[[int], object], n: int, threads: int) -> list:
    threads = threads or min(8, os.cpu_count() or 1)
    if threads <= 1 or n <= 64:
        return [fn(i) for i in range(n)]
    with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while it decodes
        return list(pool.map(fn, range(n), chunksize=32))


def decode_many(n: int, fetch: Callable[[int], tuple[Source, str]], size: int, mode: str, threads: int = 1) -> torch.Tensor:
    """uint8 (n, C, size, size) from `fetch(i) -> (source, name for errors)`; `threads` decode
    in parallel (0: one per CPU, at most 8)."""
    out = np.empty((n, size, size, 1 if mode == "L" else 3), dtype=np.uint8)

    def one(i: int) -> None:
        src, what = fetch(i)
        out[i] = decode(src, size, mode, what)

    _pool_map(one, n, threads)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class Scan:
    """What the headers of a set of images say: the sizes seen (with an example of each) and
    whether every image is grayscale. Filled by `add`, possibly in several rounds."""

    def __init__(self) -> None:
        self.sizes: dict[tuple[int, int], str] = {}
        self.gray = True

    def add(self, n: int, fetch: Callable[[int], tuple[Source, str]], threads: int = 0) -> None:
        def one(i: int) -> tuple[int, int, str, str]:
            src, what = fetch(i)
            return (*header(src, what), what)

        for w, h, mode, what in _pool_map(one, n, threads):
            self.sizes.setdefault((w, h), what)
            self.gray = self.gray and mode in GRAY_MODES

    @property
    def mode(self) -> str:
        """The mode images are stored in: one channel only if every image is grayscale."""
        return "L" if self.gray else "RGB"

    def square(self, given: int | None, name: str) -> int:
        """The side to store images at: `given`, or the images' own when all are equal squares."""
        if given is not None:
            if isinstance(given, bool) or not isinstance(given, int) or given < 1:
                raise DataError(f"{name}: size must be a positive integer, got {given!r}")
            return given
        if len(self.sizes) == 1:
            ((w, h),) = self.sizes
            if w == h:
                return w
        shown = ", ".join(f"{w}x{h} in {what}" for (w, h), what in sorted(self.sizes.items())[:2])
        raise DataError(f"{name}: images are not all squares of one size ({shown}...); "
                        "pass size=N to resize and centre-crop them to NxN")
