"""Checkpoints under hostile or unlucky conditions: a full disk while `lab train --out` writes a run
(fault injection at every write step: one line, exit 2, nothing half-written), checkpoints whose
metadata lies (refused in one line by every loader before anything is built), raw pickles (refused
without torch's unsafe advice) and the checkpoint files' permissions."""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from support import run_cli

import lab
import lab.train.checkpoint as checkpoint_module
from lab.errors import TrainError
from lab.train.checkpoint import load_checkpoint, save_checkpoint
from lab.train.record import read_records
from lab.train.run import fit, prepare, record

TINY = "@16 | conv(c=8,k=3),bn,relu | basic 1x8, 1x16/2 | gap,fc"


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    return run_cli(capsys, *argv)


def _one_line_error(rc: int, err: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("lab: error: "), err
    return err


# --- a full disk while a run is written ------------------------------------------------------

@pytest.fixture(scope="module")
def fitted():
    """One tiny fitted run (about a second): record() is then called under each fault."""
    p = prepare(TINY, "digits", res=16, epochs=1, fraction=0.2, device="cpu")
    return p, fit(p)


def _listing(folder: Path) -> dict[str, int]:
    """Every path under `folder` with its size: what a failed write must leave as it found it."""
    return {str(q.relative_to(folder)): q.stat().st_size for q in sorted(folder.rglob("*"))} if folder.exists() else {}


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _nth_replace(monkeypatch, n: int) -> None:
    """os.replace fails with ENOSPC on its n-th call into a run folder or its table (1:
    model.safetensors, 2: model.pt, 3: the run folder's rename, 4: runs.parquet); other renames
    (a dataset cache) go through."""
    real, calls = os.replace, []

    def replace(src, dst):
        if Path(dst).name in ("model.safetensors", "model.pt", "runs.parquet") or Path(src).name.endswith(".partial"):
            calls.append(dst)
            if len(calls) == n:
                _enospc()
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def _tiny_disk(monkeypatch) -> None:
    """shutil.disk_usage says 100 KB are free (torch.save's "unexpected pos" names no cause)."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 10**5, 10**5))


def _torch_save_fails(monkeypatch) -> None:
    def save(*_args, **_kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4416 vs 4310")

    monkeypatch.setattr(torch, "save", save)
    _tiny_disk(monkeypatch)


def _safetensors_fails(monkeypatch) -> None:
    def save(*_args, **_kwargs):
        raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')

    import lab.interop.weights as weights_module   # where checkpoints' safetensors files are written

    monkeypatch.setattr(weights_module, "save_file", save)


def _run_folder_mkdir_fails(monkeypatch) -> None:
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name.endswith(".partial"):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def _table_write_fails(monkeypatch) -> None:
    import pyarrow.parquet as pq

    monkeypatch.setattr(pq, "write_table", _enospc)


FAULTS = {
    "run folder mkdir (EDQUOT)": _run_folder_mkdir_fails,
    "safetensors write": _safetensors_fails,
    "safetensors rename": lambda mp: _nth_replace(mp, 1),
    "torch.save (unexpected pos)": _torch_save_fails,
    "model.pt rename": lambda mp: _nth_replace(mp, 2),
    "run folder rename": lambda mp: _nth_replace(mp, 3),
    "runs.parquet write": _table_write_fails,
    "runs.parquet rename": lambda mp: _nth_replace(mp, 4),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_full_disk_at_any_write_step_leaves_the_run_folder_as_it_was(fault, fitted, tmp_path, monkeypatch):
    p, f = fitted
    out = tmp_path / "runs"
    first = record(p, f, out)   # a run already in the folder
    before = _listing(out)
    FAULTS[fault](monkeypatch)
    with pytest.raises(TrainError) as info:
        record(p, f, out)
    message = str(info.value)
    assert "\n" not in message and f"in {out}:" in message and "no space left on device" in message, message
    monkeypatch.undo()
    assert _listing(out) == before   # no new folder, no lone file, no partial folder, the table untouched
    rows = read_records(out / "runs.parquet").to_pylist()
    assert [r["run_id"] for r in rows] == [first.record["run_id"]]
    assert Path(rows[0]["checkpoint"]).is_file()


@pytest.mark.parametrize("fault", ["safetensors write", "model.pt rename", "runs.parquet write"])
def test_a_full_disk_in_a_new_out_folder_leaves_no_folder(fault, fitted, tmp_path, monkeypatch):
    p, f = fitted
    FAULTS[fault](monkeypatch)
    with pytest.raises(TrainError, match="no space left on device"):
        record(p, f, tmp_path / "new" / "runs")
    assert not (tmp_path / "new" / "runs").exists()


def test_a_diverged_runs_row_that_cannot_be_written(fitted, tmp_path, monkeypatch):
    p, f = fitted
    diverged = dataclasses.replace(f, status="diverged", error="loss became nan at epoch 1")
    _table_write_fails(monkeypatch)
    with pytest.raises(TrainError, match="no space left on device"):
        record(p, diverged, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_a_write_error_with_space_to_spare_names_the_error_not_the_disk(fitted, tmp_path, monkeypatch):
    p, f = fitted
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("writer broke")))
    with pytest.raises(TrainError) as info:
        record(p, f, tmp_path)
    assert "RuntimeError: writer broke" in str(info.value) and "no space" not in str(info.value)
    assert _listing(tmp_path) == {}


def test_lab_train_on_a_full_disk_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs"
    _nth_replace(monkeypatch, 2)   # model.pt cannot be renamed into place
    rc, _, err = _cli(capsys, "train", TINY, "--dataset", "digits", "--res", "16", "--epochs", "1",
                      "--fraction", "0.2", "--device", "cpu", "--no-progress", "--out", str(out))
    err = _one_line_error(rc, err)
    assert "cannot save run " in err and f" in {out}: no space left on device" in err
    assert not out.exists()


def test_checkpoint_files_are_readable_by_all_like_the_run_folder(fitted, tmp_path):
    p, f = fitted
    old = os.umask(0o022)
    try:
        result = record(p, f, tmp_path)
    finally:
        os.umask(old)
    folder = result.checkpoint.parent
    assert {q.name: q.stat().st_mode & 0o777 for q in folder.iterdir()} == \
        {"model.pt": 0o644, "model.safetensors": 0o644}
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "runs.parquet").stat().st_mode & 0o777 == 0o644


# --- hostile metadata: every loader refuses it before building -----------------------------

@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """An untrained TINY checkpoint (10 classes, 1 channel, 16 px): the base of the hostile ones."""
    spec = lab.parse(TINY)
    torch.manual_seed(0)
    model = lab.build(spec, num_classes=10, in_chans=1)
    meta = {"text": spec.text, "num_classes": 10, "in_chans": 1, "res": 16, "dataset": "digits", "mean": [0.3],
            "std": [0.4], "recipe": "default", "run_id": "r", "lab_version": lab.__version__}
    folder = tmp_path_factory.mktemp("genuine")
    save_checkpoint(folder, model, meta)
    return torch.load(folder / "model.pt", weights_only=True)


def _other_text() -> str:
    return "@16 | conv(c=4,k=3),bn,relu | basic 1x8, 1x16/2 | gap,fc"   # 4 stem channels, not 8


HOSTILE = {   # name: (what to change, a fragment the error names)
    "huge text": (lambda b: b["meta"].update(text="@16 | " + "conv," * 200_000), "field 'text' is 1000006"),
    "10**12 classes": (lambda b: b["meta"].update(num_classes=10**12), "field 'num_classes' is 1000000000000"),
    "a bool for in_chans": (lambda b: b["meta"].update(in_chans=True), "field 'in_chans' is True"),
    "no num_classes": (lambda b: b["meta"].pop("num_classes"), "lacks field 'num_classes'"),
    "no text": (lambda b: b["meta"].update(text=None), "field 'text' is a NoneType"),
    "bad text": (lambda b: b["meta"].update(text="@16 | nonsense | gap,fc"), "field 'text' is not valid grammar text"),
    "res not the text's": (lambda b: b["meta"].update(res=224), "field 'res' is 224, but its text is at @16"),
    "a huge model in the text": (lambda b: b["meta"].update(
        text="@16 | conv(c=8,k=3),bn,relu | basic 4x512, 4x8192/2 | gap,fc"), "describe a model of"),
    # TINY has 5,122 parameters with 10 classes; each more class adds a row of 16 weights and a bias
    "100k classes on a small file": (lambda b: b["meta"].update(num_classes=100_000),
                                     f"describe a model of {5122 + (100_000 - 10) * 17:,} parameters"),
    "another model's tensors": (lambda b: b["meta"].update(text=_other_text()), "field 'state_dict' lacks tensor"),
    "an extra tensor": (lambda b: b["state_dict"].update(extra=torch.zeros(3)), "unexpected tensor extra"),
    "a missing tensor": (lambda b: b["state_dict"].pop("head.1.bias"), "lacks tensor head.1.bias"),
    "a wrong shape": (lambda b: b["state_dict"].update({"head.1.bias": torch.zeros(11)}),
                      "head.1.bias (11,) vs (10,)"),
    "no state_dict": (lambda b: b.update(state_dict=[1, 2]), "field 'state_dict' is not a mapping"),
    "a string for dataset": (lambda b: b["meta"].update(dataset=["x"]), "field 'dataset' is a list"),
}


def _hostile(genuine: dict, tmp_path: Path, name: str) -> Path:
    blob = {"state_dict": dict(genuine["state_dict"]), "meta": dict(genuine["meta"])}
    HOSTILE[name][0](blob)
    path = tmp_path / "hostile.pt"
    torch.save(blob, path)
    return path


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_metadata_is_one_line_for_probe_and_transfer(name, genuine, tmp_path, capsys, monkeypatch):
    import lab.build

    path = _hostile(genuine, tmp_path, name)
    fragment = HOSTILE[name][1]
    built = []
    if "tensor" not in fragment and "shape" not in name:   # refused from the metadata alone: nothing is built
        monkeypatch.setattr(checkpoint_module, "build", lambda *a, **k: built.append(a) or lab.build.build(*a, **k))
    err = _one_line_error(*_cli(capsys, "probe", str(path), "--dataset", "digits")[::2])
    assert f"checkpoint {path}" in err and fragment in err, err
    err = _one_line_error(*_cli(capsys, "transfer", "--from", str(path), "--dataset", "digits",
                                "--out", str(tmp_path / "runs"))[::2])
    assert f"checkpoint {path}" in err and fragment in err, err
    assert not (tmp_path / "runs").exists() and built == []


@pytest.mark.parametrize("name", ["10**12 classes", "huge text", "an extra tensor"])
def test_hostile_metadata_is_one_line_for_train_init_and_distill(name, genuine, tmp_path, capsys):
    path = _hostile(genuine, tmp_path, name)
    for flag in ("--init", "--distill-from"):
        err = _one_line_error(*_cli(capsys, "train", TINY, "--dataset", "digits", flag, str(path), "--epochs", "1",
                                    "--device", "cpu", "--out", str(tmp_path / "runs"))[::2])
        # --init loads into the point being trained (its own key check); the metadata is checked first
        assert f"checkpoint {path}" in err, err
        if name != "an extra tensor":
            assert HOSTILE[name][1] in err, err
    assert not (tmp_path / "runs").exists()


def test_hostile_safetensors_metadata(genuine, tmp_path, capsys):
    state = {k: v.contiguous() for k, v in genuine["state_dict"].items()}
    meta = {k: __import__("json").dumps(v) for k, v in genuine["meta"].items()}
    cases = {
        "classes.safetensors": ({**meta, "num_classes": "1000000000000"}, "field 'num_classes' is 1000000000000"),
        "huge.safetensors": ({**meta, "text": '"' + "x" * 300_000 + '"'}, "field 'text' is 300002 characters"),
        "json.safetensors": ({**meta, "in_chans": "one"}, "field 'in_chans' is not JSON"),
    }
    for file, (metadata, fragment) in cases.items():
        save_file(state, tmp_path / file, metadata=metadata)
        err = _one_line_error(*_cli(capsys, "probe", str(tmp_path / file), "--dataset", "digits")[::2])
        assert f"checkpoint {tmp_path / file}: metadata {fragment}" in err, err


def test_a_genuine_checkpoint_still_loads_from_either_file(genuine, tmp_path):
    torch.save(genuine, tmp_path / "model.pt")
    model, meta = load_checkpoint(tmp_path / "model.pt")
    assert meta == genuine["meta"]
    assert all(torch.equal(v, genuine["state_dict"][k]) for k, v in model.state_dict().items())


# --- raw pickles ------------------------------------------------------------------------------

class _Calls:
    def __reduce__(self):
        return (print, ("this must never run",))


class _Custom:
    pass


@pytest.mark.parametrize("make, names", [
    (lambda path: path.write_bytes(pickle.dumps(_Calls(), protocol=2)), "it names print"),
    (lambda path: torch.save({"state_dict": {}, "extra": _Custom()}, path), "_Custom"),
])
def test_a_raw_pickle_is_refused_without_torchs_unsafe_advice(make, names, tmp_path, capsys):
    path = tmp_path / "model.pt"
    make(path)
    for argv in (["probe", str(path)], ["transfer", "--from", str(path), "--out", str(tmp_path / "runs")]):
        rc, out, err = _cli(capsys, *argv)
        err = _one_line_error(rc, err)
        assert "this must never run" not in out
        assert f"checkpoint {path} is refused: a pickle with code or objects other than tensors" in err
        assert names in err and "only its own checkpoints and plain state_dicts or .safetensors files" in err
        assert "weights_only" not in err and "trust" not in err


def test_a_truncated_or_garbage_file_is_unreadable_not_refused(genuine, tmp_path):
    torch.save(genuine, tmp_path / "whole.pt")
    blob = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    for file in ("cut.pt", "junk.pt"):
        with pytest.raises(TrainError, match="is not readable as a lab checkpoint or a state_dict") as info:
            load_checkpoint(tmp_path / file)
        assert "weights_only" not in str(info.value)
