"""Throughput and peak memory of a grammar point, optionally against its timm reference.

Each measurement runs in a fresh process (so peak memory is that model's alone), and the lab's
and timm's runs alternate round by round. A round's speed is the median time of its steps; the
median of the rounds is reported. Ratios are
what to read: absolute figures on a shared machine are noisy.

Both models run under the same settings: `precision` (32, or bf16-mixed / 16-mixed: the forward and
the loss under torch.autocast, 16-mixed with a GradScaler), `compile` (torch.compile of the model;
its compilation, the warm-up steps' extra seconds, is reported as compile_s) and `channels_last`.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager, nullcontext

import timm
import torch

from lab import catalog
from lab.build import build
from lab.errors import LabError
from lab.grammar.scale import scale
from lab.memory import precision_name

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}   # lab.memory's names -> autocast's dtype


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _autocast(device: str, precision: str) -> AbstractContextManager:
    if precision not in AUTOCAST:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AUTOCAST[precision])


def training_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, device: str,
                  precision: str = "32", loss_fn: Callable | None = None) -> Callable[[], None]:
    """One training step of `model` on the batch (x, y) as a call: gradients set to None, the forward and
    loss under `precision`'s autocast (a distilled model trains both heads), backward (through a
    GradScaler under 16-mixed) and the optimizer's step. The benchmarks' one definition of a step."""
    loss_fn = loss_fn or torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(torch.device(device).type) if precision == "16-mixed" else None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            out = model(x)
            loss = sum(loss_fn(o, y) for o in (out if isinstance(out, tuple) else (out,)))
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    return step


def _measure(who: str, ref: str, res: int, batch: int, device: str, steps: int, channels_last: bool,
             precision: str = "32", compile: bool = False) -> dict:
    torch.manual_seed(0)
    spec = scale(catalog.resolve(ref), res=res)
    if who == "lab":
        model = build(spec)
    else:
        # transformers fix their position embeddings / windows to the input size
        sized = {"img_size": res} if any(op.patchifies for op in spec.stem) else {}
        model = timm.create_model(catalog.entries()[ref].timm, pretrained=False, **sized)
    model = model.to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, *spec.input_shape(3), device=device)
    x = x.contiguous(memory_format=fmt) if x.dim() == 4 else x
    y = torch.randint(0, 1000, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    eager = model
    if compile:
        model = torch.compile(model)
    loss_fn = torch.nn.CrossEntropyLoss()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base = _rss_mb()

    train_step = training_step(model, x, y, opt, device, precision, loss_fn)

    def median_time(step) -> float:
        """Median seconds per step: robust to the hiccups of a shared machine."""
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    model.train()
    t0 = time.perf_counter()
    for _ in range(2):
        train_step()
    sync()
    warm_s = time.perf_counter() - t0
    train_s = median_time(train_step)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    eager.eval()
    with torch.inference_mode(), _autocast(device, precision):
        t0 = time.perf_counter()
        for _ in range(2):
            model(x)
        sync()
        warm_s += time.perf_counter() - t0
        infer_s = median_time(lambda: model(x))
    out = {"train_ips": batch / train_s, "infer_ips": batch / infer_s, "peak_mb": peak}
    if compile:   # the warm-up calls beyond two timed steps each: training's and inference's compilation
        out["compile_s"] = max(0.0, warm_s - 2 * (train_s + infer_s))
    return out


def compare(ref: str, res: int | None = None, batch: int = 32, device: str = "cpu", steps: int = 10,
            rounds: int = 3, vs_timm: bool = False, channels_last: bool = False, precision: str = "32",
            compile: bool = False) -> dict:
    """Median images/s (train step, inference) and peak memory of the lab's model [and timm's], both in
    `precision` (32, bf16-mixed or bf16, 16-mixed or 16; auto: bf16-mixed on a GPU that has it, else 32)
    and, with `compile`, through torch.compile (then also compile_s, the seconds it took)."""
    if str(precision).strip().lower() == "auto":
        precision = "bf16-mixed" if device.startswith("cuda") and torch.cuda.is_available() and \
            torch.cuda.is_bf16_supported() else "32"
    precision = precision_name(precision, "--precision")
    spec = catalog.resolve(ref)
    res = res or spec.res
    who = ["lab"]
    if vs_timm:
        entry = catalog.entries().get(ref)
        if entry is None or not entry.timm:
            raise LabError(f"--vs timm needs a named architecture with a timm reference, got {ref!r}")
        who.append("timm")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LabError(f"device {device!r} requested but CUDA is not available")
        if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
            raise LabError(f"--precision bf16-mixed: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                           "use --precision 16-mixed or 32")
    runs: dict[str, list[dict]] = {w: [] for w in who}
    ctx = mp.get_context("spawn")
    for r in range(rounds):
        for w in (who if r % 2 == 0 else who[::-1]):  # alternate the order against drift
            with ProcessPoolExecutor(1, mp_context=ctx) as ex:
                runs[w].append(ex.submit(_measure, w, ref, res, batch, device, steps, channels_last, precision,
                                         compile).result())
    med = {w: {k: statistics.median(m[k] for m in ms) for k in ms[0]} for w, ms in runs.items()}
    out = {"ref": ref, "res": res, "batch": batch, "device": device, "precision": precision, "compile": compile,
           "channels_last": channels_last, "runs": med}
    if vs_timm:
        out["ratio"] = {"train": med["lab"]["train_ips"] / med["timm"]["train_ips"],
                        "infer": med["lab"]["infer_ips"] / med["timm"]["infer_ips"],
                        "peak": med["lab"]["peak_mb"] / med["timm"]["peak_mb"]}
    return out
