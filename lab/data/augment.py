"""Batched, on-device augmentation of uint8 images (or video clips) into normalized float32 at a
resolution.

Every random choice is one draw of a (B,)-shaped tensor from the caller's generator; pixels move
by one gather or one `roi_align` for the whole batch, never by a Python loop over samples. Clips
(B, C, T, H, W) go through the same path with their frames folded into channels, so a clip's
frames share every spatial choice (crop window, flip, rrc box).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lab.errors import DataError

CROPS = ("pad", "rrc", "resize", "none")
RESIZE_RATIO = 8 / 7  # BiT/ImageNet style: resize to ~1.14 x res, then crop res (256 -> 224)


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) draws from `generator` (wherever it lives), delivered on `device`."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def _crop(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, size: int, flip: torch.Tensor | None) -> torch.Tensor:
    """Per-sample size x size windows of x (B, C, H, W) at integer offsets (oy, ox), mirrored
    where `flip`: one gather over the flattened pixels, exact for any dtype."""
    b, c, h, w = x.shape
    r = torch.arange(size, device=x.device)
    rows = oy[:, None] + r  # (B, size)
    cols = ox[:, None] + (r if flip is None else torch.where(flip[:, None], size - 1 - r, r))
    index = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, 1, size * size).expand(b, c, size * size)
    return x.reshape(b, c, h * w).gather(2, index).reshape(b, c, size, size)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.float()
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class Augment:
    """`Augment(ds, res, train)(images_uint8, generator) -> float32 (B, C, res, res)`, normalized
    by the dataset's mean/std, on the images' device.

    Training crops: "pad" (CIFAR: zero-pad by `pad`, random res x res window), "rrc"
    (random-resized crop: area fraction in `scale`, aspect ratio in `ratio`, resampled to res with
    antialiasing), "resize" (BiT: resize to res*8/7, random res x res window), "none". Images
    stored at a size other than res are resized to res first ("pad", "none"). `flip` (None: the
    dataset's `hflip`) mirrors half of the images. Evaluation (train=False) only resizes to res
    and normalizes: deterministic.

    Video datasets (`ds.frames` T > 1): uint8 clips (B, C, T, H, W) -> float32 (B, C, F, res, res)
    with F = `frames` (None: T). For F != T the frames `linspace(0, T-1, F).round()` are kept, the
    same in training and evaluation (F > T repeats frames). One spatial draw per clip: all its
    frames get the same crop and flip.
    """

    def __init__(
        self,
        ds,
        res: int = 32,
        train: bool = True,
        crop: str = "pad",
        pad: int = 4,
        flip: bool | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        frames: int | None = None,
    ):
        if isinstance(res, bool) or not isinstance(res, int) or res < 1:
            raise DataError(f"augment: res must be a positive integer, got {res!r}")
        if crop not in CROPS:
            raise DataError(f"augment: unknown crop {crop!r} (known: {', '.join(CROPS)})")
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise DataError(f"augment: pad must be a non-negative integer, got {pad!r}")
        if not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
            raise DataError(f"augment: scale must be (lo, hi) with 0 < lo <= hi <= 1, got {scale!r}")
        if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
            raise DataError(f"augment: ratio must be (lo, hi) with 0 < lo <= hi, got {ratio!r}")
        clip = getattr(ds, "frames", 1)  # T: frames per stored clip, 1 for images
        if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
            raise DataError(f"augment: frames must be a positive integer, got {frames!r}")
        if clip == 1 and frames not in (None, 1):
            raise DataError(f"augment: frames={frames} needs a video dataset "
                            f"({getattr(ds, 'name', 'this dataset')} holds single images)")
        self.res, self.train, self.crop, self.pad = res, train, crop, pad
        self.flip = ds.hflip if flip is None else bool(flip)
        self.scale, self.ratio = (float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1]))
        self.size, self.in_chans = ds.image_size, ds.in_chans
        self.clip, self.frames = clip, clip if frames is None else frames
        # the kept frames of a clip (None: all of them, or images)
        self._pick = None if self.frames == clip else torch.linspace(0, clip - 1, self.frames).round().long()
        std = torch.tensor(ds.std, dtype=torch.float32)
        # (x/255 - mean) / std as one multiply-add; clips fold frames into channels: (C*F,) constants
        self._mul = (1 / (255 * std)).reshape(1, -1, 1, 1)
        self._add = (-torch.tensor(ds.mean, dtype=torch.float32) / std).reshape(1, -1, 1, 1)
        if clip > 1:
            self._mul, self._add = self._mul.repeat_interleave(self.frames, 1), self._add.repeat_interleave(self.frames, 1)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._picks: dict[torch.device, torch.Tensor] = {}

    def __repr__(self) -> str:
        frames = f", frames={self.frames}" if self.clip > 1 else ""
        if not self.train:
            return f"Augment(eval, res={self.res}{frames})"
        extra = {"pad": f", pad={self.pad}",
                 "rrc": f", scale={self.scale}, ratio={tuple(round(r, 3) for r in self.ratio)}"}.get(self.crop, "")
        return f"Augment(train, res={self.res}{frames}, crop={self.crop}{extra}, flip={self.flip})"

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._on:
            self._on[x.device] = (self._mul.to(x.device), self._add.to(x.device))
        mul, add = self._on[x.device]
        return torch.addcmul(add, x.float(), mul).contiguous()

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.clip > 1:
            return self._clips(images, generator)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != self.in_chans:
            raise DataError(
                f"augment: expected uint8 images (B, {self.in_chans}, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        return self._images(images, generator)

    def _clips(self, clips: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C, F, res, res): the kept frames folded into channels, through
        the image path (one spatial draw per clip), unfolded."""
        if clips.dtype != torch.uint8 or clips.ndim != 5 or clips.shape[1:3] != (self.in_chans, self.clip):
            raise DataError(
                f"augment: expected uint8 clips (B, C, T, H, W) = (B, {self.in_chans}, {self.clip}, H, W), "
                f"got {clips.dtype} {tuple(clips.shape)}"
            )
        if self._pick is not None:
            if clips.device not in self._picks:
                self._picks[clips.device] = self._pick.to(clips.device)
            clips = clips.index_select(2, self._picks[clips.device])
        b, c, f, h, w = clips.shape
        x = self._images(clips.reshape(b, c * f, h, w), generator)
        return x.reshape(b, c, f, self.res, self.res)

    def _images(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B, C', H, W) uint8 -> (B, C', res, res) float32, normalized (C' = C, or C * F for clips)."""
        if not self.train:
            return self._normalize(_resize(images, self.res))
        b, dev = images.shape[0], images.device
        flip = _rand((b,), generator, dev) < 0.5 if self.flip else None
        if self.crop == "rrc":
            x = self._rrc(images, generator)
            if flip is not None:
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            return self._normalize(x)
        if self.crop == "none":
            x = _resize(images, self.res)
            return self._normalize(x if flip is None else torch.where(flip[:, None, None, None], x.flip(-1), x))
        # "pad": windows of the zero-padded image; "resize": windows of the enlarged image
        if self.crop == "pad":
            x = images if images.shape[-1] == self.res else _resize(images, self.res)
            x, room = F.pad(x, (self.pad,) * 4), 2 * self.pad
        else:
            big = max(self.res, round(self.res * RESIZE_RATIO))
            x, room = _resize(images, big), big - self.res
        oy, ox = ((_rand((2, b), generator, dev) * (room + 1)).long().clamp(max=room))
        return self._normalize(_crop(x, oy, ox, self.res, flip))

    def _rrc(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Random-resized crop as torchvision draws it (10 tries at a box of the drawn area and
        aspect that fits, else the whole image clamped to the ratio range), but with sub-pixel
        boxes, resampled by one antialiased `roi_align` (adaptive samples per output pixel)."""
        from torchvision.ops import roi_align

        b, _, h, w = images.shape
        dev = images.device
        tries = 10
        u = _rand((4, b, tries), generator, dev)
        area = h * w * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0])
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(lo + (hi - lo) * u[1])
        bw, bh = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
        ok = (bw <= w) & (bh <= h)
        first = ok.to(torch.uint8).argmax(1, keepdim=True)  # first fitting try
        bw, bh = bw.gather(1, first)[:, 0], bh.gather(1, first)[:, 0]
        # fallback (no try fits): the whole image, cut to the ratio range, centred
        if w / h < self.ratio[0]:
            fw, fh = float(w), w / self.ratio[0]
        elif w / h > self.ratio[1]:
            fw, fh = h * self.ratio[1], float(h)
        else:
            fw, fh = float(w), float(h)
        fits = ok.any(1)
        bw = torch.where(fits, bw, torch.full_like(bw, fw))
        bh = torch.where(fits, bh, torch.full_like(bh, fh))
        x0 = (w - bw) * torch.where(fits, u[2, :, 0], 0.5)
        y0 = (h - bh) * torch.where(fits, u[3, :, 0], 0.5)
        boxes = torch.stack([torch.arange(b, device=dev, dtype=bw.dtype), x0, y0, x0 + bw, y0 + bh], 1)
        return roi_align(images.float(), boxes, output_size=self.res, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
