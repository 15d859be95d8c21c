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


def headers(n: int, fetch: Callable[[int], tuple[Source, str]], threads: int = 0) -> list[tuple[int, int, str]]:
    """(width, height, mode) of n images from their headers, `threads` reading in parallel."""
    def one(i: int) -> tuple[int, int, str]:
        return header(*fetch(i))

    return _pool_map(one, n, threads)


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

    def note(self, sizes: dict[tuple[int, int], str], modes: list[str]) -> None:
        """Add what headers read earlier said (the sizes with an example each, the modes seen)."""
        for wh, what in sizes.items():
            self.sizes.setdefault(wh, what)
        self.gray = self.gray and all(m in GRAY_MODES for m in modes)

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


# ---------------------------------------------------------------- decoding with torchvision (CUDA)

DECODERS = ("pil", "cuda")
JPEG_MAGIC = b"\xff\xd8\xff"
DEVICE_CHUNK = 2048  # images decoded on the device per call when a whole dataset is read


def check_decoder(decoder: object, name: str) -> str:
    """`decoder` if known and usable here: "cuda" needs a CUDA device (else one-line DataError)."""
    if decoder not in DECODERS:
        raise DataError(f"{name}: unknown decoder {decoder!r} (known: {', '.join(DECODERS)})")
    if decoder == "cuda" and not torch.cuda.is_available():
        raise DataError(f"{name}: decoder 'cuda' needs a CUDA device and torch sees none; use decoder 'pil' "
                        "(files decoded by PIL in DataLoader workers)")
    return str(decoder)


def _bytes(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8)  # a writable copy: frombuffer warns on bytes


def _on_cpu(blob: bytes, what: str, size: int, mode: str) -> torch.Tensor:
    """uint8 (C, H, W) by torchvision.io.decode_image; PIL (already fitted) for what it cannot read."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        img = decode_image(_bytes(blob), mode=ImageReadMode.GRAY if mode == "L" else ImageReadMode.RGB)
        if img.dtype == torch.uint8:
            return img
    except (RuntimeError, ValueError):  # a format torchvision's decoders lack (BMP, TIFF...): PIL's turn
        pass
    return torch.from_numpy(decode(blob, size, mode, what)).permute(2, 0, 1)


def fit(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, C, H, W) -> (B, C, size, size): the centred square of side min(H, W), resized
    (bilinear, antialiased when shrinking), as PIL's `ImageOps.fit` does."""
    h, w = images.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = images[..., top : top + s, left : left + s]
    if s == size:
        return square
    x = torch.nn.functional.interpolate(square.float(), size=(size, size), mode="bilinear", align_corners=False,
                                        antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def decode_on(blobs: list[tuple[bytes, str]], size: int, mode: str, device: str | torch.device) -> torch.Tensor:
    """uint8 (n, C, size, size) on `device` from `(encoded bytes, name for errors)`: the JPEGs by
    one batched `torchvision.io.decode_jpeg(device=...)` (nvjpeg on CUDA; one by one, then on the
    CPU, for any it rejects), the other formats on the CPU by `torchvision.io.decode_image` (PIL
    where torchvision cannot), each fitted to size x size on the device."""
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    read_mode = ImageReadMode.GRAY if mode == "L" else ImageReadMode.RGB
    images: list[torch.Tensor | None] = [None] * len(blobs)
    jpegs = [i for i, (b, _) in enumerate(blobs) if bytes(b[:3]) == JPEG_MAGIC]
    if jpegs:
        datas = [_bytes(blobs[i][0]) for i in jpegs]
        try:
            decoded = list(decode_jpeg(datas, mode=read_mode, device=device))
        except RuntimeError:  # one bad file fails the batch: find it (and decode it elsewhere)
            decoded = [_one_jpeg(d, read_mode, device) for d in datas]
        for i, im in zip(jpegs, decoded, strict=True):
            images[i] = im
    for i, (b, what) in enumerate(blobs):
        if images[i] is None:
            images[i] = _on_cpu(b, what, size, mode).to(device)
    out = torch.empty(len(blobs), 1 if mode == "L" else 3, size, size, dtype=torch.uint8, device=device)
    shapes: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        shapes.setdefault(tuple(im.shape), []).append(i)  # type: ignore[union-attr]
    for at in shapes.values():  # one resize per distinct shape
        out[torch.tensor(at, device=device)] = fit(torch.stack([images[i] for i in at]), size)
    return out


def _one_jpeg(data: torch.Tensor, read_mode, device: torch.device) -> torch.Tensor | None:
    from torchvision.io import decode_jpeg

    try:
        return decode_jpeg(data, mode=read_mode, device=device)
    except RuntimeError:
        return None  # decoded on the CPU instead (or named there, if no decoder can read it)
