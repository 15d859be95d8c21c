"""`lab train`'s loop vs a bare PyTorch loop, and the input pipeline vs the training step.

Same model (same text and seed), batch size and optimizer (AdamW, the recipe's parameter groups and
rate), data already on the device. The lab's figure is the run record's images/s (training epochs:
batching, augmentation, Lightning, steps; not evaluation); the bare loop only slices, normalizes
and steps. Rounds alternate lab / bare; medians are reported.

    PYTHONPATH=. python benchmarks/train_loop.py --epochs 2 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import lab
from lab.data import Augment, load_dataset
from lab.train.optim import make_optimizer
from lab.train.recipes import recipe
from lab.train.run import train

POINTS = {
    "resnet": "@28 | conv(c=32,k=3),bn,relu | basic 1x32, 1x64/2, 1x128/2 | gap,fc",
    "vit": "@28 | patch(p=7,c=64),cls,pos | mhsa(h=4) 4x64 | ln,token,fc",
}


def bare_loop(text: str, ds, epochs: int, batch: int, device: torch.device) -> float:
    """Images/s of the plainest loop: slice, normalize, forward, cross-entropy, backward, AdamW step."""
    torch.manual_seed(0)
    model = lab.build(lab.parse(text), num_classes=ds.num_classes, in_chans=ds.in_chans).to(device)
    opt = make_optimizer(model, recipe("default"))
    images, labels = ds.train.images.to(device), ds.train.labels.to(device)
    mean = torch.tensor(ds.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, device=device).view(1, -1, 1, 1)
    n = (len(labels) // batch) * batch
    seen, start = 0, time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(len(labels), device=device)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            x = (images[idx].float() / 255 - mean) / std
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += batch
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def pipeline_only(ds, batch: int, res: int, device: torch.device, epochs: int) -> float:
    """Images/s of batching + the default recipe's training augmentation alone."""
    aug = Augment(ds, res=res, train=True, crop="pad", pad=2)
    gen = torch.Generator(device=device).manual_seed(0)
    seen, start = 0, time.perf_counter()
    for epoch in range(epochs):
        for images, _ in ds.train.batches(batch, shuffle=True, seed=0, epoch=epoch, device=device, drop_last=True):
            aug(images, generator=gen)
            seen += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--points", nargs="+", default=list(POINTS), choices=list(POINTS))
    args = p.parse_args()
    device = torch.device(args.device)
    ds = load_dataset("mnist5k")
    print(f"mnist5k, {ds.n_train} train images, batch {args.batch}, {args.epochs} epochs, {args.rounds} rounds, "
          f"device {device}, torch threads {torch.get_num_threads()}")
    for name in args.points:
        text = POINTS[name]
        labs, bares = [], []
        for _ in range(args.rounds):
            rec = train(text, "mnist5k", epochs=args.epochs, batch_size=args.batch, device=args.device, out=None).record
            labs.append(rec["images_per_second"])
            bares.append(bare_loop(text, ds, args.epochs, args.batch, device))
        lab_ips, bare_ips = statistics.median(labs), statistics.median(bares)
        pipe = statistics.median(pipeline_only(ds, args.batch, 28, device, args.epochs) for _ in range(args.rounds))
        print(f"{name:7s} lab train {lab_ips:8.0f} img/s | bare loop {bare_ips:8.0f} img/s | ratio {lab_ips / bare_ips:.3f} | "
              f"pipeline alone {pipe:10.0f} img/s = {pipe / lab_ips:.0f}x the training step")


if __name__ == "__main__":
    main()
