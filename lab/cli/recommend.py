"""`lab recommend --data N [--macs B | --params B] STUDY...`: which architecture for how much data,
ranked by its accuracy predicted at N training images (lab.report.recommend)."""

from __future__ import annotations

import argparse
import math
import sys

from lab.cli.args import ROOT_HELP, bounded
from lab.cli.args import level as _level
from lab.report.jsonable import to_json

SUFFIXES = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}   # case-insensitive: "m" is mega here, never milli
images = bounded(int, lambda n: n >= 1, "a whole number of training images >= 1")
top = bounded(int, lambda n: n >= 1, "a whole number >= 1")


def amount(text: str) -> float:
    """An argparse type: a positive number, optionally with a suffix k, M, G or T (5M, 2.5G, 300k)."""
    body, scale = text.strip(), 1.0
    if body[-1:].isalpha():
        scale, body = SUFFIXES.get(body[-1].lower(), math.nan), body[:-1]
    try:   # ASCII only: float() also reads other scripts' digits
        value = float(body) * scale if body.isascii() else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number, optionally with a suffix k, M or G "
                                         f"(e.g. 5M, 2.5G, 300k)")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recommend", help="which architecture for how much data: accuracy predicted at N images, "
                                         "within a MACs or parameter budget")
    p.add_argument("studies", nargs="+", metavar="STUDY",
                   help="study name (under --root) or folder: a scaling study, or a --target-size search")
    p.add_argument("--data", type=images, required=True, metavar="N", help="training images to predict at")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--macs", type=amount, metavar="BUDGET", help="at most this many MACs per image (e.g. 5M)")
    budget.add_argument("--params", type=amount, metavar="BUDGET", help="at most this many parameters (e.g. 300k)")
    p.add_argument("--law", default="power", choices=["power", "auto", "saturating", "broken"],
                   help="law to extrapolate with (default power; auto: the one that best predicts each curve's "
                        "largest size from its smaller ones)")
    p.add_argument("--top", type=top, metavar="K", help="list the best K only (default all)")
    p.add_argument("--level", type=_level, default=0.95, help="level of the prediction intervals (default 0.95)")
    p.add_argument("--root", help=ROOT_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lab.report.recommend import format_recommendation, recommend  # lazy: start-up time

    rec = recommend(args.studies, args.data, macs=args.macs, params=args.params, law=args.law, level=args.level,
                    root=args.root, top=args.top)
    print(to_json(rec.as_dict()) if args.json else format_recommendation(rec))
    sys.stdout.flush()   # the warnings after the table they are about
    for warning in rec.warnings:
        print(f"lab: warning: {warning}", file=sys.stderr)
    return 0
