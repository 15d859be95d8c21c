"""Video in the data pipeline: the moving-digits dataset (fixed, deterministic, classes that
only the order of the frames tells apart), clips through splits, batches and Augment, and
MixUp/CutMix on (B, C, T, H, W) batches."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from lab.data import Augment, Dataset, load_dataset, moving
from lab.data.dataset import channel_stats
from lab.data.load import _mnist5k, _moving_digits
from lab.errors import DataError
from lab.train.mix import Mix, Mixer
from support import load



@pytest.fixture(scope="module")
def generated() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clips, path classes, digit labels) of all 5000 mnist5k digits, as the loader makes them."""
    clips, paths, _ = _moving_digits()
    return clips, paths, _mnist5k()[1]


def centroids(clips: torch.Tensor) -> torch.Tensor:
    """(N, T, 2) intensity centroids (x, y) of (N, 1, T, S, S) clips; y grows downward."""
    x = clips[:, 0].double()
    r = torch.arange(x.shape[-1], dtype=torch.float64)
    mass = x.sum((-1, -2))
    return torch.stack([(x.sum(-2) * r).sum(-1) / mass, (x.sum(-1) * r).sum(-1) / mass], -1)


def signed_area(c: torch.Tensor) -> torch.Tensor:
    """Shoelace area of each closed centroid path (N,): positive is clockwise on screen (y down)."""
    x, y = c[..., 0], c[..., 1]
    return 0.5 * (x * y.roll(-1, 1) - x.roll(-1, 1) * y).sum(1)


def direction(k: int) -> torch.Tensor:
    a = k * math.pi / 4
    return torch.tensor([math.cos(a), math.sin(a)], dtype=torch.float64)


# ---------------------------------------------------------------- generation


def test_generation_is_deterministic_fast_and_shaped(generated):
    clips, paths, _ = generated
    digits, labels, _ = _mnist5k()
    assert clips.shape == (5000, 1, 16, 32, 32) and clips.dtype == torch.uint8 and clips.is_contiguous()
    assert paths.shape == (5000,) and paths.dtype == torch.int64
    start = time.perf_counter()
    again, again_paths = moving.generate(digits, labels)
    assert time.perf_counter() - start < 3  # ~0.1 s; a loop over clips would take far longer
    twice, twice_paths = moving.generate(digits, labels)
    assert torch.equal(again, twice) and torch.equal(again_paths, twice_paths)  # same seed, same bytes
    other, _ = moving.generate(digits, labels, seed=1)
    assert not torch.equal(other, again)
    assert len(moving.CLASSES) == 10 and moving.CLASSES[0] == "right" and moving.CLASSES[8] == "clockwise"


def test_path_classes_are_balanced_per_digit_and_independent_of_it(generated):
    _, paths, labels = generated
    assert torch.bincount(paths).tolist() == [500] * 10
    joint = torch.bincount(labels * 10 + paths, minlength=100).reshape(10, 10)
    assert bool((joint == 50).all())  # every digit takes every path 50 times


def test_clip_i_is_digit_i_never_clipped(generated):
    clips, _, _ = generated
    digits, _, _ = _mnist5k()
    small = F.avg_pool2d(digits.float(), 2).round().to(torch.uint8)  # (N, 1, 14, 14)
    # on every frame, all of the digit's lit pixels are in the frame
    lit = (clips[:, 0] != 0).sum((-1, -2))  # (N, T)
    assert torch.equal(lit, (small[:, 0] != 0).sum((-1, -2))[:, None].expand_as(lit))
    assert torch.equal(clips.sum((-1, -2), dtype=torch.int64)[:, 0], small.sum((-1, -2), dtype=torch.int64)[:, 0, None].expand(-1, 16))
    # and it is that digit, unchanged, at some integer position
    for i in (0, 1234, 4999):
        for t in (0, 7, 15):
            frame = clips[i, 0, t]
            found = [(y, x) for y in range(19) for x in range(19) if torch.equal(frame[y : y + 14, x : x + 14], small[i, 0])]
            assert found and int(frame.sum()) == int(small[i].sum())


def test_lines_move_in_their_class_direction(generated):
    clips, paths, _ = generated
    c = centroids(clips)
    step = c[:, 1:] - c[:, :-1]  # (N, T-1, 2)
    velocity = step.mean(1)
    for k in range(8):
        mine = paths == k
        v = velocity[mine]
        cos = v @ direction(k) / v.norm(dim=1)
        assert float(cos.min()) > 0.99, moving.CLASSES[k]
        assert bool((step[mine] @ direction(k) >= 0).all())  # never steps backwards
        assert float((v.norm(dim=1) * 15).min()) >= 9 - 1e-9  # travels at least half the room
    assert float(signed_area(c[paths < 8]).abs().max()) < 20  # straight: hardly any area


def test_circles_turn_their_way(generated):
    clips, paths, _ = generated
    area = signed_area(centroids(clips))
    assert float(area[paths == 8].min()) > 50  # clockwise on screen (rows grow downward)
    assert float(area[paths == 9].max()) < -50


def test_mirror_classes_differ_only_in_temporal_order():
    n = 200
    for k, mirror in ((0, 4), (1, 5), (2, 6), (3, 7), (8, 9)):
        a = moving._paths(torch.full((n,), k), 18, 16, torch.Generator().manual_seed(3))
        b = moving._paths(torch.full((n,), mirror), 18, 16, torch.Generator().manual_seed(3))
        assert torch.equal(a.flip(1), b), (k, mirror)
    # and on rendered clips: a right-moving clip played backwards moves left
    digits, _, _ = _mnist5k()
    clips, paths = moving.generate(digits[:100])
    back = clips[paths == 0].flip(2)
    v = (centroids(back)[:, -1] - centroids(back)[:, 0])
    assert float((v @ direction(4) / v.norm(dim=1)).min()) > 0.99


def test_generate_rejects_bad_input():
    digits = _mnist5k()[0][:10]
    for kwargs, word in (({"frames": 1}, "frames"), ({"size": 15}, "size"), ({"groups": torch.zeros(3)}, "groups")):
        with pytest.raises(DataError, match=word):
            moving.generate(digits, **kwargs)
    with pytest.raises(DataError, match="uint8 digits"):
        moving.generate(digits.float())


# ---------------------------------------------------------------- the dataset


def test_moving_digits_dataset_keeps_mnist5k_splits():
    ds, digits = load("moving-digits"), load("mnist5k")
    assert (ds.num_classes, ds.in_chans, ds.image_size, ds.frames, ds.hflip) == (10, 1, 32, 16, False)
    assert ds.classes == moving.CLASSES and digits.frames == 1
    for a, b in zip((ds.train, ds.val, ds.test), (digits.train, digits.val, digits.test)):
        assert torch.equal(a.indices, b.indices)
    assert ds.train.images.shape == (4000, 1, 16, 32, 32) and ds.train.images.dtype == torch.uint8
    for split, n in ((ds.train, 400), (ds.val, 50), (ds.test, 50)):
        assert torch.bincount(split.labels).tolist() == [n] * 10
    assert "1x16x32x32" in repr(ds) and "1x28x28" in repr(digits)
    assert load_dataset("moving-digits", size=64).image_size == 32  # a fixed-size builtin keeps its size
    with pytest.raises(DataError, match="no ':' argument"):
        load_dataset("moving-digits:3")


def test_channel_stats_over_all_frames():
    ds = load("moving-digits")
    assert (ds.mean, ds.std) == channel_stats(ds.train.images)
    mean, std = channel_stats(ds.val.images)
    x = ds.val.images.double() / 255
    assert mean[0] == pytest.approx(float(x.mean()), abs=1e-9) and std[0] == pytest.approx(float(x.std(unbiased=False)), abs=1e-9)
    two = torch.randint(0, 256, (5, 2, 3, 4, 4), dtype=torch.uint8)
    mean, _ = channel_stats(two)
    assert mean == pytest.approx([float(two[:, c].double().mean() / 255) for c in range(2)])


def test_fractions_are_stratified_and_nested():
    full = load("moving-digits")
    tenth = load("moving-digits", fraction=0.1, seed=1)
    quarter = load("moving-digits", fraction=0.25, seed=1)
    assert tenth.n_train == 400 and torch.bincount(tenth.train.labels).tolist() == [40] * 10
    assert set(tenth.train.indices.tolist()) <= set(quarter.train.indices.tolist())
    assert torch.equal(tenth.val.indices, full.val.indices) and tenth.frames == 16
    assert torch.equal(full.with_fraction(0.1, 1).train.indices, tenth.train.indices)
    assert torch.equal(full.with_fraction(0.1, 1).train.images, tenth.train.images)
    shots = full.with_shots(5, seed=0)
    assert shots.train.images.shape == (50, 1, 16, 32, 32) and shots.frames == 16


def test_batches_serve_clips():
    ds = load("moving-digits")
    seen = []
    for images, labels in ds.val.batches(64, shuffle=True, seed=0, epoch=0):
        assert images.shape[1:] == (1, 16, 32, 32) and images.dtype == torch.uint8 and len(labels) == len(images)
        seen.append(images)
    assert sum(len(b) for b in seen) == 500
    images, labels = next(iter(ds.val.batches(8, shuffle=False)))
    assert torch.equal(images, ds.val.images[:8]) and torch.equal(labels, ds.val.labels[:8])


# ---------------------------------------------------------------- augmenting clips


def raw(out: torch.Tensor, ds: Dataset) -> torch.Tensor:
    """Augment's output back in uint8 pixel units."""
    return ((out * ds.std[0] + ds.mean[0]) * 255).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("crop", ["pad", "rrc", "resize", "none"])
@pytest.mark.parametrize("res, frames", [(32, None), (28, 8), (48, 4)])
def test_augment_clip_shapes_and_determinism(crop, res, frames):
    ds = load("moving-digits")
    x = ds.train.images[:12]
    f = frames or 16
    aug = Augment(ds, res=res, train=True, crop=crop, flip=True, frames=frames)
    a = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == (12, 1, f, res, res) and a.dtype == torch.float32 and a.is_contiguous()
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(2)))
    ev = Augment(ds, res=res, train=False, frames=frames)
    e = ev(x)
    assert e.shape == (12, 1, f, res, res) and torch.equal(e, ev(x))
    assert f"frames={f}" in repr(aug) and f"frames={f}" in repr(ev)


def test_eval_normalizes_every_frame():
    ds = load("moving-digits")
    x = ds.val.images[:4]
    want = (x.float() / 255 - ds.mean[0]) / ds.std[0]
    torch.testing.assert_close(Augment(ds, res=32, train=False)(x), want)


@pytest.mark.parametrize("crop", ["pad", "rrc", "resize", "none"])
def test_one_spatial_draw_per_clip(crop):
    ds = load("moving-digits")
    # clips whose frames are all the same image: every output frame must be the same too
    still = ds.train.images[:32, :, :1].expand(-1, -1, 16, -1, -1).contiguous()
    out = Augment(ds, res=28, crop=crop, flip=True)(still, torch.Generator().manual_seed(0))
    assert torch.equal(out, out[:, :, :1].expand_as(out))
    # the clips differ from each other (the draws are per clip, not per batch)
    assert len({raw(o[:, 0], ds).numpy().tobytes() for o in out}) > 20


def test_pad_crop_moves_all_frames_by_one_offset():
    ds = load("moving-digits")
    pad, n = 4, 8
    x = torch.randint(1, 256, (n, 1, 16, 32, 32), dtype=torch.uint8)  # no zeros: zeros are padding
    out = raw(Augment(ds, res=32, crop="pad", pad=pad, flip=False)(x, torch.Generator().manual_seed(0)), ds)
    padded = F.pad(x, (pad,) * 4)
    offsets = set()
    for i in range(n):
        found = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) if torch.equal(out[i], padded[i, :, :, dy : dy + 32, dx : dx + 32])]
        assert len(found) == 1  # one window fits all 16 frames at once
        offsets.add(found[0])
    assert len(offsets) > 2


@pytest.mark.parametrize("frames", [1, 4, 5, 8, 16, 20])
def test_frame_subsampling_keeps_linspace_frames(frames):
    ds = load("moving-digits")
    x = torch.arange(16, dtype=torch.uint8)[None, None, :, None, None].expand(3, 1, 16, 32, 32).contiguous()  # frame t is t
    want = torch.linspace(0, 15, frames).round().long()
    for train in (False, True):
        out = raw(Augment(ds, res=32, train=train, crop="none", frames=frames)(x, torch.Generator().manual_seed(0)), ds)
        assert out.shape == (3, 1, frames, 32, 32)
        assert torch.equal(out[:, 0, :, 16, 16].long(), want.expand(3, -1))
    if frames == 5:
        assert want.tolist() == [0, 4, 8, 11, 15]


def test_augment_clip_errors():
    ds, images = load("moving-digits"), load("mnist5k")
    with pytest.raises(DataError, match=r"\(B, C, T, H, W\) = \(B, 1, 16, H, W\)"):
        Augment(ds)(ds.train.images[:2, :, 0])  # a frame is not a clip
    with pytest.raises(DataError, match="uint8 clips"):
        Augment(ds)(ds.train.images[:2, :, :8])  # a clip of other length
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(DataError, match="frames must be a positive integer"):
            Augment(ds, frames=bad)
    with pytest.raises(DataError, match="video dataset"):
        Augment(images, frames=4)
    assert Augment(images, frames=1)(images.train.images[:2]).shape == (2, 1, 32, 32)  # frames=1 on images: allowed


# ---------------------------------------------------------------- MixUp / CutMix on clips


def test_cutmix_pastes_one_box_into_every_frame():
    b, t = 6, 5
    x = torch.rand(b, 2, t, 12, 10)
    labels = torch.arange(b)
    mixer = Mixer(b, mixup_alpha=0.0, cutmix_alpha=1.0, smoothing=0.0)
    mixed, targets = mixer.apply(x, labels, Mix(0.75, (2, 8, 1, 6)))
    inside = torch.zeros(12, 10, dtype=torch.bool)
    inside[2:8, 1:6] = True
    assert torch.equal(mixed[..., inside], x.flip(0)[..., inside])  # every frame, every channel
    assert torch.equal(mixed[..., ~inside], x[..., ~inside])
    assert torch.allclose(targets.sum(1), torch.ones(b)) and float(targets[0, 0]) == 0.75
    # drawn through __call__: the box is on the last two dims
    mixed, _ = mixer(x, labels, torch.Generator().manual_seed(0))
    changed = (mixed != x).any(0).any(0)  # (T, H, W)
    assert changed.any() and bool((changed == changed[:1]).all())


def test_mixup_on_clips_and_shape_errors():
    x = torch.rand(4, 1, 3, 8, 8)
    mixer = Mixer(4, mixup_alpha=0.8, cutmix_alpha=0.0)
    mixed, _ = mixer.apply(x, torch.arange(4), Mix(0.6))
    torch.testing.assert_close(mixed, 0.6 * x + 0.4 * x.flip(0))
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        mixer.apply(torch.rand(4, 8, 8), torch.arange(4), Mix(0.6))
