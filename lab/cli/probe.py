"""`lab probe CKPT --dataset D`: BiT's few-shot linear probe of a checkpoint's frozen features."""

from __future__ import annotations

import argparse

from lab.cli.args import whole
from lab.errors import LabError
from lab.report.jsonable import to_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="few-shot linear probe (BiT) of a checkpoint's frozen features")
    p.add_argument("checkpoint", metavar="CKPT", help="a lab checkpoint (model.pt or model.safetensors)")
    p.add_argument("--dataset", default="mnist5k", help="dataset whose train split gives the k-shot supports")
    p.add_argument("--shots", type=whole, nargs="+", default=[1, 5, 10, 25], help="examples per class (default 1 5 10 25)")
    p.add_argument("--seeds", type=whole, default=3, help="support draws averaged per k (default 3)")
    p.add_argument("--method", choices=["ridge", "lbfgs"], default="ridge",
                   help="closed-form ridge or L-BFGS logistic regression (default ridge)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="refuse a checkpoint whose estimated memory exceeds SIZE (8GiB, 500MB; default: what "
                        "the device has available)")
    p.add_argument("--data-root")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_probe)


def run_probe(args: argparse.Namespace) -> int:
    from lab.memory import parse_size  # lazy: start-up time
    from lab.train.probe import probe_checkpoint  # lazy: start-up time

    if args.seeds < 1 or any(k < 1 for k in args.shots):
        raise LabError("--shots and --seeds must be positive")
    result = probe_checkpoint(args.checkpoint, args.dataset, shots=args.shots, seeds=range(args.seeds),
                              method=args.method, device=args.device, data_root=args.data_root,
                              max_memory=parse_size(args.max_memory) if args.max_memory is not None else None)
    if args.json:
        print(to_json(result))
        return 0
    parts = [f"{k}-shot {100 * r['mean']:.1f}% (±{100 * r['std']:.1f})" for k, r in result["shots"].items()]
    parts += [f"{k}-shot skipped ({why})" for k, why in result["skipped"].items()]
    print(f"{result['dataset']}, {result['features']} features, {result['method']}: " + ", ".join(parts))
    return 0
