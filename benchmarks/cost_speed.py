"""How many specs the analytic cost model handles per second on one core.

Constructing a Spec validates it by walking every element's shape and cost; `totals` then
sums the walk. Both are timed, over every named architecture and over scaled variants.

    python benchmarks/cost_speed.py
"""

from __future__ import annotations

import time

import torch

import lab
from lab.cost import totals


def rate(specs: list[lab.Spec], seconds: float = 3.0) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for s in specs:
            totals(lab.Spec(s.res, s.stem, s.stages, s.head))  # re-validate and cost from scratch
            n += 1
    return n / (time.perf_counter() - t0)


if __name__ == "__main__":
    torch.set_num_threads(1)
    named = [lab.named(n) for n in lab.names()]
    small = [lab.resolve(f"{n}@32px,w=0.25,d=0.5") for n in lab.names()]
    print(f"named architectures ({len(named)}): {rate(named):,.0f} specs/s")
    print(f"scaled variants @32px,w=0.25,d=0.5 ({len(small)}): {rate(small):,.0f} specs/s")
