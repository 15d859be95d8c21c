"""Memory estimates (lab.memory) against what torch allocates, and the refusal of a point that cannot fit.

What is measured, on the CPU (no CUDA here): the tensors autograd saves for backward during one
forward (saved_tensors_hooks, each storage once, parameters left out), against each kind's own count
(Kind.saved, Block.saved_unit via lab.cost.saved): measured 0.95-1.04 x for every kind, in float32
and under CPU bfloat16 autocast (the batch-independent part, weight standardization's and autocast's
weight copies, taken out by differencing two batch sizes); the exact bytes of the weights, gradients
and AdamW state after one step; and the peak of torch's CPU allocator during one training step and
one no-grad forward, from the profiler's memory events (bytes allocated and freed while it records,
plus the weights and input that exist before): training measured 0.9-1.0 x the estimate for the
tiny points here, 0.86-1.19 x (float32) over the 26 points of benchmarks/memory_check.py. Not measured: the
process's RSS, the CUDA caching allocator's rounding and fragmentation.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from support import run_cli
from torch import nn
from torch.profiler import ProfilerActivity, profile

import lab.train.run as run_module
from lab import __version__
from lab.build import build
from lab.catalog import resolve as lab_resolve
from lab.cost import saved, steps, totals
from lab.errors import LabError, TrainError
from lab.grammar import parse
from lab.kinds.base import Saved
from lab.memory import (
    OVERHEAD,
    PRECISIONS,
    available_memory,
    check_fits,
    format_size,
    inference_memory,
    parse_size,
    precision_name,
    require_fits,
    training_memory,
)
from lab.study.config import StudyConfig
from lab.study.search import trial_memory
from lab.study.store import ADDED_COLUMNS, TRIAL_SCHEMA, StudyStore
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


def _saved_bytes(model: nn.Module, x: torch.Tensor, bf16: bool = False) -> int:
    """Bytes of the tensors one forward saves for backward, each storage once, parameters left out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
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

    # activations kept for backward: each kind's count of what autograd saves (measured 0.98-1.01 here)
    kept = _saved_bytes(model, x)
    assert 0.95 < kept / est.activations < 1.05, (kept, est.activations)

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

    # the whole step's allocator peak (the first step: AdamW's state allocated in it): measured 0.9-1.0 x
    assert 0.8 < peak / est.total < 1.2, (format_size(peak), format_size(est.total))


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


# TINY on 1 x 28 x 28: what each element keeps for backward, counted by hand (elements per image):
# conv: its input 784; bn: its input 8x28x28; relu: its output 8x28x28 (kept: the block's first conv
# saves it again at no cost); basic 1x8: 4 x 8x28x28 (each conv's output as its norm's input and as a
# ReLU's output); basic 1x16/2: 4 x 16x14x14 and the projection's output 16x14x14; gap: its input,
# the ReLU's output already kept; fc: its pooled input 16.
TINY_SAVED = 784 + 6272 + 6272 + 4 * 6272 + 5 * 3136 + 16


def test_the_parts_of_an_estimate_follow_the_stated_formula():
    spec = parse(TINY)
    params = totals(spec, 10, 1).params
    assert sum(saved(spec, 10, 1), Saved()) == Saved(TINY_SAVED, 0, 0)
    adam, sgd = (training_memory(spec, 32, 10, 1, optimizer=o) for o in ("adamw", "sgd"))
    assert adam.weights == 4 * params * 4 and sgd.weights == 3 * params * 4
    assert adam.activations == 32 * 4 * TINY_SAVED
    # the peak: weights and state, the most activations and gradients alive at once, the working set
    grads = [4 * s.cost.params for s in steps(spec, 10, 1)]
    acts = [32 * 4 * k.elements for k in saved(spec, 10, 1)]
    together = max(sum(acts[:j]) + sum(grads[j:]) for j in range(len(grads) + 1))
    assert together == adam.together and sum(acts) <= together <= sum(acts) + sum(grads)
    assert adam.total == pytest.approx(OVERHEAD * (adam.weights - sum(grads) + together + adam.transient), abs=1)
    assert 0 < adam.transient < adam.activations
    ema = training_memory(spec, 32, 10, 1, ema=True)
    assert ema.weights == adam.weights + 4 * params
    # bf16 autocast: 2-byte activations, a 2-byte weight copy, the float32 batch beside its copy
    mixed = training_memory(spec, 32, 10, 1, precision="bf16-mixed")
    assert mixed.activations == 32 * (2 * TINY_SAVED + 4 * 784) and mixed.weights == adam.weights + 2 * params
    assert training_memory(spec, 64, 10, 1).activations == 2 * adam.activations
    with pytest.raises(LabError, match="precision 'fp8'"):
        training_memory(spec, 32, precision="fp8")


# one tiny point per kind (and the ops that make and merge tokens, pool, and widen the stream)
KIND_POINTS = {
    "basic": "@16 | conv(c=8,k=3),bn,relu,maxpool | basic 1x8, 1x16/2 | gap,fc",
    "bottleneck": "@16 | conv(c=8,k=3),bn,relu | bottleneck(e=2,g=2,se=0.25) 2x16, 1x32/2 | gap,fc",
    "bottleneck-gn-ws": "@16 | conv(c=8,k=3,ws=1),gn(g=4),relu | bottleneck(norm=gn,ws=1,e=2) 2x32 | gap,fc",
    "preact": "@16 | conv(c=8,k=3) | preact(e=2,norm=bn,ws=0) 2x16, 1x32/2 | bn,relu,gap,fc",
    "dense": "@16 | conv(c=16,k=3),bn,relu | dense 3x8, 2x8/(bn,relu,conv(k=1,r=0.5),avgpool) | bn,relu,gap,fc",
    "mbconv": "@16 | conv(c=8,k=3),bn,silu | mbconv(e=4,k=3) 2x8, 1x16/2 | gap,fc",
    "convnext": "@16 | conv(c=16,k=2,s=2),ln | convnext(k=3) 2x16, 1x32/(ln,conv(k=2,s=2)) | gap,ln,fc",
    "mhsa": "@16 | patch(p=4,c=32),cls,pos | mhsa(h=2) 2x32 | ln,token,fc",
    "mixer": "@16 | patch(p=2,c=16) | mixer(tok=0.5,mlp=2) 2x16 | ln,gap,fc",
    "swin": "@16 | patch(p=2,c=16),ln | swin(w=4,hd=8) 2x16, 2x32/merge | ln,gap,fc",
    # the portable kernel on 16x16 and 8x8 tokens, the dense one on 4x4
    "nat": "@32 | patch(p=2,c=16),ln | nat(k=3,hd=8) 1x16, 1x32/merge, 1x64/merge | ln,gap,fc",
}


@pytest.mark.parametrize("name", list(KIND_POINTS))
def test_each_kinds_count_of_what_backward_keeps_matches_autograd(name):
    spec = parse(KIND_POINTS[name])
    model = build(spec, num_classes=10, in_chans=3).train()
    kept = sum(saved(spec, 10, 3), Saved())
    x2, x4 = (torch.randn(b, 3, spec.res, spec.res) for b in (2, 4))
    for precision, bf16 in (("32", False), ("bf16-mixed", True)):
        # two batch sizes apart: what does not grow with the batch (weight copies) drops out
        per_image = (_saved_bytes(model, x4, bf16) - _saved_bytes(model, x2, bf16)) / 2
        low, full = PRECISIONS[precision][1], 4
        predicted = kept.low * low + kept.full * full + kept.int64 * 8
        assert 0.93 < per_image / predicted < 1.07, (precision, per_image, predicted)


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


def test_arch_show_prints_the_predicted_training_memory(capsys):
    ref = "resnet18@32px,w=0.25"
    expected = training_memory(lab_resolve(ref), 64, 1000, 3)
    rc, out, err = _cli(capsys, "arch", "show", ref)
    assert rc == 0, err
    assert f"training memory (predicted, AdamW): {expected.describe()}" in out
    assert expected.describe().startswith(f"{format_size(expected.total)} to train at batch 64 (")
    mixed = training_memory(lab_resolve(ref), 8, 1000, 3, precision="bf16-mixed")
    rc, out, _ = _cli(capsys, "arch", "show", ref, "--batch-size", "8", "--precision", "bf16")
    assert rc == 0 and f"{mixed.describe()}" in out and "precision bf16-mixed" in out
    rc, out, _ = _cli(capsys, "arch", "show", ref, "--json", "--precision", "16")
    memory = json.loads(out)["memory"]
    assert memory["total"] == training_memory(lab_resolve(ref), 64, 1000, 3, precision="16-mixed").total
    assert memory["batch_size"] == 64 and memory["precision"] == "16-mixed" and memory["optimizer"] == "adamw"
    rc, out, err = _cli(capsys, "arch", "show", ref, "--precision", "fp8")
    assert rc == 2 and out == ""
    assert err.strip() == "lab: error: --precision 'fp8': expected 32, bf16-mixed (bf16) or 16-mixed (16)"


def test_precision_names_and_their_aliases():
    assert [precision_name(p) for p in ("32", "bf16", "bf16-mixed", "16", "16-mixed")] == \
        ["32", "bf16-mixed", "bf16-mixed", "16-mixed", "16-mixed"]
    assert all(precision_name(p) in PRECISIONS for p in ("32", "bf16", "16"))
    with pytest.raises(LabError, match=r"^--speed 'half': expected 32"):
        precision_name("half", "--speed")


def test_a_trial_row_carries_its_predicted_memory(tmp_path, capsys):

    spec = parse(TINY)
    memory = trial_memory(32, 10, 1, optimizer="sgd")
    assert memory(spec) == training_memory(spec, 32, 10, 1, optimizer="sgd").total
    assert TRIAL_SCHEMA.field("memory").type == pa.int64() and "memory" in ADDED_COLUMNS
    store = StudyStore(tmp_path / "s")
    store.save_config(StudyConfig(name="s", space="hybrid", dataset="mnist5k", trials=2).to_dict())
    store.write_trial({"number": 1, "state": "complete", "text": spec.text, "memory": memory(spec),
                       "val_top1": 0.9, "macs": 10**6})
    # a table written before the column existed reads it as null
    old = pa.Table.from_pylist([{"number": 2, "state": "complete", "val_top1": 0.95, "macs": 10**7}],
                               schema=TRIAL_SCHEMA.remove(TRIAL_SCHEMA.get_field_index("memory")))
    pq.write_table(old, store.folder / "trials" / "part-000002.parquet")
    assert [r["memory"] for r in store.trials().to_pylist()] == [memory(spec), None]
    # the study's listing shows it beside params, empty for the old row
    rc, out, err = run_cli(capsys, "study", "show", "s", "--root", str(tmp_path))
    assert rc == 0, err
    header = next(line for line in out.splitlines() if line.startswith("#"))
    assert header.split()[:8] == ["#", "val", "top-1", "test", "top-1", "MMACs", "params", "(M)"]
    assert "memory" in header and format_size(memory(spec)) in out


def _memory_check():
    """benchmarks/memory_check.py as a module."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_check.py"
    spec = importlib.util.spec_from_file_location("memory_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_measures_a_point_against_its_prediction():
    check = _memory_check()
    assert len(check.POINTS) >= 20 and len({ref.split("@")[0] for ref, _ in check.POINTS}) >= 15
    assert {b for _, b in check.POINTS} >= {8, 32, 64}
    row = check.measure(TINY.replace("@28", "@16"), 8, "cpu", "32")   # in this process: what each spawned one runs
    assert row["predicted"] == training_memory(parse(TINY.replace("@28", "@16")), 8, 10, 3).total
    assert 0.8 < row["ratio"] < 1.2, row   # measured 0.96
    dist = check.distribution([0.7, 0.9, 1.0, 1.1, 1.3])
    assert dist == {"n": 5, "min": 0.7, "median": 1.0, "max": 1.3, "within_20pct": 0.6}


def test_the_benchmark_without_cuda_says_so_in_one_line(monkeypatch, capsys):
    check = _memory_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check.main(["--device", "cuda", "--points", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("memory_check: error: --device cuda: no CUDA device is visible")
    assert check.main(["--precision", "half"]) == 2
    assert "--precision 'half'" in capsys.readouterr().err
