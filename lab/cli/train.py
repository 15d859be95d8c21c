"""`lab train ARCH --dataset D`: one training run, a summary line, a checkpoint and a run record."""

from __future__ import annotations

import argparse
import sys

from lab.cli.args import bounded, number, whole
from lab.report.jsonable import to_json

_fraction = bounded(float, lambda x: 0 < x <= 1, "a number in (0, 1]")
_positive = bounded(int, lambda n: n >= 1, "an integer >= 1")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from lab.train.recipes import PRESETS  # lazy: start-up time

    p = sub.add_parser("train", help="train a grammar point on a dataset; record the run in Parquet")
    p.add_argument("arch", metavar="NAME|TEXT", help="a name with optional multipliers (resnet18@28px,w=0.5) or grammar text")
    p.add_argument("--dataset", default="mnist5k",
                   help="mnist5k (default), digits, synthetic[:N], moving-digits (clips), cifar10, cifar100, mnist, "
                        "fashion-mnist, imagefolder:PATH, parquet:PATH")
    p.add_argument("--recipe", default="default", choices=list(PRESETS), help="training preset (default: default)")
    p.add_argument("--epochs", type=_positive, help="epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=_positive, help="batch size (default: the recipe's)")
    p.add_argument("--lr", type=number, help="peak learning rate (default: the recipe's)")
    p.add_argument("--fraction", type=_fraction, default=1.0, help="stratified fraction of the training split, in (0, 1]")
    p.add_argument("--seed", type=whole, default=0, help="seed of initialization, data order and augmentation")
    p.add_argument("--res", type=_positive, help="input resolution (default: the point's @px, else the dataset's image size)")
    p.add_argument("--distill-from", metavar="CKPT", help="a lab checkpoint (model.pt) to distill from, DeiT style")
    p.add_argument("--distill", choices=["hard", "soft"], help="distillation kind (default: the recipe's, hard)")
    p.add_argument("--init", metavar="timm:NAME|PATH",
                   help="start from pretrained weights: timm:NAME (downloads through timm) or a checkpoint file "
                        "(lab's, or timm's layout); a classifier of another class count is re-initialized")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="refuse a point whose estimated training memory exceeds SIZE (8GiB, 500MB; "
                        "default: what the device has available), before it is built")
    p.add_argument("--precision", default="auto",
                   help="auto (default: bf16-mixed on a GPU that has it, else 32), 32, bf16-mixed (bf16) or 16-mixed (16)")
    p.add_argument("--compile", action="store_true",
                   help="run the training step through torch.compile (its first step compiles: compile_seconds)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="model and inputs in channels_last memory format (default: a conv point on a GPU)")
    p.add_argument("--decoder", default="pil", choices=["pil", "cuda"],
                   help="imagefolder/parquet images: pil (default; in DataLoader workers) or cuda (JPEGs on the GPU, nvjpeg)")
    p.add_argument("--out", default="runs", help="folder of checkpoints and runs.parquet (default runs)")
    p.add_argument("--data-root", help="where downloadable datasets live (default $LAB_DATA or ~/.cache/lab/data)")
    p.add_argument("--logger", metavar="KIND",
                   help="log the run with Lightning's logger: tensorboard, csv, mlflow or wandb (hyperparameters, "
                        "per-epoch metrics at step = epoch, test accuracy)")
    p.add_argument("--log-dir", metavar="DIR", help="--logger's folder (default OUT/logs): KIND/RUN_ID/ for tensorboard "
                                                    "and csv, mlruns/ for mlflow (unless MLFLOW_TRACKING_URI), wandb/")
    p.add_argument("-q", "--quiet", "--no-progress", dest="no_progress", action="store_true",
                   help="no progress bar: only warnings, errors and the summary line (--no-progress: the old name)")
    p.add_argument("--json", action="store_true", help="print the run record as JSON instead of the summary line")
    p.set_defaults(run=run_train)


def _macs(macs: int) -> str:
    return f"{macs / 1e9:.2f} GMACs" if macs >= 1e8 else f"{macs / 1e6:.2f} MMACs"


def summary_line(record: dict, label: str) -> str:
    """One line: what was trained on what, its accuracy, its cost and where its weights are."""
    unit = "clips" if (record.get("frames") or 1) > 1 else "images"
    return (f"{label} [{record['arch_id']}] on {record['dataset']} ({record['n_train']} train {unit}, "
            f"{record['epochs_done']} epoch{'s' * (record['epochs_done'] != 1)}, {record['recipe']}): "
            f"val top-1 {100 * record['val_top1']:.2f}%, "
            f"test top-1 {100 * record['test_top1']:.2f}% | {record['params'] / 1e6:.3f}M params, "
            f"{_macs(record['macs'])} | {record['train_seconds']:.1f} s, "
            f"{record['images_per_second']:.0f} {'clip' if unit == 'clips' else 'img'}/s | "
            f"{record['checkpoint']}")


def run_train(args: argparse.Namespace) -> int:
    from lab.memory import parse_size  # lazy: start-up time
    from lab.train.recipes import recipe  # lazy: start-up time
    from lab.train.run import train  # lazy: start-up time

    max_memory = parse_size(args.max_memory) if args.max_memory is not None else None
    rec = recipe(args.recipe, distill=args.distill)
    result = train(args.arch, args.dataset, recipe=rec, epochs=args.epochs, batch_size=args.batch_size,
                   lr=args.lr, fraction=args.fraction, seed=args.seed, res=args.res,
                   distill_from=args.distill_from, init=args.init, device=args.device, out=args.out, data_root=args.data_root,
                   progress=not args.no_progress and sys.stderr.isatty(), max_memory=max_memory,
                   logger=args.logger, log_dir=args.log_dir, precision=args.precision, compile=args.compile,
                   channels_last=args.channels_last, decoder=args.decoder)
    if args.json:
        print(to_json(result.record))
    else:
        if result.init_note:
            print(f"init: {result.init_note}")
        frames = result.record.get("frames") or 1
        at = f"{frames}x{result.record['res']}" if frames > 1 else result.record["res"]
        label = args.arch if not args.arch.lstrip().startswith("@") else f"@{at} point"
        print(summary_line(result.record, label))
        if result.log is not None:
            print(f"{args.logger} log: {result.log}")
    return 0
