"""`lab train`: a summary line and a record on success; one line and exit code 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lab.cli.main import main
from lab.train.record import read_records

TINY = "@28 | conv(c=8,k=3),bn,relu | basic 1x8, 1x16/2 | gap,fc"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(["train", *argv])
    except SystemExit as e:   # argparse's own errors exit from parse_args
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_prints_a_summary_and_records_the_run(tmp_path, capsys):
    rc, out, err = _run(capsys, TINY, "--dataset", "digits", "--res", "16", "--epochs", "1", "--batch-size", "64",
                        "--fraction", "0.5", "--out", str(tmp_path))
    assert rc == 0, err
    line = out.strip()
    assert "\n" not in line and "on digits" in line and "test top-1" in line and "img/s" in line
    row = read_records(tmp_path / "runs.parquet").to_pylist()[0]
    assert row["dataset"] == "digits" and row["res"] == 16 and row["fraction"] == 0.5 and row["state"] == "complete"
    assert row["checkpoint"] in line
    rc, out, _ = _run(capsys, TINY, "--dataset", "digits", "--res", "16", "--epochs", "1", "--out", str(tmp_path),
                      "--json", "--seed", "1")
    assert rc == 0 and json.loads(out)["seed"] == 1
    assert read_records(tmp_path / "runs.parquet").num_rows == 2


def _imagefolder(root, corrupt: bool = False):
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / c / f"{i}.png")
    if corrupt:
        (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def _parquet_without_label(path):
    pq.write_table(pa.table({"image": [b"x"], "target": [0]}), path)
    return path


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "imagenet22k"], "imagenet22k"),
    (["--fraction", "0"], "--fraction"),
    (["--fraction", "1.5"], "--fraction"),
    (["--fraction", "nan"], "--fraction"),
    (["--epochs", "0"], "--epochs"),
    (["--recipe", "magic"], "--recipe"),
    (["--dataset", "imagefolder:{tmp}/missing"], "missing"),
    (["--dataset", "imagefolder:{folder}"], "broken.png"),
    (["--dataset", "parquet:{parquet}"], "label"),
    (["--device", "tpu"], "--device"),
    (["--distill-from", "{tmp}/nope.pt"], "nope.pt"),
])
def test_bad_input_is_one_line_and_exit_2_and_writes_nothing(tmp_path, capsys, argv, message):
    folder = _imagefolder(tmp_path / "folder", corrupt=True)
    parquet = _parquet_without_label(tmp_path / "nolabel.parquet")
    argv = [a.format(tmp=tmp_path, folder=folder, parquet=parquet) for a in argv]
    out_dir = tmp_path / "runs"
    rc, out, err = _run(capsys, TINY, "--epochs", "1", *argv, "--out", str(out_dir))
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lab") and "error" in lines[0] and message in lines[0], err
    assert not out_dir.exists()


def test_a_diverging_run_exits_2_with_its_record(tmp_path, capsys, monkeypatch):
    import lab.train.module as module

    real = module.classification_loss
    monkeypatch.setattr(module, "classification_loss", lambda logits, t: real(logits, t) * float("inf"))
    rc, _, err = _run(capsys, TINY, "--dataset", "digits", "--res", "16", "--out", str(tmp_path))
    assert rc == 2 and err.count("\n") == 1 and "training diverged: loss became inf" in err
    row = read_records(tmp_path / "runs.parquet").to_pylist()[0]
    assert row["state"] == "failed" and row["error"].startswith("diverged: loss became inf")
    assert row["checkpoint"] is None


def test_the_console_command_reports_an_unknown_dataset_without_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "lab.cli.main", "train", "resnet18", "--dataset", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "nope" in proc.stderr


def test_probe_a_trained_checkpoint(tmp_path, capsys):
    rc, _, err = _run(capsys, TINY, "--dataset", "digits", "--res", "16", "--epochs", "2", "--out", str(tmp_path), "--json")
    assert rc == 0, err
    ckpt = read_records(tmp_path / "runs.parquet").to_pylist()[0]["checkpoint"]
    rc = main(["probe", ckpt, "--dataset", "digits", "--shots", "1", "5", "200", "--seeds", "2", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["features"] == 16 and set(result["shots"]) == {"1", "5"} and "200" in result["skipped"]
    assert 0.1 < result["shots"]["1"]["mean"] <= result["shots"]["5"]["mean"] + 0.05   # better than chance, grows
    assert main(["probe", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err
