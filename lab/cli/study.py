"""`lab study create|resume|list|show|export`: studies over a search space, run by Ray Tune."""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import datetime
from pathlib import Path

from lab.cli.args import ROOT_HELP, gpu_share, level, number, samples, whole
from lab.errors import StudyError
from lab.report.jsonable import to_json
from lab.report.table import render

# flag -> StudyConfig field, for the settings `create` takes (None: not given on the command line)
SETTINGS = {
    "kind": str, "archs": str, "fractions": str, "seeds": int, "epochs_policy": str, "space": str, "dataset": str, "trials": int,
    "objectives": str, "epochs": int, "fraction": float,
    "res": int, "recipe": str, "name": str, "sampler": str, "scheduler": str, "storage": str, "address": str,
    "cpus_per_trial": float, "gpus_per_trial": float, "gpu_memory": str, "device": str, "concurrency": int,
    "max_memory": str, "seed": int, "batch_size": int,
    "backend": str, "target_size": int, "rungs": int, "logger": str,
    "keep_top": int, "keep_metric": str, "weights_cap": str,
    "precision": str, "compile": bool, "channels_last": bool,
}
FLAG_TYPES = {"gpus_per_trial": gpu_share}   # the settings whose flags take more than their field's type (auto)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="search a space: Optuna samples, Ray Tune trains, Parquet keeps every trial")
    ssub = p.add_subparsers(dest="study_command", metavar="STUDY_COMMAND", parser_class=type(p))
    ssub.required = True

    create = ssub.add_parser("create", help="create a study and run it to its trial budget")
    helps = {
        "kind": "search (default: sample --space) or scaling (train the grid --archs x --fractions x --seeds)",
        "archs": "scaling: architectures, names with multipliers (resnet18@28px,w=0.5,vit_ti16) or ';'-separated text",
        "fractions": "scaling: nested training fractions, e.g. 0.05,0.1,0.2,0.5,1",
        "seeds": "scaling: seeds per (arch, fraction) (default 1)",
        "epochs_policy": "scaling: constant-steps (default: the largest fraction's steps everywhere) or constant-epochs",
        "space": "search space: conv, isotropic, hierarchical, hybrid (default), video (clips: --dataset moving-digits) "
                 "or a YAML path",
        "dataset": "dataset (default mnist5k)", "trials": "trained trials (default 20)",
        "objectives": "objectives, e.g. val_acc:max,macs:min (the default)", "epochs": "epochs per trial (default 8)",
        "fraction": "fraction of the training split (default 1)", "res": "input resolution (default: the space's)",
        "recipe": "training recipe (default: default)", "name": "study name (default SPACE-DATASET-TIME)",
        "sampler": "tpe (default), nsga2, random, evolution, local or gp; SAMPLER+PROXY warm-starts it from the "
                   "points a zero-cost proxy ranks best (e.g. evolution+naswot)",
        "scheduler": "asha (default; on the objectives' Pareto rank) or fifo",
        "storage": "Optuna storage URL (default: sqlite in the study folder)",
        "address": "Ray cluster address (default: Ray on this machine)", "cpus_per_trial": "CPUs per trial (default 1)",
        "precision": "each trial's precision: auto (default: bf16-mixed on a GPU that has it, else 32), 32, "
                     "bf16-mixed (bf16) or 16-mixed (16)",
        "compile": "each trial's training step through torch.compile (its first step compiles; worth it for long trials "
                   "only, BENCHMARKS.md)",
        "channels_last": "channels_last memory format for each trial (default: conv points on a GPU)",
        "gpus_per_trial": "GPUs per trial, fractions allowed (default 0), or auto: each trial the GPU fraction its "
                          "predicted training memory needs (x1.2 + 500 MB, in 1/16ths); a point over one GPU is "
                          "rejected untrained",
        "gpu_memory": "--gpus-per-trial auto: one GPU's memory to pack by, e.g. 80GB (default: probed on Ray's GPUs, "
                      "the smallest)",
        "device": "where trials train: auto (default: CUDA for trials given GPUs), cuda or cpu (cpu with GPUs: Ray "
                  "still packs by GPU shares, e.g. on logical GPUs)",
        "concurrency": "trials at once (default 2)",
        "max_memory": "training memory a trial may use, e.g. 4GiB (default: for trials on this machine's CPUs, its "
                      "available memory / --concurrency); a sampled point predicted to need more is rejected untrained",
        "seed": "seed of the sampler and of every trial (default 0)",
        "batch_size": "batch size (default 64)",
        "backend": "ray (default: train every trial) or replay:BENCH (read each trial from a benchmark table, a shipped "
                   "name such as replay:hybrid or a .parquet path, in simulated time; the table's dataset, fraction, "
                   "epochs, recipe and batch size are the defaults)",
        "target_size": "search for the points best at N training images (N may exceed the training split: an "
                       "extrapolation): each trial trains a ladder of nested data sizes up to --fraction, successive "
                       "halving promotes on the accuracy predicted at N, and the study ranks by that prediction",
        "rungs": "--target-size: sizes in the ladder, --fraction/3^(rungs-1) .. --fraction (default 3)",
        "logger": "log every trial with Lightning's logger: tensorboard, csv, mlflow or wandb (one run per trial, "
                  "trial-NNNNNN, in STUDY/logs; MLflow experiment and W&B project: the study's name)",
        "keep_top": "also keep the weights of the best K complete trials by --keep-metric (default 0: the Pareto set's "
                    "alone); kept weights are in STUDY/weights, `lab export STUDY:TRIAL` writes one out",
        "keep_metric": "what --keep-top ranks by, a column with an optional :max or :min (default val_top1)",
        "weights_cap": "disk the kept weights may take together, e.g. 2GiB (default 1GiB; 0 keeps none); the Pareto "
                       "set's best-first-objective trials come first",
    }
    for field, kind in SETTINGS.items():
        if kind is bool:   # --compile / --no-compile
            create.add_argument("--" + field.replace("_", "-"), dest=field, action=argparse.BooleanOptionalAction,
                                default=None, help=helps[field])
            continue
        create.add_argument("--" + field.replace("_", "-"), dest=field,
                            type=FLAG_TYPES.get(field) or {int: whole, float: number}.get(kind, kind),
                            default=None, help=helps[field])
    create.add_argument("--recipe-file", help="a study recipe (studies/NAME.yaml); flags override its settings")
    _common(create)
    create.set_defaults(run=run_create)

    resume = ssub.add_parser("resume", help="continue a study to its trial budget")
    resume.add_argument("name")
    resume.add_argument("--trials", type=whole, help="a new trial budget for a search study (more extends it)")
    _common(resume)
    resume.set_defaults(run=run_resume)

    ls = ssub.add_parser("list", help="the studies under the studies folder")
    ls.add_argument("--root", help=ROOT_HELP)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(run=run_list)

    show = ssub.add_parser("show", help="a study's summary and Pareto table")
    show.add_argument("name")
    show.add_argument("--root", help=ROOT_HELP)
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=run_show)

    report = ssub.add_parser("report", help="a scaling study's accuracy per arm and fraction, exponents, and "
                                           "its claims' verdicts with intervals")
    report.add_argument("name")
    report.add_argument("--level", type=level, default=0.95,
                        help="confidence level of the intervals (default 0.95)")
    report.add_argument("--bootstrap", type=samples, default=1000,
                        help="bootstrap samples of the exponents (default 1000)")
    report.add_argument("--metric", default="auto", help="accuracy column: test_top1 (auto) or val_top1")
    report.add_argument("--root", help=ROOT_HELP)
    report.add_argument("--json", action="store_true")
    report.set_defaults(run=run_report)

    export = ssub.add_parser("export", help="write a study's trials and epochs tables")
    export.add_argument("name")
    export.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    export.add_argument("--out", help="folder (default: STUDY/export)")
    export.add_argument("--root", help=ROOT_HELP)
    export.set_defaults(run=run_export)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", help=ROOT_HELP)
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only warnings, errors and the final summary (no progress view)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="a line per finished trial with its full grammar text (and per rejected point)")
    p.add_argument("--no-dashboard", dest="dashboard", action="store_false",
                   help="do not render the study's dashboard at the end (default: dashboards/NAME.html)")


def config_from_args(args: argparse.Namespace):
    from lab.study.config import StudyConfig, read_recipe_file  # lazy: start-up time

    settings = read_recipe_file(args.recipe_file) if args.recipe_file else {}
    settings.update({k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None})
    backend = str(settings.get("backend", "ray"))
    if backend.startswith("replay:"):   # a replay trains nothing: the table's training settings are its defaults
        from lab.study.replay import bench_of_name, replay_defaults  # lazy: start-up time

        settings = {**replay_defaults(bench_of_name(backend)), **settings}
    if "name" not in settings:
        stem = Path(args.recipe_file).stem if args.recipe_file else None
        space = "scaling" if settings.get("kind") == "scaling" else Path(str(settings.get("space", "hybrid"))).stem
        settings["name"] = stem or f"{space}-{settings.get('dataset', 'mnist5k').split(':')[0]}-{datetime.now():%Y%m%d-%H%M%S}"
    return StudyConfig(**settings)


def run_create(args: argparse.Namespace) -> int:
    from lab.cli.console import study_view  # lazy: start-up time
    from lab.study.runner import create  # lazy: start-up time

    folder = create(config_from_args(args), root=args.root, view=study_view(args.quiet, args.verbose))
    _print_summary(folder, json_out=False)
    _render_dashboard(folder, args)
    return _check_outcome(folder)


def run_resume(args: argparse.Namespace) -> int:
    from lab.cli.console import study_view  # lazy: start-up time
    from lab.study.runner import resume  # lazy: start-up time

    folder = resume(args.name, root=args.root, trials=args.trials, view=study_view(args.quiet, args.verbose))
    _print_summary(folder, json_out=False)
    _render_dashboard(folder, args)
    return _check_outcome(folder)


def _check_outcome(folder: Path) -> int:
    """0 when the study has a complete trial; else StudyError with the first failure's reason (a study
    whose every trial failed is a failed command, whatever was recorded)."""
    from lab.study.store import StudyStore  # lazy: start-up time

    rows = StudyStore(folder).trials().to_pylist()
    if any(r["state"] == "complete" for r in rows):
        return 0
    failed = [r for r in rows if r["state"] == "failed"] or [r for r in rows if r["state"] != "complete"]
    first = f"; the first, trial {failed[0]['number']} ({failed[0]['state']}): {failed[0]['error']}" if failed else ""
    raise StudyError(f"study {folder.name!r}: no trial completed ({len(rows)} recorded){first}")


def _render_dashboard(folder: Path, args: argparse.Namespace) -> int:
    """The study's dashboard, rendered at the end of a run; a failure to render is a warning, not
    a failed study (the study's results are already safe in its folder)."""

    if not getattr(args, "dashboard", True):
        return 0
    try:
        from lab.dashboard import render  # lazy: start-up time

        print(f"dashboard: {render([folder], root=args.root)}")
    except Exception as e:
        print(f"lab: warning: dashboard not rendered ({type(e).__name__}: {e}); `lab dashboard {folder.name}` "
              f"retries", file=sys.stderr)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from lab.report.study import build_report, format_report  # lazy: start-up time

    report = build_report(args.name, args.root, level=args.level, n_boot=args.bootstrap, metric=args.metric)
    print(to_json(report.to_dict(), indent=2) if args.json else format_report(report),
          end="" if not args.json else "\n")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from lab.study.config import find_study  # lazy: start-up time

    return _print_summary(find_study(args.name, args.root), json_out=args.json)


def summary(folder: Path) -> dict:
    """A study's settings, its trials by state and its Pareto set (complete trials only)."""
    from lab.pareto import pareto_front, parse_objectives  # lazy: start-up time
    from lab.study.config import StudyConfig  # lazy: start-up time
    from lab.study.store import StudyStore  # lazy: start-up time
    from lab.study.weights import kept as kept_weights  # lazy: start-up time

    store = StudyStore(folder)
    saved = store.load_config()   # with every setting's default filled in (older or hand-made studies omit some)
    config = StudyConfig(**{k: v for k, v in saved.items() if k in StudyConfig.fields()}).to_dict()
    trials = store.trials()
    states: dict[str, int] = {}
    for s in trials.column("state").to_pylist():
        states[s] = states.get(s, 0) + 1
    objectives = parse_objectives(config["objectives"])
    front = pareto_front(trials, objectives) if trials.num_rows else None
    rows = [] if front is None else front.to_dict("records")
    weights = kept_weights(folder)   # the rows' checkpoint column stays null: the study's ledger says (lab.study.weights)
    for r in rows:
        r["checkpoint"] = str(weights[r["number"]]) if r["number"] in weights else None
    kind = config.get("kind", "search")
    space = (f"scaling grid of {len(config['archs'])} archs x {len(config['fractions'])} fractions x "
             f"{config['seeds']} seeds" if kind == "scaling" else f"space {config['space']}")
    return {"name": config["name"], "folder": str(folder), "kind": kind,
            "space": "scaling" if kind == "scaling" else config["space"], "grid": space,
            "dataset": config["dataset"], "budget": config["trials"], "states": states, "objectives": objectives,
            "pareto": rows, "claims": len(config.get("claims") or []), "target_size": config.get("target_size"),
            "kept_weights": {str(n): str(p) for n, p in sorted(weights.items())}}


def _print_summary(folder: Path, json_out: bool) -> int:
    info = summary(folder)
    if json_out:
        print(to_json(info))
        return 0
    states = ", ".join(f"{n} {s}" for s, n in sorted(info["states"].items()))
    print(f"study {info['name']} ({info['folder']}): {info['grid']}, dataset {info['dataset']}, "
          f"budget {info['budget']} trials; {states or 'no trials'}")
    if info["kind"] == "scaling":
        what = f"its {info['claims']} claims' verdicts" if info["claims"] else "accuracy per arm and fraction"
        print(f"`lab study report {info['name']}`: {what}; `lab scale fit {info['name']}`: the scaling-law fits")
    print(f"Pareto set ({', '.join(f'{m} {s}' for m, s in info['objectives'])}): {len(info['pareto'])} trial(s)")
    if info["kept_weights"]:
        numbers = ", ".join(info["kept_weights"])
        print(f"kept weights of trial(s) {numbers} in {Path(info['folder']) / 'weights'}: "
              f"`lab export {info['name']}:{next(iter(info['kept_weights']))} --format onnx` writes one out")
    target = info.get("target_size")
    pct = lambda v: "" if v is None or v != v else f"{100 * v:.1f}%"  # noqa: E731
    if target:
        print(f"ranked by the val top-1 predicted at {target:,} training images (95% interval) from each trial's "
              f"ladder of sizes")
    headers = ["#", *([f"predicted at {target:,}", "sizes"] if target else []), "val top-1", "test top-1", "MMACs",
               "params (M)", "memory", "kinds", "text"]
    from lab.memory import format_size  # lazy: start-up time

    def memory(r: dict) -> str:   # predicted training bytes; null (NaN in the frame) in tables from before it
        m = r.get("memory")
        return "" if m is None or m != m else format_size(m)

    table = []
    for r in info["pareto"]:
        predicted = [f"{pct(r.get('pred_top1'))} [{pct(r.get('pred_top1_lo'))}, {pct(r.get('pred_top1_hi'))}]",
                     ",".join(str(n) for n in (r.get("sizes") if r.get("sizes") is not None else []))] if target else []
        table.append([str(r["number"]), *predicted, pct(r.get("val_top1")), pct(r.get("test_top1")),
                      f"{r['macs'] / 1e6:.2f}" if r.get("macs") is not None else "",
                      f"{r['params'] / 1e6:.3f}" if r.get("params") is not None else "", memory(r),
                      ",".join(list(r["kinds"]) if r.get("kinds") is not None else []), r.get("text") or ""])
    # the text whole: wrapped to a terminal's width, on one line elsewhere (a file, a pipe: grep finds it)
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    print(render(headers, table, align="<>>>>>>><<" if target else "<>>>>><<", wrap=-1, width=width)
          if table else "(no complete trials yet)")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from lab.study.config import studies_root  # lazy: start-up time

    root = studies_root(args.root)
    infos = [summary(p.parent) for p in sorted(root.glob("*/study.yaml"))] if root.exists() else []
    if args.json:
        print(to_json([{k: v for k, v in i.items() if k != "pareto"} for i in infos]))
        return 0
    headers = ["name", "space", "dataset", "budget", "complete", "pruned", "failed", "rejected", "best val top-1"]
    table = []
    for i in infos:
        best = max((r.get("val_top1") or 0 for r in i["pareto"]), default=None)
        table.append([i["name"], i["space"], i["dataset"], str(i["budget"])]
                     + [str(i["states"].get(s, 0)) for s in ("complete", "pruned", "failed", "rejected")]
                     + ["" if best is None else f"{100 * best:.1f}%"])
    print(render(headers, table, align="<<<>>>>>>") if infos else f"no studies in {root}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from lab.study.config import find_study  # lazy: start-up time
    from lab.study.store import StudyStore  # lazy: start-up time

    folder = find_study(args.name, args.root)
    paths = StudyStore(folder).export(args.out or folder / "export", args.format)
    for p in paths:
        print(p)
    return 0
