"""benchmarks/gpu_check.sh, the prepared GPU check: refused in one line where torch sees no CUDA device,
and every step of it run on CPU at tiny sizes (the smoke run), up to the CUDA calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHON": sys.executable, **env})


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is there: the check would run")
def test_without_cuda_the_check_stops_in_one_line(tmp_path):
    done = _run(tmp_path, CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no CUDA device" in done.stderr, done.stderr
    assert not (tmp_path / "na_flex.json").exists()


@pytest.mark.slow
def test_the_smoke_run_runs_every_step_on_cpu(tmp_path):
    done = _run(tmp_path / "out", GPU_CHECK_DEVICE="cpu", LAB_HOME=str(tmp_path / "home"), DEADLINE="800")
    log = (tmp_path / "out" / "gpu_check.txt").read_text()
    assert done.returncode == 0, done.stderr + log
    exits = [line for line in log.splitlines() if line.startswith("== ") and ": exit " in line]
    assert len(exits) == 7 and all(": exit 0 " in line for line in exits), "\n".join(exits)
    flex = json.loads((tmp_path / "out" / "na_flex.json").read_text())
    assert flex["results"][0]["impls"]["flex"]["max_abs_out"] < 1e-4
    assert json.loads((tmp_path / "out" / "memory.json").read_text())
    bench = [json.loads(line) for line in (tmp_path / "out" / "bench.jsonl").read_text().splitlines() if line.strip()]
    assert len(bench) == 1
    studies = (tmp_path / "out" / "study.txt").read_text()
    assert "study gpu-check" in studies and "study gpu-auto" in studies
