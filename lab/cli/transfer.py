"""`lab transfer --from CKPT --dataset X --shots 1,5,10`: BiT-style few-shot probes and fine-tunes."""

from __future__ import annotations

import argparse
import sys

from lab.cli.args import bounded
from lab.report.jsonable import to_json
from lab.report.table import render


def _shots(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(k < 1 for k in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated positive integers, e.g. 1,5,10")
    return values


def add_parser(sub: argparse._SubParsersAction) -> None:
    from lab.train.recipes import HYPERRULE_STEPS  # lazy: start-up time

    p = sub.add_parser("transfer", help="transfer a checkpoint to a downstream dataset: few-shot probes and "
                                        "bit-finetune runs, each beside a random-init baseline")
    p.add_argument("--from", dest="checkpoint", required=True, metavar="CKPT",
                   help="a lab checkpoint (model.pt, model.safetensors or their run folder)")
    p.add_argument("--dataset", default="digits",
                   help="downstream dataset (default digits), resized to the checkpoint's resolution")
    p.add_argument("--shots", type=_shots, default=[1, 5, 10], help="examples per class, comma-separated (default 1,5,10)")
    p.add_argument("--seeds", type=bounded(int, lambda n: n >= 1, "an integer >= 1"), default=3,
                   help="support draws per k (default 3)")
    p.add_argument("--method", choices=["ridge", "lbfgs"], default="ridge", help="probe fit (default ridge)")
    p.add_argument("--steps", type=bounded(int, lambda n: n >= 1, "an integer >= 1"), default=HYPERRULE_STEPS,
                   help=f"optimizer steps of each fine-tune (default {HYPERRULE_STEPS}, BiT-HyperRule for small sets)")
    p.add_argument("--no-finetune", action="store_true", help="probes only")
    p.add_argument("--no-baseline", action="store_true", help="skip the randomly initialized network")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="refuse a checkpoint whose estimated memory (probe or fine-tune) exceeds SIZE (8GiB, 500MB; "
                        "default: what the device has available)")
    p.add_argument("--out", default="runs", help="folder of runs.parquet (and fine-tune checkpoints); default runs")
    p.add_argument("--data-root", help="where downloadable datasets live")
    p.add_argument("--json", action="store_true", help="print every recorded row as JSON lines")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar: only warnings, errors and the results")
    p.set_defaults(run=run_transfer)


def run_transfer(args: argparse.Namespace) -> int:
    from lab.memory import parse_size  # lazy: start-up time
    from lab.train.transfer import transfer  # lazy: start-up time

    max_memory = parse_size(args.max_memory) if args.max_memory is not None else None
    result = transfer(args.checkpoint, args.dataset, shots=args.shots, seeds=range(args.seeds), method=args.method,
                      finetune=not args.no_finetune, steps=args.steps, baseline=not args.no_baseline,
                      device=args.device, out=args.out, data_root=args.data_root,
                      progress=sys.stderr.isatty() and not args.json and not args.quiet, max_memory=max_memory)
    if args.json:
        for record in result.records:
            print(to_json(record))
        return 0
    rows = [(s["recipe"], "checkpoint" if s["init"] != "random" else "random", s["shots"],
             f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f}", s["seeds"]) for s in result.summary()]
    first = result.records[0]
    print(f"{args.checkpoint} -> {first['dataset']} at {first['res']} px (test top-1 %, mean ± sd over seeds)")
    print(render(["recipe", "init", "shots", "test top-1", "seeds"], rows, "<<>>>"))
    print(f"{len(result.records)} rows in {args.out}/runs.parquet")
    return 0
