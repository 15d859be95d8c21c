"""Memory estimates (lab.memory) against what torch allocates, and the refusal of a point that cannot fit.

What is measured, on the CPU (no CUDA here): the tensors autograd saves for backward during one
forward (saved_tensors_hooks, each storage counted once, parameters left out); the exact bytes of the
weights, gradients and AdamW state after one step; and the peak of torch's CPU allocator during one
training step and one no-grad forward, from the profiler's memory events (bytes allocated and freed
while it records, plus the weights and input that exist before). Not measured: the process's RSS, the
CUDA caching allocator's fragmentation.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from support import run_cli
from torch import nn
from torch.profiler import ProfilerActivity, profile

import lab.train.run as run_module
from lab import __version__
from lab.build import build
from lab.cost import totals
from lab.errors import LabError, TrainError
from lab.grammar import parse
from lab.memory import (
    OVERHEAD,
    available_memory,
    check_fits,
    format_size,
    inference_memory,
    parse_size,
    require_fits,
    training_memory,
)
from lab.train.checkpoint import save_checkpoint

POINTS = {   # 28-32 px points of the three families: convolution, attention, token MLP
    "conv": "@28 | conv(c=16,k=3),bn,relu | basic 1x16, 1x32/2 | gap,fc",
    "vit": "@32 | patch(p=4,c=64),cls,pos | mhsa(h=4) 4x64 | ln,token,fc",
    "mixer": "@28 | patch(p=2,c=96) | mixer(tok=0.25,mlp=2) 4x96 | ln,gap,fc",
}
TINY = "@28 | conv(c=8,k=3),bn,relu | basic 1x8, 1x16/2 | gap,fc"
HUGE = "@28 | conv(c=65536,k=3) | basic 1000x65536 | gap,fc"   # the issue's point: 77 T params
B = 16


def _profiled_peak(fn, tmp_path: Path) -> int:
    """The peak bytes torch's CPU allocator holds during `fn()`, above what it held before."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    return max(itertools.accumulate((e["args"]["Bytes"] for e in events if e.get("name") == "[memory]"), initial=0))


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors one forward saves for backward, each storage once, parameters left out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(saved.values())


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("name", list(POINTS))
def test_training_estimate_matches_what_one_step_allocates(name, tmp_path):
    spec = parse(POINTS[name])
    est = training_memory(spec, B, num_classes=10, in_chans=3, optimizer="adamw")
    model = build(spec, num_classes=10, in_chans=3).train()
    x, y = torch.randn(B, 3, spec.res, spec.res), torch.randint(0, 10, (B,))

    # activations kept for backward: the estimate's SAVED_PER_ACT x the cost model's count, within 0.75x..1.33x
    saved = _saved_bytes(model, x)
    assert 0.75 < saved / est.activations < 1.33, (saved, est.activations)

    # weights, gradients and AdamW's two moments: exact (the cost model's params are the module's)
    opt = torch.optim.AdamW(model.parameters())
    before = _tensor_bytes(model.parameters()) + _tensor_bytes(model.buffers()) + x.numel() * 4

    def step() -> None:
        F.cross_entropy(model(x), y).backward()
        opt.step()

    peak = _profiled_peak(step, tmp_path) + before
    grads = _tensor_bytes(p.grad for p in model.parameters())
    state = _tensor_bytes(t for s in opt.state.values() for t in s.values() if t.dim() > 0)   # not the step counts
    assert _tensor_bytes(model.parameters()) + grads + state == est.weights

    # the whole step's allocator peak: measured 0.68-0.94 x the estimate (which includes OVERHEAD)
    assert 0.5 < peak / est.total < 1.2, (format_size(peak), format_size(est.total))


@pytest.mark.parametrize("name", list(POINTS))
def test_inference_estimate_matches_a_no_grad_forward(name, tmp_path):
    spec = parse(POINTS[name])
    est = inference_memory(spec, B, num_classes=10, in_chans=3)
    model = build(spec, num_classes=10, in_chans=3).eval()
    x = torch.randn(B, 3, spec.res, spec.res)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    peak = _profiled_peak(forward, tmp_path) + _tensor_bytes(model.parameters()) + x.numel() * 4
    assert 0.5 < peak / est.total < 2, (format_size(peak), format_size(est.total))   # measured 0.85-1.06


def test_the_parts_of_an_estimate_follow_the_stated_formula():
    spec = parse(TINY)
    params, acts = totals(spec, 10, 1).params, totals(spec, 10, 1).acts
    adam, sgd = (training_memory(spec, 32, 10, 1, optimizer=o) for o in ("adamw", "sgd"))
    assert adam.weights == 4 * params * 4 and sgd.weights == 3 * params * 4
    assert adam.activations == 32 * 4 * (2 * acts + 28 * 28)   # SAVED_PER_ACT x acts + the input image
    assert adam.total == pytest.approx(OVERHEAD * (adam.weights + adam.activations), abs=1)
    ema = training_memory(spec, 32, 10, 1, ema=True)
    assert ema.weights == adam.weights + 4 * params
    mixed = training_memory(spec, 32, 10, 1, precision="bf16-mixed")   # 2-byte activations, a 2-byte weight copy
    assert mixed.activations == adam.activations // 2 and mixed.weights == adam.weights + 2 * params
    assert training_memory(spec, 64, 10, 1).activations == 2 * adam.activations
    with pytest.raises(LabError, match="precision 'fp8'"):
        training_memory(spec, 32, precision="fp8")


@pytest.mark.parametrize("text, expected", [
    ("8GiB", 8 * 2**30), ("500MB", 500 * 10**6), ("1.5G", 1_500_000_000), ("2e9", 2 * 10**9),
    ("1024", 1024), ("64 kib", 65536), ("2PB", 2 * 10**15), ("1TiB", 2**40),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "8XB", "GiB", "-1GB", "0", "0.1", "8 GiB extra", "1e"])
def test_parse_size_refuses_bad_text_naming_the_flag(text):
    with pytest.raises(LabError, match=r"^--max-memory '.*': expected a positive size"):
        parse_size(text)
    with pytest.raises(LabError, match=r"^--limit "):
        parse_size(text, flag="--limit")


def test_format_size():
    assert [format_size(n) for n in (512, 1_500, 154_618_822_656, 1.7e15, 20e9)] == \
        ["512 B", "1.5 kB", "155 GB", "1.7 PB", "20 GB"]


def test_available_memory_is_positive_and_below_the_machines_total():
    total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemTotal:"))
    assert 0 < available_memory("cpu") <= total
    assert available_memory(torch.device("cpu")) > 0


def test_check_fits_says_why_and_require_fits_raises():
    spec = parse(TINY)
    need = training_memory(spec, 64, 10, 1).total
    assert check_fits(spec, 64, 10, 1, need) is None
    reason = check_fits(spec, 64, 10, 1, need - 1)
    assert reason is not None and "\n" not in reason
    assert reason.startswith(f"{spec.text!r} needs about {format_size(need)} to train at batch 64 (weights, gradients "
                             "and AdamW state")
    assert reason.endswith("available (--max-memory to set the limit)")
    assert "to run at batch 256" in check_fits(spec, 256, 10, 1, 1000, train=False, label="x")
    with pytest.raises(TrainError, match=r"the limit is 1\.0 kB \(--max-memory\)$"):
        require_fits(spec, 64, 10, 1, 1000)
    require_fits(spec, 1, 10, 1)   # the machine's available memory holds a tiny point


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    return run_cli(capsys, *argv)


def test_the_issues_point_is_refused_in_one_line_before_it_is_built(capsys, monkeypatch, tmp_path):
    def no_build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(run_module, "build", no_build)
    t0 = time.perf_counter()
    rc, out, err = _cli(capsys, "train", HUGE, "--out", str(tmp_path))
    seconds = time.perf_counter() - t0
    assert rc == 2 and out == ""
    line = err.strip()
    assert "\n" not in line and line.startswith(f"lab: error: {HUGE!r} needs about ")
    assert "PB to train at batch 128" in line and "this machine has" in line and "--max-memory" in line
    assert seconds < 5   # measured ~1 s (loading mnist5k); nothing is allocated
    assert not any(tmp_path.iterdir())


def test_max_memory_refuses_a_tiny_point(capsys, tmp_path):
    rc, _, err = _cli(capsys, "train", TINY, "--dataset", "mnist5k", "--max-memory", "1MB", "--out", str(tmp_path))
    assert rc == 2 and "\n" not in err.strip()
    assert err.strip().endswith("; the limit is 1.0 MB (--max-memory)") and "to train at batch 128" in err
    rc, _, err = _cli(capsys, "train", TINY, "--max-memory", "lots")
    assert rc == 2
    assert err.strip() == "lab: error: --max-memory 'lots': expected a positive size such as 8GiB, 500MB or 2e9 (bytes)"


def test_a_tiny_run_within_the_limit_trains(capsys, tmp_path):
    rc, out, err = _cli(capsys, "train", TINY, "--dataset", "digits", "--res", "16", "--epochs", "1",
                        "--batch-size", "64", "--max-memory", "1GiB", "--out", str(tmp_path))
    assert rc == 0, err
    assert "test top-1" in out


@pytest.fixture
def checkpoint(tmp_path):
    spec = parse(TINY)
    meta = {"text": spec.text, "num_classes": 10, "in_chans": 1, "res": 28, "dataset": "mnist5k",
            "mean": [0.13], "std": [0.31], "recipe": "default", "run_id": "x", "lab_version": __version__}
    return save_checkpoint(tmp_path / "ckpt", build(spec, num_classes=10, in_chans=1), meta)


def test_probe_and_transfer_refuse_a_network_over_the_limit(capsys, checkpoint, tmp_path):
    rc, _, err = _cli(capsys, "probe", str(checkpoint), "--max-memory", "100kB")
    assert rc == 2 and "\n" not in err.strip()
    assert err.startswith(f"lab: error: '{checkpoint}' needs about ") and "to run at batch 256" in err
    rc, _, err = _cli(capsys, "transfer", "--from", str(checkpoint), "--dataset", "mnist5k", "--max-memory", "100kB",
                      "--out", str(tmp_path / "runs"))
    assert rc == 2 and "to run at batch 256" in err and "\n" not in err.strip()
    assert not (tmp_path / "runs").exists()
