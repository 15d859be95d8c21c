"""Throughput and peak memory of a grammar point, optionally against its timm reference.

Each measurement runs in a fresh process (so peak memory is that model's alone), and the lab's
and timm's runs alternate round by round. A round's speed is the median time of its steps; the
median of the rounds is reported. Ratios are
what to read: absolute figures on a shared machine are noisy.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import timm
import torch

from lab import catalog
from lab.build import build
from lab.errors import LabError
from lab.grammar.scale import scale


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _measure(who: str, ref: str, res: int, batch: int, device: str, steps: int, channels_last: bool) -> dict:
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
    loss_fn = torch.nn.CrossEntropyLoss()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base = _rss_mb()

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        outs = out if isinstance(out, tuple) else (out,)  # a distilled model trains two heads
        sum(loss_fn(o, y) for o in outs).backward()
        opt.step()

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
    for _ in range(2):
        train_step()
    sync()
    train_s = median_time(train_step)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    model.eval()
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        sync()
        infer_s = median_time(lambda: model(x))
    return {"train_ips": batch / train_s, "infer_ips": batch / infer_s, "peak_mb": peak}


def compare(ref: str, res: int | None = None, batch: int = 32, device: str = "cpu", steps: int = 10,
            rounds: int = 3, vs_timm: bool = False, channels_last: bool = False) -> dict:
    """Median images/s (train step, inference) and peak memory of the lab's model [and timm's]."""
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
    runs: dict[str, list[dict]] = {w: [] for w in who}
    ctx = mp.get_context("spawn")
    for r in range(rounds):
        for w in (who if r % 2 == 0 else who[::-1]):  # alternate the order against drift
            with ProcessPoolExecutor(1, mp_context=ctx) as ex:
                runs[w].append(ex.submit(_measure, w, ref, res, batch, device, steps, channels_last).result())
    med = {w: {k: statistics.median(m[k] for m in ms) for k in ms[0]} for w, ms in runs.items()}
    out = {"ref": ref, "res": res, "batch": batch, "device": device, "runs": med}
    if vs_timm:
        out["ratio"] = {"train": med["lab"]["train_ips"] / med["timm"]["train_ips"],
                        "infer": med["lab"]["infer_ips"] / med["timm"]["infer_ips"],
                        "peak": med["lab"]["peak_mb"] / med["timm"]["peak_mb"]}
    return out
