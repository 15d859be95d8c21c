"""`lab bench build|proxies|search`: a benchmark table of the lab's own training, how well zero-cost
proxies rank it, and samplers compared over many seeds by replaying it."""

from __future__ import annotations

import argparse
from pathlib import Path

from lab.cli.args import ROOT_HELP, gpu_share, level, number, samples, whole
from lab.errors import LabError
from lab.report.jsonable import to_json

BUILD_SEED = 1000   # the build's sampler seed lies outside the seeds `lab bench search` replays (0, 1, ...)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark tables of the lab's own training: build, proxies, sampler comparison")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND", parser_class=type(p))
    bsub.required = True

    build = bsub.add_parser("build", help="train random points of a space (no early stopping) into a benchmark table")
    build.add_argument("--space", default="hybrid", help="search space (default hybrid)")
    build.add_argument("--points", type=whole, default=200, help="points to train (default 200)")
    build.add_argument("--out", help="the table's file (default: bench-SPACE.parquet)")
    build.add_argument("--name", help="the study that trains them (default bench-SPACE; run again to resume or grow it)")
    build.add_argument("--dataset", default="mnist5k")
    build.add_argument("--fraction", type=number, default=0.25, help="fraction of the training split (default 0.25)")
    build.add_argument("--epochs", type=whole, default=8)
    build.add_argument("--seed", type=whole, default=BUILD_SEED,
                       help=f"seed of the sampler and the trials (default {BUILD_SEED})")
    build.add_argument("--recipe", default="default")
    build.add_argument("--batch-size", type=whole, default=64)
    build.add_argument("--concurrency", type=whole, default=2, help="trials at once (default 2)")
    build.add_argument("--cpus-per-trial", type=number, default=1.0)
    build.add_argument("--gpus-per-trial", type=gpu_share, default=0.0,
                       help="GPUs per trial, or auto (by predicted memory, as `lab study create`)")
    build.add_argument("--gpu-memory", help="--gpus-per-trial auto: one GPU's memory to pack by (default: probed)")
    build.add_argument("--address", help="Ray cluster address (default: Ray on this machine)")
    build.add_argument("--surrogate", default="gp", help="the surrogate whose held-out quality is printed (gp, rf, knn)")
    build.add_argument("--root", help=ROOT_HELP)
    build.add_argument("-q", "--quiet", action="store_true",
                       help="print only warnings, errors and the table's summary (no progress view)")
    build.add_argument("-v", "--verbose", action="store_true", help="a line per trained point with its full grammar text")
    build.add_argument("--json", action="store_true")
    build.set_defaults(run=run_build)

    proxies = bsub.add_parser("proxies", help="how well each zero-cost proxy, #params and MACs rank trained accuracy")
    proxies.add_argument("bench", metavar="BENCH", help="a shipped benchmark's name (hybrid) or a .parquet file")
    proxies.add_argument("--metric", default="val_top1", help="the accuracy ranked (val_top1, the default, or test_top1)")
    proxies.add_argument("--bootstrap", type=samples, default=1000, help="bootstrap samples of the intervals (default 1000)")
    proxies.add_argument("--level", type=level, default=0.95)
    proxies.add_argument("--json", action="store_true")
    proxies.set_defaults(run=run_proxies)

    search = bsub.add_parser("search", help="samplers compared by anytime hypervolume over many seeds of replayed studies")
    search.add_argument("bench", metavar="BENCH", help="a shipped benchmark's name (hybrid) or a .parquet file")
    search.add_argument("--samplers", default="random,tpe+snip,tpe,nsga2,evolution,local",
                        help="comma-separated --sampler values (default random,tpe+snip,tpe,nsga2,evolution,local: "
                             "the default, then the unwarmed ones)")
    search.add_argument("--seeds", type=whole, default=30, help="seeds per sampler (default 30)")
    search.add_argument("--trials", type=whole, default=80, help="trained trials per replayed study (default 80)")
    search.add_argument("--at", default="10,20,40,80", help="trained-trial counts to report (default 10,20,40,80)")
    search.add_argument("--scheduler", default="asha", help="asha (default) or fifo")
    search.add_argument("--concurrency", type=whole, default=2, help="simulated trials at once (default 2)")
    search.add_argument("--workers", type=whole, help="processes (default: the CPU count)")
    search.add_argument("--level", type=level, default=0.95)
    search.add_argument("--out", help="write every (sampler, seed, trials) hypervolume to this Parquet file")
    search.add_argument("--html", help="draw the comparison in this HTML file (default: dashboards/bench-BENCH-search.html)")
    search.add_argument("--no-dashboard", dest="dashboard", action="store_false", help="do not draw the comparison")
    search.add_argument("--root", help=ROOT_HELP + "; the default page goes to its dashboards folder")
    search.add_argument("--json", action="store_true")
    search.set_defaults(run=run_search)


def run_build(args: argparse.Namespace) -> int:
    from lab.cli.console import study_view  # lazy: start-up time
    from lab.study.benchmark import build_bench  # lazy: start-up time
    from lab.tabular.surrogate import quality  # lazy: start-up time
    from lab.tabular.table import load_bench  # lazy: start-up time

    out = Path(args.out or f"bench-{Path(args.space).stem}.parquet")
    path = build_bench(args.space, args.points, out, name=args.name, root=args.root,
                       view=None if args.json else study_view(args.quiet, args.verbose),
                       dataset=args.dataset, fraction=args.fraction, epochs=args.epochs, seed=args.seed,
                       recipe=args.recipe, batch_size=args.batch_size, concurrency=args.concurrency,
                       cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, gpu_memory=args.gpu_memory,
                       address=args.address)
    bench = load_bench(path)
    held_out = quality(bench.table, model=args.surrogate)
    info = {"bench": str(path), "points": bench.table.num_rows, "bytes": path.stat().st_size,
            "surrogate": args.surrogate, "held_out": held_out}
    if args.json:
        print(to_json(info, indent=2))
        return 0
    print(f"{path}: {info['points']} trained points, {info['bytes'] / 1e6:.2f} MB")
    print(f"surrogate {args.surrogate}, {held_out.get('folds', 5)}-fold held-out final val top-1 over {held_out['n']} points: "
          f"Kendall tau {held_out['kendall']:.3f}, Spearman rho {held_out['spearman']:.3f}, "
          f"mean absolute error {held_out['mae']:.4f}")
    return 0


def run_proxies(args: argparse.Namespace) -> int:
    from lab.report.bench import format_proxies, proxy_report  # lazy: start-up time

    report = proxy_report(args.bench, metric=args.metric, n_boot=args.bootstrap, level=args.level)
    print(to_json(report, indent=2) if args.json else format_proxies(report), end="" if not args.json else "\n")
    return 0


def run_search(args: argparse.Namespace) -> int:
    from lab.report.bench import format_search  # lazy: start-up time
    from lab.study.compare import compare_samplers  # lazy: start-up time

    try:
        at = sorted({int(x) for x in args.at.split(",") if x.strip()})
    except ValueError:
        raise LabError(f"--at {args.at!r}: expected whole numbers, e.g. 10,20,40,80") from None
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    comparison = compare_samplers(args.bench, samplers, seeds=args.seeds, trials=max(args.trials, *at), at=at,
                                  scheduler=args.scheduler, concurrency=args.concurrency, workers=args.workers,
                                  level=args.level)
    report = comparison.to_dict()
    if args.out:
        import pyarrow as pa  # lazy: start-up time
        import pyarrow.parquet as pq  # lazy: start-up time

        from lab.files import atomic_write  # lazy: start-up time

        table = pa.Table.from_pylist(comparison.runs)
        atomic_write(Path(args.out), lambda tmp: pq.write_table(table, tmp))
    print(to_json(report, indent=2) if args.json else format_search(report), end="" if not args.json else "\n")
    if args.dashboard:
        from lab.dashboard.page import default_out  # lazy: start-up time
        from lab.dashboard.search import render_search  # lazy: start-up time

        page = render_search(report, args.html or default_out(f"bench-{Path(comparison.bench).stem}-search", args.root))
        if not args.json:
            print(f"dashboard: {page}")
    return 0
