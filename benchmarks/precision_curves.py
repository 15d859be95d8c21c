"""Training-loss curves under each --precision and --compile, against fp32's, on mnist5k.

The same seeded run (`lab.train.run.prepare` + `fit`: the lab's recipe, augmentation, data order)
of a small ResNet trained for `--epochs` epochs (about 70 steps each at batch 64), once per
setting: 32 (the reference), bf16-mixed, 16-mixed (float16 autocast with a GradScaler, on a CPU
too) and 32 compiled. Every step's training loss is kept (a Lightning callback); the curves are
smoothed by an exponential moving average (alpha 0.05, bias-corrected) and compared with fp32's:
the largest absolute difference over the steps after the first 20, against TOLERANCE.

    nice python benchmarks/precision_curves.py --epochs 4     # 1 torch thread (--threads)
"""

from __future__ import annotations

import argparse
import os
import time

import lightning as L
import torch

from lab.train.run import fit, prepare

POINT = "@28 | conv(c=16,k=3),bn,relu | basic 1x16, 1x32/2, 1x64/2 | gap,fc"
SETTINGS = {"32": {}, "bf16-mixed": {"precision": "bf16"}, "16-mixed": {"precision": "16"},
            "32+compile": {"compile": True}}
TOLERANCE = 0.05   # nats: the smoothed curves' largest gap we call agreement (mean loss falls 2.3 -> ~0.1)
ALPHA = 0.05


class StepLoss(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def smooth(xs: list[float]) -> list[float]:
    out, m = [], 0.0
    for i, x in enumerate(xs, 1):
        m = (1 - ALPHA) * m + ALPHA * x
        out.append(m / (1 - (1 - ALPHA) ** i))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: see compile_speedup.py)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    curves: dict[str, list[float]] = {}
    print(f"{POINT} on mnist5k, {args.epochs} epochs at batch {args.batch}, recipe default, seed 0, "
          f"{args.threads} torch thread(s), load average {os.getloadavg()[0]:.1f}")
    print(f"{'setting':12} {'steps':>5} {'seconds':>8} {'first loss':>10} {'last smoothed':>13} {'max |diff| vs 32':>17}"
          f" {'at step':>7} {'val top-1':>9}")
    for name in args.settings.split(","):
        p = prepare(POINT, "mnist5k", epochs=args.epochs, batch_size=args.batch, device="cpu", seed=0, **SETTINGS[name])
        steps = StepLoss()
        t0 = time.perf_counter()
        fitted = fit(p, callbacks=[steps])
        seconds = time.perf_counter() - t0
        curves[name] = smooth(steps.losses)
        ref = curves.get("32")
        gap, at = (max((abs(a - b), i + 1) for i, (a, b) in enumerate(zip(curves[name], ref)) if i >= 20)
                   if ref is not None and name != "32" else (0.0, 0))
        top1 = fitted.last_val["top1"] if fitted.last_val else float("nan")
        print(f"{name:12} {len(steps.losses):5d} {seconds:8.1f} {steps.losses[0]:10.4f} {curves[name][-1]:13.4f} "
              f"{gap:17.4f} {at:7d} {100 * top1:8.2f}%", flush=True)
    worst = max((max(abs(a - b) for a, b in list(zip(c, curves["32"]))[20:]) for n, c in curves.items() if n != "32"),
                default=0.0)
    print(f"tolerance {TOLERANCE} nats on the smoothed loss: {'all agree' if worst <= TOLERANCE else 'EXCEEDED'} "
          f"(worst {worst:.4f})")


if __name__ == "__main__":
    main()
