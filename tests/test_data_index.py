"""The index cache of imagefolder/parquet datasets (headers read once, a changed folder rebuilds,
a bad cache is ignored), decoding in workers, and the torchvision/CUDA decoder (run on the CPU up
to the device: the device argument is swapped for "cpu" where CUDA would be)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch

import lab.data.decode as decode
import lab.data.imagefolder as imagefolder
import lab.data.index as index
import lab.data.split as split
from lab.data import load_dataset
from lab.errors import DataError

PIL = pytest.importorskip("PIL.Image")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    PIL.fromarray(array).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def make_folder(root, classes=("a", "b", "c"), per_class=8, side=8, fmt="PNG", seed=0) -> str:
    rng = np.random.default_rng(seed)
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    for c in classes:
        os.makedirs(root / c / "sub", exist_ok=True)
        for i in range(per_class):
            where = root / c / ("sub" if i % 3 == 0 else "") / f"{i:02d}.{ext}"  # nested folders too
            where.write_bytes(encode(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), fmt))
    return str(root)


@pytest.fixture
def headers_read(monkeypatch, tmp_path):
    """The number of image headers read so far (a list, to be read after loads); the home cache in tmp."""
    monkeypatch.setenv("LAB_HOME", str(tmp_path / "home"))
    calls: list[str] = []
    real = decode.header

    def counting(src, what):
        calls.append(what)
        return real(src, what)

    monkeypatch.setattr(decode, "header", counting)
    return calls


def same(a, b) -> bool:
    return all(torch.equal(getattr(a, s).labels, getattr(b, s).labels) and torch.equal(getattr(a, s).images, getattr(b, s).images)
               for s in ("train", "val", "test"))


def test_index_is_written_once_and_then_no_header_is_read(tmp_path, headers_read):
    root = make_folder(tmp_path / "data")
    first = load_dataset(f"imagefolder:{root}")
    assert len(headers_read) == 24 and os.path.isfile(os.path.join(root, index.NAME))
    table = pq.read_table(os.path.join(root, index.NAME))
    assert table.num_rows == 24 and table.column("path")[0].as_py() == "a/01.png"  # files first, then sub/
    headers_read.clear()
    again = load_dataset(f"imagefolder:{root}")
    assert headers_read == [] and same(first, again) and again.classes == ("a", "b", "c")


def test_a_changed_folder_reads_only_the_changed_headers(tmp_path, headers_read):
    root = tmp_path / "data"
    make_folder(root)
    load_dataset(f"imagefolder:{root}")
    rng = np.random.default_rng(1)
    (root / "a" / "new.png").write_bytes(encode(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))  # added
    os.remove(root / "b" / "02.png")  # removed
    (root / "c" / "01.png").write_bytes(encode(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)))  # changed size
    headers_read.clear()
    with pytest.raises(DataError, match="not all squares of one size"):  # the new header was read
        load_dataset(f"imagefolder:{root}")
    assert sorted(os.path.basename(w) for w in headers_read) == ["01.png", "new.png"]
    ds = load_dataset(f"imagefolder:{root}", size=8)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 24
    mtime = os.stat(root / "a" / "04.png").st_mtime_ns
    os.utime(root / "a" / "04.png", ns=(mtime + 10**9, mtime + 10**9))  # touched: same size, new mtime
    headers_read.clear()
    load_dataset(f"imagefolder:{root}", size=8)
    assert [os.path.basename(w) for w in headers_read] == ["04.png"]


def test_a_corrupt_cache_is_ignored_with_one_warning_line_and_rebuilt(tmp_path, headers_read, capsys):
    root = make_folder(tmp_path / "data")
    want = load_dataset(f"imagefolder:{root}")
    cache = os.path.join(root, index.NAME)
    with open(cache, "r+b") as f:
        f.truncate(os.path.getsize(cache) // 2)
    capsys.readouterr()
    headers_read.clear()
    got = load_dataset(f"imagefolder:{root}")
    err = capsys.readouterr().err
    assert same(want, got) and len(headers_read) == 24
    assert err.count("\n") == 1 and err.startswith("lab: warning: ignoring the unreadable index cache") and cache in err
    headers_read.clear()
    load_dataset(f"imagefolder:{root}")
    assert headers_read == [] and capsys.readouterr().err == ""  # rewritten, good again


def test_an_unwritable_folder_caches_in_lab_home_and_no_cache_at_all_is_one_warning(tmp_path, headers_read, capsys,
                                                                                      monkeypatch):
    root = make_folder(tmp_path / "data")
    real = index._write
    blocked = [root]

    def write(file, owner, listing, heads):
        if any(file.startswith(b) for b in blocked):
            raise PermissionError(13, "Permission denied")
        real(file, owner, listing, heads)

    monkeypatch.setattr(index, "_write", write)
    load_dataset(f"imagefolder:{root}")
    home = index.home_cache(root, ".parquet")
    assert home.startswith(str(tmp_path / "home" / "cache")) and os.path.isfile(home)
    assert not os.path.exists(os.path.join(root, index.NAME)) and capsys.readouterr().err == ""
    headers_read.clear()
    load_dataset(f"imagefolder:{root}")
    assert headers_read == []
    other = make_folder(tmp_path / "other")
    blocked += [other, str(tmp_path / "home")]
    load_dataset(f"imagefolder:{other}")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"lab: warning: cannot write the index cache of {other}")


def test_a_home_cache_of_another_folder_is_not_used(tmp_path, headers_read):
    a, b = make_folder(tmp_path / "a"), make_folder(tmp_path / "b", per_class=5)
    load_dataset(f"imagefolder:{a}")
    os.makedirs(os.path.dirname(index.home_cache(b, ".parquet")), exist_ok=True)
    os.replace(os.path.join(a, index.NAME), index.home_cache(b, ".parquet"))  # names root None: not b's
    headers_read.clear()
    load_dataset(f"imagefolder:{b}")
    assert len(headers_read) == 15


def test_parquet_headers_are_cached_and_a_changed_file_rescans(tmp_path, headers_read):
    rng = np.random.default_rng(0)
    blobs = [encode(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)) for _ in range(12)]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"image": pa.array(blobs, pa.binary()), "label": pa.array([0, 1, 2] * 4)}), path)
    first = load_dataset(f"parquet:{path}")
    assert len(headers_read) == 12 and os.path.isfile(tmp_path / ".d.parquet.lab-index.json")
    headers_read.clear()
    assert same(first, load_dataset(f"parquet:{path}")) and headers_read == []
    pq.write_table(pa.table({"image": pa.array(blobs[:9], pa.binary()), "label": pa.array([0, 1, 2] * 3)}), path)
    load_dataset(f"parquet:{path}")
    assert len(headers_read) == 9


def test_worker_processes_decode_the_same_tensors_as_this_process(tmp_path):
    root = make_folder(tmp_path / "data", per_class=10, fmt="JPEG")
    ds = load_dataset(f"imagefolder:{root}", memory_budget=0)
    assert not ds.train.in_memory
    inline = list(ds.train.batches(7, shuffle=True, seed=3, workers=0))
    workers = list(ds.train.batches(7, shuffle=True, seed=3, workers=2))
    direct = ds.train.reader.read(ds.train.indices.tolist())
    assert len(inline) == len(workers) == 4
    assert all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(inline, workers))
    order = split.order(len(ds.train), True, 3, 0)
    assert torch.equal(torch.cat([x for x, _ in workers]), direct[order])


def test_cuda_decoder_is_refused_in_one_line_without_cuda(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DataError, match="decoder 'cuda' needs a CUDA device") as err:
        load_dataset(f"imagefolder:{root}", decoder="cuda")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="decoder must be one of pil, cuda"):
        load_dataset(f"imagefolder:{root}", decoder="nvjpeg")


def test_lab_train_decoder_cuda_without_cuda_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    from lab.cli.main import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    root = make_folder(tmp_path / "data")
    assert main(["train", "@8 | conv(c=4,k=3),bn,relu | gap,fc", "--dataset", f"imagefolder:{root}", "--decoder", "cuda",
                 "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lab: error:") and "decoder 'cuda' needs a CUDA device" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_decode_on_device_batches_jpegs_and_falls_back_for_other_formats(monkeypatch):
    from torchvision.io import decode_jpeg

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((8, 8, 3), (8, 8, 3), (12, 16, 3), (8, 8, 3))]
    blobs = [(encode(a, "JPEG"), f"{i}.jpg") for i, a in enumerate(arrays[:3])] + [(encode(arrays[3]), "3.png")]
    seen = []
    real = decode_jpeg
    monkeypatch.setattr("torchvision.io.decode_jpeg", lambda data, mode, device: seen.append((len(data), str(device)))
                        or real(data, mode=mode, device=device))
    out = decode.decode_on(blobs, 8, "RGB", "cpu")
    assert out.shape == (4, 3, 8, 8) and out.dtype == torch.uint8 and seen == [(3, "cpu")]  # one batched call
    for i in (0, 1):
        assert torch.equal(out[i], decode_jpeg(torch.frombuffer(bytearray(blobs[i][0]), dtype=torch.uint8)))
    assert torch.equal(out[3], torch.from_numpy(arrays[3]).permute(2, 0, 1))  # PNG: lossless, exact
    # 12x16 -> the centred 12x12, resized to 8x8: as PIL's ImageOps.fit, up to JPEG/rounding noise
    pil = torch.from_numpy(decode.decode(blobs[2][0], 8, "RGB", "x").copy()).permute(2, 0, 1)
    assert (out[2].int() - pil.int()).abs().float().mean() < 3
    with pytest.raises(DataError, match=r"bad\.jpg: cannot decode image"):
        decode.decode_on([*blobs, (b"\xff\xd8\xff" + b"\0" * 50, "bad.jpg")], 8, "RGB", "cpu")


def test_cuda_decoder_streams_bytes_from_workers_and_decodes_in_this_process(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_folder(root, per_class=6, fmt="JPEG")
    (root / "a" / "x.png").write_bytes(encode(np.zeros((8, 8, 3), np.uint8)))
    pil = load_dataset(f"imagefolder:{root}", memory_budget=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    devices: list[str] = []
    real = decode.decode_on

    def on_cpu(blobs, size, mode, device):  # everything but the device: the CUDA call itself
        devices.append(str(device))
        assert all(isinstance(b, bytes) and isinstance(w, str) for b, w in blobs)
        return real(blobs, size, mode, "cpu")

    monkeypatch.setattr(split, "decode_on", on_cpu)
    monkeypatch.setattr(imagefolder, "decode_on", on_cpu)
    ds = load_dataset(f"imagefolder:{root}", memory_budget=0, decoder="cuda")
    assert ds.train.reader.decoder == "cuda" and devices == ["cuda"]  # the stats sample
    got = list(ds.train.batches(5, shuffle=True, seed=1, workers=2))
    want = list(pil.train.batches(5, shuffle=True, seed=1, workers=0))
    assert devices[1:] == ["cuda"] * len(want) and len(got) == len(want)
    for (x, u), (y, v) in zip(got, want):
        assert torch.equal(u, v) and x.shape == y.shape and (x.int() - y.int()).abs().float().mean() < 2


def test_a_broken_link_in_the_folder_is_one_line_naming_it(tmp_path, headers_read):
    root = make_folder(tmp_path / "data")
    os.symlink(tmp_path / "gone.png", tmp_path / "data" / "b" / "zz.png")
    with pytest.raises(DataError, match=r"b/zz.png: cannot read \(No such file"):
        load_dataset(f"imagefolder:{root}")
