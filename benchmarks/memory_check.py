"""Predicted training memory (lab.memory.training_memory) against the measured peak of one training step.

Each point (a family's CPU-sized variant at 32-64 px, at batch 8, 32 or 64) is measured in a fresh
spawned process: the model is built, one AdamW step allocates the optimizer's state (and, on a GPU,
cuDNN's autotuning), then one more full step (zero_grad, forward under the precision's autocast,
cross-entropy, backward, AdamW step) is measured:

- CPU: torch's CPU allocator peak during that step, from torch.profiler's memory events (bytes
  allocated and freed while it records), plus every tensor alive before it (weights, buffers,
  gradients, optimizer state, the batch);
- CUDA (--device cuda): torch.cuda.max_memory_allocated over that step, after
  reset_peak_memory_stats (synchronized before and after), which includes everything allocated.

Printed: one row per point (point, batch, predicted, measured, measured / predicted) and the
distribution of the ratio (min, median, max, share within 20%); --out writes it all as JSON.

    python benchmarks/memory_check.py                          # all points, CPU, float32
    python benchmarks/memory_check.py --points 10 --device cuda --out memory.json
    python benchmarks/memory_check.py --precision bf16-mixed   # autocast (CPU: bfloat16)
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))   # its sibling memory_estimate.py

# (reference, batch): the first ten span the families (what the GPU check runs), the rest vary sizes
POINTS: tuple[tuple[str, int], ...] = (
    ("resnet18@32px,w=0.25", 32),
    ("vit_s16@32px,p=4,w=0.25", 32),
    ("swin_t@32px,w=0.25", 32),
    ("convnext_t@32px,w=0.25", 32),
    ("resnet50@32px,w=0.25", 64),
    ("mixer_s16@32px,p=4,w=0.25", 32),
    ("nat_mini@32px,w=0.25", 32),
    ("efficientnet_b0@32px,w=0.25", 32),
    ("bit_r50x1@32px,w=0.25", 32),
    ("densenet121@32px,w=0.25", 32),
    ("resnext50_32x4d@32px,w=0.25", 8),
    ("wide_resnet50_2@32px,w=0.25", 8),
    ("regnety_4gf@32px,w=0.25", 64),
    ("regnetx_4gf@32px,w=0.25", 8),
    ("deit_s_distilled@32px,p=4,w=0.25", 8),
    ("vit_r50_b16_384@64px,w=0.25", 8),
    ("@32 | conv(c=32),bn,relu | basic 2x32 | mhsa(h=4) 2x64/(conv(k=2,s=2),ln) | ln,gap,fc", 64),
    ("@32 | conv(c=32),bn,relu | mbconv(e=4) 2x32 | swin(w=4,hd=16) 2x64/(conv(k=2,s=2),ln) | "
     "nat(k=3,hd=16) 2x128/merge | ln,gap,fc", 32),
    ("@32 | patch(p=2,c=48),ln | swin(w=4,hd=16) 2x48 | convnext 2x96/(ln,conv(k=2,s=2)) | gap,ln,fc", 8),
    ("resnet18@64px,w=0.5", 64),
    ("vit_ti16@64px,p=8", 64),
    ("swin_t@64px,w=0.25", 8),
    ("convnext_t@64px,w=0.25", 64),
    ("mixer_s16@32px,p=4,w=0.25", 64),
    ("efficientnet_b0@64px,w=0.25", 8),
    ("densenet121@32px,w=0.25", 64),
)
NUM_CLASSES = 10


def measure(ref: str, batch: int, device: str, precision: str) -> dict:
    """One point, in this (fresh) process: the predicted and the measured peak bytes of a training step."""
    import torch
    from memory_estimate import allocated_peak  # benchmarks/memory_estimate.py: the one CPU allocator peak

    from lab.bench import training_step
    from lab.build import build
    from lab.catalog import resolve
    from lab.memory import PRECISIONS, training_memory

    torch.manual_seed(0)
    spec = resolve(ref)
    est = training_memory(spec, batch, NUM_CLASSES, 3, precision=precision, optimizer="adamw")
    dev = torch.device(device)
    model = build(spec, num_classes=NUM_CLASSES, in_chans=3).to(dev).train()
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(batch, 3 * spec.frames, spec.res, spec.res, device=dev)
    if spec.frames > 1:
        x = x.view(batch, 3, spec.frames, spec.res, spec.res)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=dev)
    mixed = precision in ("bf16-mixed", "16-mixed")
    if precision in ("bf16-true", "16-true", "64", "64-true"):
        model.to({"bf16-true": torch.bfloat16, "16-true": torch.float16}.get(precision, torch.float64))
        x = x.to({"bf16-true": torch.bfloat16, "16-true": torch.float16}.get(precision, torch.float64))
    assert precision in PRECISIONS
    step = training_step(model, x, y, opt, device, precision if mixed else "32")

    step()   # allocates AdamW's state (and, on a GPU, the autotuned kernels' workspaces)
    # outside the measured region: the CPU profiler does not see blocks freed that were allocated
    # before it started (the gradients), so they are freed first, as a training loop frees them
    opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        step()
        torch.cuda.synchronize(dev)
        measured = int(torch.cuda.max_memory_allocated(dev))
    else:
        alive = itertools.chain(model.parameters(), model.buffers(), (p.grad for p in model.parameters()),
                                (t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)), (x, y))
        resident = sum(t.numel() * t.element_size() for t in alive if t is not None)
        measured = resident + allocated_peak(step)
    return {"point": ref, "batch": batch, "device": device, "precision": precision, "predicted": est.total,
            "measured": measured, "ratio": measured / est.total, "weights": est.weights,
            "activations": est.activations, "transient": est.transient, "describe": est.describe()}


def distribution(ratios: list[float]) -> dict:
    return {"n": len(ratios), "min": min(ratios), "median": statistics.median(ratios), "max": max(ratios),
            "within_20pct": sum(0.8 <= r <= 1.2 for r in ratios) / len(ratios)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--points", type=int, default=len(POINTS), help=f"the first N of the {len(POINTS)} points")
    p.add_argument("--precision", default="32", help="32, bf16-mixed (bf16) or 16-mixed (16)")
    p.add_argument("--workers", type=int, default=1, help="processes measuring at once (CPU only)")
    p.add_argument("--out", type=Path, help="write the rows and the distribution as JSON")
    args = p.parse_args(argv)
    from lab.errors import LabError
    from lab.memory import format_size, precision_name

    try:
        precision = precision_name(args.precision)
    except LabError as e:
        print(f"memory_check: error: {e}", file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("memory_check: error: --device cuda: no CUDA device is visible (torch.cuda.is_available() "
                  "is False)", file=sys.stderr)
            return 2
    points = POINTS[:max(1, args.points)]
    workers = 1 if args.device.startswith("cuda") else max(1, args.workers)
    t0 = time.perf_counter()
    # a fresh spawned process per point (max_tasks_per_child): nothing cached from one point to the next
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        futures = [pool.submit(measure, ref, batch, args.device, precision) for ref, batch in points]
        print(f"{'point':70s} {'batch':>5s} {'predicted':>10s} {'measured':>10s} {'ratio':>6s}")
        rows = []
        for fut in futures:
            row = fut.result()
            rows.append(row)
            name = row["point"] if len(row["point"]) <= 70 else row["point"][:67] + "..."
            print(f"{name:70s} {row['batch']:5d} {format_size(row['predicted']):>10s} "
                  f"{format_size(row['measured']):>10s} {row['ratio']:6.2f}", flush=True)
    dist = distribution([r["ratio"] for r in rows])
    print(f"measured / predicted over {dist['n']} points ({args.device}, precision {precision}): min "
          f"{dist['min']:.2f}, median {dist['median']:.2f}, max {dist['max']:.2f}; within 20%: "
          f"{dist['within_20pct']:.0%}  ({time.perf_counter() - t0:.0f} s)")
    if args.out:
        args.out.write_text(json.dumps({"device": args.device, "precision": precision, "rows": rows,
                                        "distribution": dist}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
