"""Data at scale (issue 23): a generated 100,000-image imagefolder (32 px, 10 classes), its index
built once and cached, decoding in DataLoader workers, the whole input pipeline, and a small
model's training step at 32 px measured in the same run.

    nice python benchmarks/data_pipeline.py                       # folder under /tmp, reused when present
    nice python benchmarks/data_pipeline.py --root /data/gen --n 20000 --format jpeg --workers 1 2 4

Prints: the folder's generation time (or that it was reused); index build (first load: every header
read) vs a cached load (a stat walk and the cache read), both streaming (memory_budget=0, so a load
is the index plus the fixed 2,000-image statistics sample); decode throughput in images/s of
`split.batches` over the streaming training split with 0 (this process), 1 and N worker processes;
the full pipeline (workers decode, `Augment(train, crop=pad)` to normalized float batches); the
training step (forward, backward, AdamW) of `--arch` at 32 px, batch `--batch`, on the CPU, on
in-memory batches; and the ratio pipeline / step (target >= 5).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

CLASSES = 10


def _write_class(args: tuple[str, int, int, int, str]) -> int:
    """One class folder of images: 32 px noise around a class-coloured blob (PIL, in a worker)."""
    from PIL import Image

    root, c, n, side, fmt = args
    rng = np.random.default_rng(c)
    folder = os.path.join(root, f"class{c:02d}")
    os.makedirs(folder, exist_ok=True)
    ext = "png" if fmt == "png" else "jpg"
    yy, xx = np.mgrid[:side, :side]
    for i in range(n):
        cy, cx = rng.integers(8, side - 8, 2)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < 36)[..., None] * np.array([(c * 25) % 256, (c * 70) % 256, 255 - c * 20])
        img = np.clip(rng.normal(96, 40, (side, side, 3)) + blob * 0.6, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(folder, f"{i:06d}.{ext}"), **({"quality": 90} if ext == "jpg" else {}))
    return n


def generate(root: str, n: int, side: int, fmt: str, procs: int) -> str:
    """The folder (made by `procs` processes, one class each at a time), or reused when complete."""
    marker = os.path.join(root, f".complete-{n}-{side}-{fmt}")
    if os.path.exists(marker):
        return f"reused {root}"
    if os.path.exists(root):
        shutil.rmtree(root)
    t = time.perf_counter()
    per = [n // CLASSES + (c < n % CLASSES) for c in range(CLASSES)]
    with ProcessPoolExecutor(procs) as pool:
        made = sum(pool.map(_write_class, [(root, c, per[c], side, fmt) for c in range(CLASSES)]))
    open(marker, "w").close()
    return f"generated {made:,} {fmt} images in {time.perf_counter() - t:.1f} s ({procs} processes) under {root}"


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def rate(split, batch: int, workers: int, seconds: float, aug=None) -> float:
    """Images/s of `split.batches` (shuffled, streaming) over at least `seconds`, workers started
    inside the timing (one DataLoader per epoch, as training makes them), optionally augmented."""
    g = torch.Generator().manual_seed(0)
    n, epoch, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for images, _ in split.batches(batch, shuffle=True, seed=0, epoch=epoch, drop_last=True, workers=workers):
            x = aug(images, g) if aug is not None else images
            n += x.shape[0]
            if time.perf_counter() - t0 > seconds:
                break
        epoch += 1
    return n / (time.perf_counter() - t0)


def step_rate(arch: str, batch: int, steps: int, num_classes: int) -> float:
    """Training images/s of `arch`: forward, cross-entropy, backward, AdamW step, on random
    normalized batches already in memory (after 3 warm-up steps)."""
    import lab

    torch.manual_seed(0)
    model = lab.build(lab.resolve(arch), num_classes=num_classes, in_chans=3).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, num_classes, (batch,))

    def one() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        one()
    t = time.perf_counter()
    for _ in range(steps):
        one()
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/tmp/lab-imagefolder-100k", help="where the folder is made (reused when complete)")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--format", choices=["png", "jpeg"], default="png")
    p.add_argument("--procs", type=int, default=min(4, os.cpu_count() or 1), help="processes generating the folder")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, min(4, os.cpu_count() or 1)],
                   help="DataLoader worker counts to measure decoding with (0: this process)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=8.0, help="time per throughput measurement")
    p.add_argument("--arch", nargs="+", default=["resnet18@32px", "resnet18@32px,w=0.25"],
                   help="the models whose training step is measured")
    p.add_argument("--in-memory", action="store_true", help="also time an in-memory load (every image decoded)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--pipeline-threads", type=int, default=1,
                   help="torch threads while augmenting in the ratio's pipeline figure (tiny batches: 1 is fastest)")
    args = p.parse_args()

    from lab.data import Augment, load_dataset
    from lab.data.index import NAME, home_cache

    print(generate(args.root, args.n, 32, args.format, args.procs))
    print(f"load average {os.getloadavg()[0]:.1f} at start; {os.cpu_count()} CPUs; torch {torch.get_num_threads()} threads")
    for cache in (os.path.join(args.root, NAME), home_cache(os.path.abspath(args.root), ".parquet")):
        if os.path.exists(cache):
            os.remove(cache)  # the first load builds the index
    name = f"imagefolder:{args.root}"
    path = os.path.abspath(args.root)
    from lab.data import imagefolder, index

    _, first = timed(lambda: imagefolder.load(name, path, None, 0))
    _, cached = timed(lambda: imagefolder.load(name, path, None, 0))
    classes = sorted(d for d in os.listdir(path) if not d.startswith("."))
    _, walk = timed(lambda: index.walk(path, classes))
    print(f"index of {args.n:,} files: first build {first:.2f} s (every header read), cached {cached:.2f} s "
          f"({first / cached:.1f}x faster; of which the stat walk {walk:.2f} s)")
    ds, streaming = timed(lambda: load_dataset(name, memory_budget=0))
    print(f"load_dataset(streaming), cached index: {streaming:.2f} s (index + the 2,000-image statistics sample); {ds}")
    if args.in_memory:
        mem, in_memory = timed(lambda: load_dataset(name))
        print(f"load_dataset(in memory), cached index: {in_memory:.2f} s (every image decoded, threads); {mem}")
        del mem

    train = ds.train
    decode_rates = {}
    for w in args.workers:
        decode_rates[w] = rate(train, args.batch, w, args.seconds)
        print(f"decode: {w} worker{'s' if w != 1 else ''}{' (this process)' if w == 0 else ''}: {decode_rates[w]:,.0f} images/s")
    best = max(decode_rates, key=decode_rates.get)  # type: ignore[arg-type]
    aug = Augment(ds, res=32, train=True, crop="pad")
    threads = torch.get_num_threads()
    pipes = {}
    for t in sorted({args.pipeline_threads, threads}):
        torch.set_num_threads(t)  # the training process's intra-op threads while it augments
        pipes[t] = rate(train, args.batch, best, args.seconds, aug)
        print(f"pipeline ({best} workers decode; {aug} with {t} torch thread{'s' if t > 1 else ''}): {pipes[t]:,.0f} images/s")
    torch.set_num_threads(threads)
    pipe = pipes[args.pipeline_threads]
    for arch in args.arch:
        step = step_rate(arch, args.batch, args.steps, ds.num_classes)
        print(f"training step of {arch}, batch {args.batch}, CPU, {threads} threads, AdamW: {step:,.0f} images/s; "
              f"pipeline / step: {pipe / step:.1f}x (target >= 5x)")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")

if __name__ == "__main__":
    main()
