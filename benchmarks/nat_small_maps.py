"""Neighbourhood attention on small maps: a NAT training step with the portable backend vs the
dense one (what "auto" picks on CPU for maps of <= 4 k^2 tokens), alternating step by step.

Setting: the lecture-claims study's NAT arm, `nat_mini@28px,w=0.25,d=0.75` (maps 7x7, 4x4, 2x2,
1x1 padded to the kernel), batch 64, one thread, forward + backward + SGD step.

    python benchmarks/nat_small_maps.py [--arch ARCH] [--batch 64] [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import lab.kernels.neighborhood as na
from lab.build import build
from lab.catalog import resolve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="nat_mini@28px,w=0.25,d=0.75")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = resolve(args.arch)
    model = build(spec, num_classes=10, in_chans=1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, 1, spec.res, spec.res)
    y = torch.randint(0, 10, (args.batch,))
    factors = {"portable": 0, "dense": na.DENSE_FACTOR}

    def step() -> float:
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {k: [] for k in factors}
    for r in range(args.rounds + 1):
        for name, factor in factors.items():
            na.DENSE_FACTOR = factor
            t = step()
            if r:   # the first round warms up
                times[name].append(t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"{args.arch}, batch {args.batch}, {args.threads} thread(s), median of {args.rounds} steps")
    for name, ms in med.items():
        print(f"  {name:9s} {ms:8.1f} ms/step  {args.batch / ms * 1e3:7.0f} images/s")
    print(f"  dense speed-up: {med['portable'] / med['dense']:.2f}x")


if __name__ == "__main__":
    main()
