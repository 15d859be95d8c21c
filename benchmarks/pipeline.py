"""Images per second of the input pipeline alone, on the CPU: `split.batches(...)` (shuffled
uint8 batches) followed by `Augment(train=True)` (crop, flip, resize, normalize to float32).
Nothing else runs, so the figure is the ceiling the pipeline puts on a training step.

    python benchmarks/pipeline.py                      # mnist5k: res 28 crop=pad, res 32 crop=rrc
    python benchmarks/pipeline.py --dataset cifar10 --res 32 --crop pad --batch 256
"""

from __future__ import annotations

import argparse
import time

import torch

from lab.data import Augment, load_dataset


def rate(split, aug: Augment, batch: int, seconds: float) -> float:
    """Images/s over whole epochs (a new permutation each), after one warm-up batch."""
    g = torch.Generator().manual_seed(0)
    images, _ = next(iter(split.batches(batch, shuffle=True)))
    aug(images, g)
    n, epoch, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for images, labels in split.batches(batch, shuffle=True, seed=0, epoch=epoch, drop_last=True):
            x = aug(images, g)
            n += x.shape[0]
        epoch += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist5k", help="dataset string (default mnist5k)")
    p.add_argument("--res", type=int, nargs="*", help="output resolution(s); default: 28 and 32")
    p.add_argument("--crop", nargs="*", choices=["pad", "rrc", "resize", "none"], help="crop per --res; default: pad at 28, rrc at 32")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=3.0, help="time per configuration")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    res = args.res or [28, 32]
    crops = args.crop or (["pad", "rrc"] if not args.res else ["pad"] * len(res))
    if len(crops) == 1:
        crops = crops * len(res)
    if len(crops) != len(res):
        p.error("give one --crop, or one per --res")
    t = time.perf_counter()
    ds = load_dataset(args.dataset)
    print(f"{ds} loaded in {time.perf_counter() - t:.2f} s; {args.threads} threads")
    for r, crop in zip(res, crops):
        aug = Augment(ds, res=r, train=True, crop=crop)
        ips = rate(ds.train, aug, args.batch, args.seconds)
        print(f"{ds.name} res={r} crop={crop} batch={args.batch}: {ips:,.0f} images/s  ({aug})")


if __name__ == "__main__":
    main()
