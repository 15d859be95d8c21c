"""torch.compile's training-step speed-up on this machine, and when it pays for its compilation.

For each point: the lab's model at a small resolution, random inputs and labels, SGD with momentum,
cross-entropy (the step `lab arch bench` times). Eager: 2 warm-up steps, then the median of
`--steps` timed steps. Compiled (torch.compile, inductor, a fresh empty cache per point so the
compilation is a cold one): the first step's seconds (the compilation and one step), then the
median of `--steps` steps. compile_s = first step - compiled median; a run gains from compiling
after break_even = compile_s / (eager step - compiled step) steps (never when compiled is not
faster). Each point runs in a fresh process, with `--threads` torch threads (default 1, a study
trial's default: --cpus-per-trial 1). On a loaded machine, 2 threads made the compiled steps 10-30x
slower than eager (inductor's OpenMP kernels spin-wait when the cores are taken; eager aten ops
degrade gracefully), while with 1 thread compiled was faster: see BENCHMARKS.md.

    nice python benchmarks/compile_speedup.py            # conv, ViT, Swin, NAT, and conv in channels_last
    nice python benchmarks/compile_speedup.py --threads 2
    nice python benchmarks/compile_speedup.py --points resnet18@32px --steps 10
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

POINTS = ("resnet18@32px", "resnet18@32px+cl", "vit_ti16@32px", "swin_t@64px", "nat_mini@32px")


def _step_times(model, x, y, steps: int, first: bool) -> tuple[float | None, float]:
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        return time.perf_counter() - t0

    first_s = step() if first else None
    if not first:
        step(), step()   # eager warm-up
    return first_s, statistics.median(step() for _ in range(steps))


def measure(point: str, batch: int, steps: int, compiled: bool, threads: int = 1) -> dict:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")   # a cold compilation
    import torch

    torch.set_num_threads(threads)
    from lab import build, resolve

    name, _, fmt = point.partition("+")
    torch.manual_seed(0)
    spec = resolve(name)
    model = build(spec, num_classes=10).train()
    x = torch.randn(batch, *spec.input_shape(3))
    if fmt == "cl":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    if compiled:
        model = torch.compile(model)
    first, median = _step_times(model, x, y, steps, first=compiled)
    return {"first_s": first, "step_s": median}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default=",".join(POINTS), help="catalog names @res (+cl: channels_last)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    print(f"batch {args.batch}, median of {args.steps} steps, {args.threads} torch thread(s), {os.cpu_count()} CPUs "
          f"(shared; load average {os.getloadavg()[0]:.1f} at start), inductor cold cache")
    print(f"{'point':22} {'eager ms':>9} {'compiled ms':>12} {'speed-up':>9} {'compile s':>10} {'break-even':>11}")
    for point in args.points.split(","):
        runs = {}
        for compiled in (False, True):
            with ProcessPoolExecutor(1, mp_context=ctx) as ex:
                runs[compiled] = ex.submit(measure, point, args.batch, args.steps, compiled, args.threads).result()
        eager, comp = runs[False]["step_s"], runs[True]["step_s"]
        compile_s = runs[True]["first_s"] - comp
        gain = eager - comp
        even = f"{compile_s / gain:.0f} steps" if gain > 0 else "never"
        print(f"{point:22} {1e3 * eager:9.1f} {1e3 * comp:12.1f} {eager / comp:8.2f}x {compile_s:10.1f} {even:>11}",
              flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
