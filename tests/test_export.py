"""Models out of the lab: `lab export` in each format (logits equal to the model's, normalization carried),
and the weights a study keeps (its Pareto set, the top k, a disk cap), on synthetic rows and in a live study."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnxruntime
import pytest
import torch

import lab
from lab.build import build
from lab.catalog import resolve
from lab.errors import LabError, StudyError
from lab.grammar import parse
from lab.interop import export as exp
from lab.study.config import StudyConfig
from lab.study.runner import create
from lab.study.store import StudyStore
from lab.study.weights import (
    KeepPolicy,
    WeightKeeper,
    choose,
    parse_metric,
    read_index,
    trial_weights,
    wanted,
    weights_file,
)
from lab.train.checkpoint import load_checkpoint
from tests.support import run_cli

# one point of each family, tiny (28-32 px, a quarter of the width): random weights, no training
POINTS = {
    "conv": "resnet18@32px,w=0.25,d=0.5",
    "vit": "vit_ti16@32px,w=0.25,d=0.25,p=8",
    "swin": "swin_t@32px,w=0.25,d=0.25",
    "mixer": "mixer_s16@32px,w=0.25,d=0.25,p=8",
    "nat": "nat_mini@32px,w=0.25,d=0.25",
    "hybrid": "vit_r50_b16_384@32px,w=0.25,d=0.25",
    "video": "video_swin_t@4x32px,w=0.25,d=0.25",
}
MEAN, STD = [0.3, 0.45, 0.6], [0.2, 0.25, 0.3]
_models: dict[str, tuple] = {}


def _model(family: str) -> tuple[torch.nn.Module, dict]:
    if family not in _models:
        spec = resolve(POINTS[family])
        torch.manual_seed(0)
        model = build(spec, num_classes=7, in_chans=3).eval()
        meta = {"text": spec.text, "num_classes": 7, "in_chans": 3, "res": spec.res, "dataset": "synthetic",
                "mean": MEAN, "std": STD, "recipe": "default", "run_id": f"test-{family}", "lab_version": lab.__version__}
        _models[family] = model, meta
    return _models[family]


def _images(meta: dict, batch: int = 5) -> torch.Tensor:
    """[0, 1] images at a batch size neither the trace (2) nor the export's own check (3) used."""
    frames = parse(meta["text"]).frames
    shape = (batch, 3, frames, meta["res"], meta["res"]) if frames > 1 else (batch, 3, meta["res"], meta["res"])
    return torch.rand(shape, generator=torch.Generator().manual_seed(7))


def _reference(model: torch.nn.Module, meta: dict, x: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """The model's logits on [0, 1] images, normalized here by hand (not by lab.interop.export.Normalized)."""
    shape = (1, -1, 1, 1, 1) if x.ndim == 5 else (1, -1, 1, 1)
    with torch.no_grad():
        return model((x - torch.tensor(mean).reshape(shape)) / torch.tensor(std).reshape(shape))


def _run_file(path, format: str, x: torch.Tensor) -> torch.Tensor:
    """The exported file's logits, run by the format's own tool (safetensors: lab's checkpoint loader,
    the normalization read from the file's metadata)."""
    with torch.no_grad():
        if format == "safetensors":
            model, meta = load_checkpoint(path)
            return _reference(model, meta, x, meta["mean"], meta["std"])
        if format == "torchscript":
            with warnings.catch_warnings():   # torch.jit.load's deprecation notice
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(path))(x)
        if format == "export":
            return torch.export.load(str(path)).module()(x)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


# CPU seconds (one thread) of export + check: safetensors < 0.1, torchscript < 1, export 1 (conv, vit, mixer) to
# 7 (nat), onnx 2.4 (mixer) to 16 (nat): the heavier pairs run under -m slow
SLOW = {("export", f) for f in ("swin", "nat", "hybrid", "video")} | {("onnx", f) for f in POINTS if f not in ("conv", "mixer")}
CASES = [pytest.param(f, fam, marks=pytest.mark.slow) if (f, fam) in SLOW else (f, fam)
         for f in exp.FORMATS for fam in POINTS]


@pytest.mark.parametrize("format,family", CASES)
def test_each_format_gives_the_models_logits_on_each_family(format, family, tmp_path):
    model, meta = _model(family)
    done = exp.export_model(model, meta, format, tmp_path / f"m{exp.FORMATS[format]}", source="test")
    assert done.path.is_file() and done.max_diff is not None and done.max_diff < 1e-4
    x = _images(meta)
    got, want = _run_file(done.path, format, x), _reference(model, meta, x)
    assert got.shape == (5, 7)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    with torch.no_grad():   # the tolerance is fine enough to see a normalization left out (0.05-0.3 here)
        assert float((model(x) - want).abs().max()) > 100 * 1e-4
    info = exp.read_info(done.path)   # the description travels with the file
    assert info["text"] == meta["text"] and info["mean"] == MEAN and info["std"] == STD
    assert (info["res"], info["in_chans"], info["num_classes"], info["format"]) == (meta["res"], 3, 7, format)
    assert info["frames"] == (4 if family == "video" else 1)


def test_a_safetensors_export_loads_as_the_same_images_in_module_as_the_graph_exports(tmp_path):
    model, meta = _model("mixer")
    exp.export_model(model, meta, "safetensors", tmp_path / "m.safetensors")
    exp.export_model(model, meta, "export", tmp_path / "m.pt2")
    x = _images(meta)
    loaded, info = exp.load_exported(tmp_path / "m.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), torch.export.load(str(tmp_path / "m.pt2")).module()(x), atol=1e-5, rtol=0)
    assert info["normalization"].startswith("in the metadata")


def test_a_file_whose_logits_differ_is_removed_and_said_so_in_one_line(tmp_path, monkeypatch):
    model, meta = _model("mixer")
    monkeypatch.setattr(exp, "load_runner", lambda path, format: (lambda x: torch.zeros(x.shape[0], 7), "stub"))
    with pytest.raises(exp.ExportError, match=r"^--format export: the written file's logits differ from the model's "
                                              r"\(by [0-9.e+-]+, tolerance 0.0001\); nothing was kept$"):
        exp.export_model(model, meta, "export", tmp_path / "m.pt2")
    assert not (tmp_path / "m.pt2").exists() and not list(tmp_path.iterdir())


def test_what_a_format_cannot_take_is_one_line_with_exit_2(tmp_path, monkeypatch, capsys):
    model, meta = _model("vit")
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({"state_dict": model.state_dict(), "meta": meta}, folder / "model.pt")

    def fail(*args, **kwargs):
        raise RuntimeError("Unsupported: data-dependent control flow\n  File ...\n  (a long traceback)")

    monkeypatch.setattr(torch.onnx, "export", fail)
    code, out, err = run_cli(capsys, "export", str(folder), "--format", "onnx", "--out", str(tmp_path / "x.onnx"))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("lab: error: --format onnx cannot take this model (@32 | patch") and \
        "RuntimeError: Unsupported: data-dependent control flow" in err
    assert not (tmp_path / "x.onnx").exists()
    monkeypatch.setitem(__import__("sys").modules, "onnxscript", None)   # the optional package missing
    code, _, err = run_cli(capsys, "export", str(folder), "--format", "onnx", "--out", str(tmp_path / "x.onnx"))
    assert code == 2 and err.count("\n") == 1 and "pip install 'lab[onnx]'" in err and "onnxscript" in err


def test_the_cli_exports_a_run_by_its_id(tmp_path, capsys):
    model, meta = _model("conv")
    runs = tmp_path / "runs"
    (runs / "20260101-000000-abc").mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "meta": meta}, runs / "20260101-000000-abc" / "model.pt")
    code, out, err = run_cli(capsys, "export", "20260101-000000-abc", "--runs", str(runs), "--format", "torchscript",
                             "--out", str(tmp_path / "out") + "/")
    path = tmp_path / "out" / "20260101-000000-abc.pt"
    assert code == 0 and err == "" and out.startswith(f"wrote {path} (torchscript, ")
    assert "[0, 1] images (N, 3, 32, 32) -> 7 logits, normalization inside; logits match the model within" in out
    x = _images(meta)
    torch.testing.assert_close(_run_file(path, "torchscript", x), _reference(model, meta, x), atol=1e-4, rtol=1e-4)
    code, _, err = run_cli(capsys, "export", "nope", "--runs", str(runs), "--format", "onnx")
    assert code == 2 and err.count("\n") == 1 and "no run nope in" in err and "STUDY:TRIAL" in err


# --- the keeping policy, on synthetic rows --------------------------------------------------

OBJ = [("val_top1", "max"), ("macs", "min")]


def _row(number: int, acc: float | None, macs: float, state: str = "complete") -> dict:
    return {"number": number, "state": state, "val_top1": acc, "macs": macs}


def _front(rows: list[dict]) -> set[int]:
    """The Pareto set by brute force: complete rows no other complete row dominates."""
    done = [r for r in rows if r["state"] == "complete" and r["val_top1"] is not None]
    return {r["number"] for r in done
            if not any(o["val_top1"] >= r["val_top1"] and o["macs"] <= r["macs"]
                       and (o["val_top1"] > r["val_top1"] or o["macs"] < r["macs"]) for o in done)}


def test_the_wanted_trials_are_the_front_best_first_then_the_top_k():
    rng = np.random.default_rng(3)
    rows = [_row(n, float(rng.uniform(0.3, 0.9)), float(rng.integers(1, 50)) * 1e6) for n in range(30)]
    rows += [_row(30, None, 1.0), _row(31, 0.99, 1.0, state="pruned")]   # neither competes
    order = wanted(rows, KeepPolicy(OBJ, keep_top=3))
    front = [n for n, why in order if why == "pareto set"]
    assert set(front) == _front(rows)
    accs = {r["number"]: r["val_top1"] for r in rows}
    assert [accs[n] for n in front] == sorted((accs[n] for n in front), reverse=True)
    best3 = sorted((r for r in rows[:30]), key=lambda r: -r["val_top1"])[:3]
    extra = [n for n, why in order if why != "pareto set"]
    assert extra == [r["number"] for r in best3 if r["number"] not in front]
    assert all(why == "top 3 by val_top1" for n, why in order if n in extra)
    assert parse_metric("loss") == ("loss", "min") and parse_metric("test_acc") == ("test_top1", "max")
    assert parse_metric("macs:max") == ("macs", "max")


def test_the_cap_keeps_the_longest_wanted_prefix_that_fits():
    rows = [_row(0, 0.9, 40e6), _row(1, 0.8, 20e6), _row(2, 0.7, 10e6), _row(3, 0.6, 30e6)]   # 0,1,2 front; 3 not
    files = {0: 400, 1: 300, 2: 200, 3: 100}
    kept, dropped = choose(rows, files, KeepPolicy(OBJ, cap=750))
    assert kept == {0: "pareto set", 1: "pareto set"}   # 400 + 300 <= 750; adding 200 would not fit
    assert dropped[2].startswith("over the cap") and dropped[2].endswith("its own 200 B, --weights-cap is 750 B")
    assert dropped[3] == "not on the Pareto set"
    kept, dropped = choose(rows, files, KeepPolicy(OBJ, cap=10**6, keep_top=4))
    assert set(kept) == {0, 1, 2, 3} and kept[3] == "top 4 by val_top1" and not dropped


def _write(folder, number: int, size: int) -> None:
    path = weights_file(folder, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def test_the_keeper_deletes_the_weights_of_trials_the_front_leaves(tmp_path):
    warnings: list[str] = []
    keeper = WeightKeeper(tmp_path, KeepPolicy(OBJ, cap=1000), [], warn=warnings.append)
    left = lambda: sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "weights").glob("trial-*"))  # noqa: E731
    _write(tmp_path, 0, 100)
    keeper.settle(_row(0, 0.5, 10e6), {"weights_bytes": 100})
    assert left() == [0]
    _write(tmp_path, 1, 100)
    _write(tmp_path, 2, 100)   # trial 2 still runs: its file is not judged before its row settles
    keeper.settle(_row(1, 0.6, 10e6), {"weights_bytes": 100})   # dominates trial 0
    assert left() == [1, 2]
    keeper.settle(_row(2, 0.7, 20e6), {"weights_bytes": 100})   # a second front point
    assert left() == [1, 2]
    keeper.settle(_row(3, 0.9, 5e6), {"weights_bytes": 5000, "weights_error": "over the cap: its weights take 5.0 kB, "
                                                                               "--weights-cap is 1.0 kB"})
    assert left() == []   # trial 3 dominates both, and its own weights were never written
    keeper.settle(_row(4, 0.95, 50e6), {"weights_bytes": 5000, "weights_error": "over the cap: again"})
    assert len([w for w in warnings if "over the cap" in w]) == 1   # said once
    index = read_index(tmp_path)
    assert index["kept"] == {} and index["dropped"]["0"] == "not on the Pareto set"
    assert index["dropped"]["3"].startswith("over the cap")
    config, rows = {"name": "s"}, list(keeper.rows.values())
    with pytest.raises(StudyError, match=r"^study 's': trial 3's weights were not kept: over the cap: its weights take"):
        trial_weights(tmp_path, 3, config, rows)
    with pytest.raises(StudyError, match=r"trial 0's weights were not kept: not on the Pareto set$"):
        trial_weights(tmp_path, 0, config, rows)
    with pytest.raises(StudyError, match=r"^study 's': trial 5 was pruned \(stopped by the scheduler\); only complete"):
        trial_weights(tmp_path, 5, config, [*rows, {**_row(5, None, 1), "state": "pruned",
                                                    "error": "stopped by the scheduler"}])
    with pytest.raises(StudyError, match=r"replays a benchmark table \(replay:hybrid\): it trained nothing"):
        trial_weights(tmp_path, 0, {"name": "r", "backend": "replay:hybrid"}, rows)
    # a resumed study's keeper judges files the last driver left (a trial settled as interrupted)
    _write(tmp_path, 6, 100)
    WeightKeeper(tmp_path, KeepPolicy(OBJ, cap=1000), [*rows, _row(6, None, 1, state="failed")], warn=warnings.append)
    assert left() == [] and read_index(tmp_path)["dropped"]["6"] == "the trial is failed"


def test_the_study_settings_of_kept_weights_are_checked():
    assert StudyConfig(name="s").weights_cap == "1GiB" and StudyConfig(name="s").keep_top == 0
    for kw, match in (({"keep_top": -1}, "keep_top = -1"), ({"keep_metric": "speed"}, "unknown column 'speed'"),
                      ({"weights_cap": "lots"}, "weights_cap 'lots'")):
        with pytest.raises(LabError, match=match):
            StudyConfig(name="s", **kw)


# --- a live study -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kept_study(tmp_path_factory):
    from lab.study.cluster import start_ray

    start_ray()
    root = tmp_path_factory.mktemp("kept")
    config = StudyConfig(name="kept", space="hybrid", dataset="mnist5k", fraction=0.1, epochs=1, batch_size=32, seed=0,
                         sampler="random", scheduler="fifo", concurrency=1, trials=3, res=16, keep_top=1)
    return create(config, root=root, verbose=0), root


def test_a_live_study_keeps_its_pareto_sets_weights_and_exports_them(kept_study, capsys, tmp_path):
    folder, root = kept_study
    rows = [r for r in StudyStore(folder).trials().to_pylist() if r["state"] == "complete"]
    assert len(rows) == 3
    code, out, _ = run_cli(capsys, "study", "show", "kept", "--root", str(root), "--json")
    info = json.loads(out)
    front = {r["number"] for r in info["pareto"]}
    best = max(rows, key=lambda r: (r["val_top1"], -r["number"]))["number"]
    files = {int(p.stem.split("-")[1]) for p in (folder / "weights").glob("trial-*.safetensors")}
    assert files == front | {best} and set(map(int, info["kept_weights"])) == files
    assert all(r["checkpoint"] == str(weights_file(folder, r["number"])) for r in info["pareto"])
    number = min(front)
    model, meta = load_checkpoint(weights_file(folder, number))   # a lab checkpoint: text, classes, normalization
    row = next(r for r in rows if r["number"] == number)
    assert meta["text"] == row["text"] and meta["num_classes"] == 10 and meta["in_chans"] == 1 and meta["res"] == 16
    assert meta["dataset"] == "mnist5k" and len(meta["mean"]) == len(meta["std"]) == 1 and meta["trial"] == number
    code, out, err = run_cli(capsys, "export", f"kept:{number}", "--root", str(root), "--format", "torchscript",
                             "--out", str(tmp_path / "m.pt"))
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'm.pt'} (torchscript, ") and "(N, 1, 16, 16) -> 10 logits" in out
    x = torch.rand(4, 1, 16, 16)
    got = _run_file(tmp_path / "m.pt", "torchscript", x)
    torch.testing.assert_close(got, _reference(model, meta, x, meta["mean"], meta["std"]), atol=1e-4, rtol=1e-4)
    others = sorted({r["number"] for r in rows} - files)
    dropped = read_index(folder)["dropped"]   # every complete trial is kept, or the ledger says why not
    assert sorted(int(n) for n in dropped) == others
    if others:   # a trial off the front: its weights were deleted, and the error says why
        code, _, err = run_cli(capsys, "export", f"kept:{others[0]}", "--root", str(root), "--format", "onnx")
        assert code == 2 and err.count("\n") == 1 and "weights were not kept: not on the Pareto set nor in the top 1" in err


def test_a_replayed_study_keeps_nothing(tmp_path, capsys):
    folder = create(StudyConfig(name="r", trials=4, backend="replay:hybrid", fraction=0.25, keep_top=2, seed=1), root=tmp_path,
                    verbose=0)
    assert not (folder / "weights").exists()
    code, _, err = run_cli(capsys, "export", "r:0", "--root", str(tmp_path), "--format", "safetensors")
    assert code == 2 and err.count("\n") == 1 and "replays a benchmark table (replay:hybrid): it trained nothing" in err
