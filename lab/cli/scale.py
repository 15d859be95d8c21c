"""`lab scale fit|frontier`: scaling-law fits of error against training-set size per architecture,
and the accuracy-per-compute frontier across studies (see lab.scaling)."""

from __future__ import annotations

import argparse
import math

from lab.cli.args import ROOT_HELP, whole
from lab.cli.args import level as _level
from lab.cli.args import samples as _count
from lab.report.jsonable import to_json
from lab.report.table import render

MAX_CROSSOVERS = 20      # crossovers printed (the file holds every one)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scale", help="scaling laws: error vs training-set size per architecture; frontiers")
    ssub = p.add_subparsers(dest="scale_command", metavar="SCALE_COMMAND", parser_class=type(p))
    ssub.required = True

    fit = ssub.add_parser("fit", help="fit power and saturating laws per architecture, with bootstrap intervals")
    fit.add_argument("studies", nargs="+", metavar="STUDY", help="study name (under --root) or folder; several pool")
    fit.add_argument("--root", help=ROOT_HELP)
    fit.add_argument("--metric", default="auto", choices=["auto", "test_top1", "val_top1", "test_top5", "val_top5"],
                     help="accuracy the error is 1 minus (default auto: test_top1, val_top1 where a test is missing)")
    fit.add_argument("--size", default="auto", choices=["auto", "n_train", "fraction"],
                     help="what D is (default auto: n_train where recorded, else fraction)")
    fit.add_argument("--bootstrap", type=_count, default=1000, metavar="N",
                     help="bootstrap samples for the intervals (default 1000; 0: no intervals)")
    fit.add_argument("--level", type=_level, default=0.95, help="confidence level of the intervals (default 0.95)")
    fit.add_argument("--seed", type=whole, default=0, help="seed of the bootstrap (default 0)")
    fit.add_argument("--json", action="store_true", help="print the tables as JSON")
    fit.add_argument("--no-write", dest="write", action="store_false",
                     help="do not write scaling_fits.parquet into the (first) study's folder")
    fit.set_defaults(run=run_fit)

    front = ssub.add_parser("frontier", help="the Pareto set of accuracy vs cost over several studies, by family")
    front.add_argument("studies", nargs="+", metavar="STUDY", help="study name (under --root) or folder")
    front.add_argument("--root", help=ROOT_HELP)
    front.add_argument("--cost", default="macs", choices=["macs", "params", "train_macs"],
                       help="cost axis (default macs per image; train_macs ~ 3 x MACs x n_train x epochs)")
    front.add_argument("--metric", default="auto", choices=["auto", "test_top1", "val_top1", "test_top5", "val_top5"],
                       help="accuracy (default auto: test_top1, val_top1 where a test is missing)")
    front.add_argument("--json", action="store_true")
    front.set_defaults(run=run_frontier)

    ex = ssub.add_parser("extrapolate", help="check extrapolation: fit each architecture on the sizes up to a fraction "
                                             "of the data, predict the full data, compare with what was measured")
    ex.add_argument("studies", nargs="+", metavar="STUDY", help="scaling study name (under --root) or folder")
    ex.add_argument("--root", help=ROOT_HELP)
    ex.add_argument("--upto", type=float, default=0.3, help="fit on the fractions up to this one (default 0.3)")
    ex.add_argument("--law", default="power", choices=["power", "saturating", "broken", "auto"],
                    help="law to extrapolate with (default power; auto: the one that best predicts each curve's "
                         "largest fitted size from its smaller ones)")
    ex.add_argument("--level", type=_level, default=0.95, help="level of the prediction intervals (default 0.95)")
    ex.add_argument("--seed", type=whole, default=0, help="seed of the bootstrap (default 0)")
    ex.add_argument("--json", action="store_true")
    ex.add_argument("--no-write", dest="write", action="store_false",
                    help="do not write extrapolation.parquet into the (first) study's folder")
    ex.set_defaults(run=run_extrapolate)


def _pct(v) -> str:
    return "" if v is None or not math.isfinite(v) else f"{100 * v:.2f}%"


def _size(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if math.isinf(v):
        return "beyond"          # a crossover interval's end beyond the searched range
    if v == 0:
        return "below"           # ... or below it
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _ci(v, lo, hi, fmt) -> str:
    if v is None or not math.isfinite(v):
        return ""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return fmt(v)
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"


def _clean(v):
    """A JSON-able cell: NaN -> null, inf stays a string."""
    if isinstance(v, float):
        return None if math.isnan(v) else ("inf" if math.isinf(v) else v)
    return v


def run_fit(args: argparse.Namespace) -> int:
    from lab.report.fits import CROSSOVERS_FILE, fit_studies  # lazy: start-up time

    result = fit_studies(args.studies, root=args.root, metric=args.metric, size=args.size, n_boot=args.bootstrap,
                         seed=args.seed, level=args.level)
    table, cross = result.table, result.crossover_table
    written = result.write() if args.write else None
    if args.json:
        print(to_json({"studies": result.names, "metric": result.metric, "size": result.size,
                       "fits": [{k: _clean(v) for k, v in r.items()} for r in table.to_dict("records")],
                       "crossovers": [{k: _clean(v) for k, v in r.items()} for r in cross.to_dict("records")],
                       "written": [str(p) for p in written] if written else None}))
        return 0
    what = result.metric.replace("_top", " top-")
    scheme = ", ".join(sorted(set(table.loc[table["law"].notna(), "bootstrap"].dropna()) - {"none"}))
    print(f"scaling fits of {'+'.join(result.names)}: {what} error against {result.size}, "
          + (f"{args.bootstrap} bootstrap samples{f' ({scheme})' if scheme else ''}, {args.level:.0%} intervals"
             if args.bootstrap else "no bootstrap"))
    print(render(*_fit_lines(table), align="<<<<<>><"))
    print("* preferred law (lowest AICc; the power law when no law has enough sizes for one)")
    if len(cross):
        print("\ncrossovers (the first family's architecture leads below the size, the second's above):")
        rows = [[f"{r.leader} ({r.leader_family})", f"{r.overtaker} ({r.overtaker_family})",
                 _ci(r.d_cross, r.d_lo, r.d_hi, _size), f"{r.p_cross:.0%}" if r.p_cross == r.p_cross else "",
                 _pct(r.error)] for r in cross.head(MAX_CROSSOVERS).itertuples()]
        print(render(["leader", "overtaken by", f"at D [{args.level:.0%} CI]", "samples crossing", "error there"],
                     rows, align="<<<>>"))
        if len(cross) > MAX_CROSSOVERS:
            print(f"... and {len(cross) - MAX_CROSSOVERS} more (smallest sizes first; all in {CROSSOVERS_FILE})")
    if written:
        print(f"wrote {written[0]} and {written[1].name}")
    return 0


def _fit_lines(table) -> tuple[list[str], list[list[str]]]:
    """The printed table: fitted architectures first, then those with a reason instead of numbers
    (the reasons without the architecture's name, which the row shows)."""
    headers = ["arch", "family", "law", "b [CI]", "c [CI]", "extrapolation", "rms (log)", "note"]
    degenerate = table["law"].isna()
    rows, last = [], None
    for r in list(table[~degenerate].itertuples()) + list(table[degenerate].itertuples()):
        first = r.arch_id != last or r.law is None
        last = r.arch_id
        arch, family = (r.arch, r.family) if first else ("", "")
        reason = r.reason[len(r.arch) + 2:] if isinstance(r.reason, str) and r.reason.startswith(f"{r.arch}: ") \
            else r.reason
        if r.law is None or (isinstance(r.law, float) and math.isnan(r.law)):
            rows.append([arch, family, "-", "", "", "", "", reason])
            continue
        law = r.law + (" *" if r.preferred else "")
        if isinstance(reason, str) and reason:
            rows.append([arch, family, law, "", "", "", "", reason])
            continue
        extrap = (f"{r.extrap_rel_error:+.1%} at {_size(r.extrap_size)}"
                  if r.extrap_rel_error == r.extrap_rel_error and r.extrap_rel_error is not None else "")
        note = ""
        if r.law == "broken":
            note = f"b2 {_ci(r.b2, r.b2_lo, r.b2_hi, lambda v: f'{v:.3f}')} beyond D={_size(r.d_break)}"
        elif not extrap and isinstance(r.extrap_reason, str):
            note = f"no extrapolation: {r.extrap_reason}"
        rows.append([arch, family, law, _ci(r.b, r.b_lo, r.b_hi, lambda v: f"{v:.3f}"),
                     _ci(r.c, r.c_lo, r.c_hi, _pct), extrap,
                     f"{r.rmse_log:.3f}" if r.rmse_log == r.rmse_log else "", note])
    return headers, rows


def run_frontier(args: argparse.Namespace) -> int:
    from lab.report.frontier import COSTS, by_family, frontier  # lazy: start-up time
    from lab.study.tables import read_studies  # lazy: start-up time

    read = read_studies(args.studies, args.root)
    names = read.names
    front = frontier(read.trials, args.cost, args.metric)
    metric, cost = front.attrs["metric"], front.attrs["cost"]
    if args.json:
        print(to_json({"studies": names, "metric": metric, "cost": cost, "trials": front.attrs["trials"],
                       "frontier": [{k: _clean(v) for k, v in r.items()} for r in front.to_dict("records")]}))
        return 0
    print(f"accuracy-per-compute frontier of {'+'.join(names)}: {metric.replace('_top', ' top-')} against "
          f"{COSTS[cost]}; {len(front)} of {front.attrs['trials']} complete trials are on it")
    unit, scale = {"macs": ("MMACs", 1e-6), "params": ("params (M)", 1e-6), "train_macs": ("train TMACs", 1e-12)}[cost]
    table = [[r["family"] or "", r["arch"] or "", _pct(r[metric]), f"{r[cost] * scale:.4g}",
              _size(r.get("n_train")) if "n_train" in r else "", r.get("study", ""), str(r.get("number", ""))]
             for r in front.to_dict("records")]
    print(render(["family", "arch", metric.replace("_top", " top-"), unit, "train images", "study", "#"], table,
                 align="<<>>><>"))
    fam = by_family(front)
    print("by family: " + "; ".join(f"{r.family} {r.points} point(s), {r.cost_min * scale:.4g}-{r.cost_max * scale:.4g}"
                                    f" {unit}" for r in fam.itertuples()))
    return 0


def run_extrapolate(args: argparse.Namespace) -> int:
    from lab.report.extrapolation import TARGET_ERROR, TARGET_TAU, validate  # lazy: start-up time

    v = validate(args.studies, root=args.root, upto=args.upto, law=args.law, level=args.level, seed=args.seed)
    written = v.write() if args.write else None
    s = v.summary
    if args.json:
        print(to_json({"studies": v.studies, "upto": v.upto, "law": v.law, "level": v.level,
                       "noise": {"sd": v.noise.sd, "dof": v.noise.dof, "drift": v.noise.drift}, "summary": s,
                       "archs": [{k: _clean(x) for k, x in r.items()} for r in v.rows],
                       "written": str(written) if written else None}))
        return 0
    print(f"extrapolation check of {'+'.join(v.studies)}: the {v.law} law fitted on the sizes up to {v.upto:g} of the "
          f"training split, val top-1 predicted at the largest size measured beyond; noise sd {v.noise.sd:.3f} (log "
          f"error, {v.noise.dof:g} dof), drift {v.noise.drift:.3f} per unit log size beyond the data (from the "
          f"fitted sizes' own extrapolations), {v.level:.0%} prediction intervals")
    rows = []
    for r in sorted(v.rows, key=lambda r: -(r.get("predicted") or -1)):
        if r.get("predicted") is None:
            rows.append([r["arch"], r.get("family") or "", r.get("fitted_sizes") or "", *[""] * 5, r.get("reason") or ""])
            continue
        rows.append([r["arch"], r["family"] or "", r["fitted_sizes"], f"{_size(r['target'])} ({r['factor']:.1f}x)",
                     _pct(r["acc_at_largest_fitted"]), _ci(r["predicted"], r["lo"], r["hi"], _pct), _pct(r["measured"]),
                     f"{r['abs_error_pts']:.2f}",
                     ("yes" if r["covered"] else "NO") + (" (taking off)" if r["accelerating"] else "")])
    print(render(["arch", "family", "fitted on", "predicted at", "acc at largest fitted", "predicted [interval]",
                  "measured", "|error| pts", "covered"], rows, align="<<<>>>>><"))
    tau, base = s["kendall"], s["baseline_kendall"]
    met = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    print(f"{s['archs']} architectures: median |error| {s['median_abs_error_pts']:.2f} pts (target <= {TARGET_ERROR:g}: "
          f"{met(s['median_target_met'])}), mean {s['mean_abs_error_pts']:.2f}, max {s['max_abs_error_pts']:.2f}, "
          f"bias {s['bias_pts']:+.2f} pts")
    print(f"Kendall tau {tau['value']:.3f} [{tau['lo']:.3f}, {tau['hi']:.3f}] (target >= {TARGET_TAU:g}: "
          f"{met(s['kendall_target_met'])}); ranking by the accuracy at the largest fitted size instead: "
          f"{base['value']:.3f}; Spearman rho {s['spearman']['value']:.3f}")
    if s["val_images"]:
        print(f"the measurements' own noise ({s['val_images']} validation images) caps the Kendall tau any predictor can "
              f"reach against them at about {s['tau_ceiling']:.2f} (two binomial re-measurements of the same accuracies)")
    print(f"coverage of the {v.level:.0%} intervals: {s['coverage']:.0%} ({round(s['coverage'] * s['archs'])} of {s['archs']})")
    if s["accelerating"]:
        print(f"{s['accelerating']} architecture(s) still taking off at the fitted sizes (their error falls faster at the "
              f"largest ones): a power law fitted there under-predicts their gain from more data")
    if written:
        print(f"wrote {written}")
    return 0
