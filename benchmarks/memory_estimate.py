"""How lab.memory's estimate compares with the memory one step actually allocates, on the CPU.

For each point: the allocator's peak during one AdamW training step (torch.profiler's memory events,
plus the weights, buffers and input that exist before it) and during one no-grad forward, divided
by `training_memory(...).total` and `inference_memory(...).total`. A ratio below 1 means the
estimate is on the safe side (what the refusals need); far below 1, it refuses points that would fit.

    python benchmarks/memory_estimate.py               # batch 16
    python benchmarks/memory_estimate.py --batch 64
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import tempfile
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from lab.build import build
from lab.catalog import resolve
from lab.memory import format_size, inference_memory, training_memory

POINTS = {
    "conv": "@28 | conv(c=16,k=3),bn,relu | basic 1x16, 1x32/2 | gap,fc",
    "conv2": "@32 | conv(c=32,k=3),bn,relu | basic 2x32, 2x64/2 | gap,fc",
    "vit": "@28 | patch(p=7,c=64),cls,pos | mhsa(h=4) 4x64 | ln,token,fc",
    "vit-p4": "@32 | patch(p=4,c=64),cls,pos | mhsa(h=4) 4x64 | ln,token,fc",
    "mixer": "@28 | patch(p=2,c=96) | mixer(tok=0.25,mlp=2) 4x96 | ln,gap,fc",
    "convnext": "convnext_t@32px,w=0.25",
    "swin": "swin_t@32px,w=0.25",
    "mbconv": "efficientnet_b0@32px,w=0.5",
    "resnet50": "resnet50@32px,w=0.25",
}


def allocated_peak(fn: Callable[[], object]) -> int:
    """Peak bytes the CPU allocator held above its level at the start of `fn`."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as fh:
            events = json.load(fh)["traceEvents"]
    finally:
        os.remove(path)
    deltas = [e["args"]["Bytes"] for e in events if e.get("name") == "[memory]"]
    return max(itertools.accumulate(deltas, initial=0))


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def forward(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"batch {args.batch}, 3x{{28,32}} px, 10 classes, fp32, AdamW; ratio = measured / estimated")
    for name, text in POINTS.items():
        spec = resolve(text)
        model = build(spec, num_classes=10, in_chans=3).train()
        x = torch.randn(args.batch, 3, spec.res, spec.res)
        y = torch.randint(0, 10, (args.batch,))
        opt = torch.optim.AdamW(model.parameters())
        resident = (sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))
                    + x.numel() * x.element_size())

        train = allocated_peak(functools.partial(train_step, model, opt, x, y)) + resident
        model.eval()
        infer = allocated_peak(functools.partial(forward, model, x)) + resident
        t_est = training_memory(spec, args.batch, 10, 3).total
        i_est = inference_memory(spec, args.batch, 10, 3).total
        print(f"{name:9s} train {format_size(train):>9s} / {format_size(t_est):>9s} = {train / t_est:.2f}   "
              f"inference {format_size(infer):>9s} / {format_size(i_est):>9s} = {infer / i_est:.2f}")


if __name__ == "__main__":
    main()
