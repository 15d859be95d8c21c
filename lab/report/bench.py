"""What `lab bench proxies` and `lab bench search` print: how well each zero-cost proxy ranks a
benchmark table's trained accuracy beside #params and MACs, and samplers' anytime hypervolumes."""

from __future__ import annotations

import math
import statistics

from lab.report.table import render
from lab.tabular.stats import paired_difference, rank_correlation
from lab.tabular.table import BenchError, load_bench
from lab.train.record import PROXIES

BASELINES = ("params", "macs")   # the free scores every proxy must beat


def proxy_report(bench: str, metric: str = "val_top1", n_boot: int = 1000, level: float = 0.95) -> dict:
    """Spearman and Kendall correlation of each proxy and baseline with `metric` over the table's
    complete points, with bootstrap intervals, the median seconds each proxy took per point, and each
    proxy's paired difference in Spearman's rho from the better baseline (the same resampled rows for
    both) with its verdict."""
    table = load_bench(bench)
    if metric not in ("val_top1", "test_top1"):
        raise BenchError(f"--metric {metric!r}: expected val_top1 or test_top1")
    rows = [r for r in table.rows() if r["state"] == "complete"]
    accuracy = [r[metric] for r in rows]
    scores = []
    for name in (*BASELINES, *PROXIES):
        column = name if name in BASELINES else f"zc_{name}"
        corr = rank_correlation([r[column] for r in rows], accuracy, n_boot=n_boot, level=level)
        seconds = [r[f"zc_{name}_seconds"] for r in rows if name in PROXIES and r[f"zc_{name}_seconds"] is not None]
        scores.append({"score": name, "kind": "baseline" if name in BASELINES else "proxy", "n": corr["n"],
                       "spearman": corr["spearman"], "kendall": corr["kendall"],
                       "seconds_per_point": statistics.median(seconds) if seconds else 0.0})
    best = max((s for s in scores if s["kind"] == "baseline"), key=lambda s: _value(s, "spearman"))
    for s in scores:
        if s["kind"] == "proxy":
            s["versus_best_baseline"] = paired_difference([r[f"zc_{s['score']}"] for r in rows], [r[best["score"]] for r in rows],
                                                          accuracy, n_boot=n_boot, level=level)
            s["verdict"] = _verdict(s["versus_best_baseline"], best["score"])
    return {"bench": table.source, "metric": metric, "points": len(rows), "level": level, "bootstrap": n_boot,
            "best_baseline": best["score"], "scores": scores}


def _value(score: dict, key: str) -> float:
    v = score[key]["value"]
    return -math.inf if v is None or math.isnan(v) else v


def _verdict(difference: dict, baseline: str) -> str:
    """Better or worse than the baseline when the paired bootstrap interval of the Spearman difference
    excludes 0, else undecided."""
    if math.isnan(difference["value"]):
        return "undefined"
    if difference["lo"] > 0:
        return f"better than {baseline}"
    if difference["hi"] < 0:
        return f"worse than {baseline}"
    return f"undecided against {baseline}"


def _ci(c: dict) -> str:
    if c["value"] is None or math.isnan(c["value"]):
        return "-"
    return f"{c['value']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]"


def format_proxies(report: dict) -> str:
    pct = round(100 * report["level"])
    rows = [[s["score"], s["kind"], _ci(s["spearman"]), _ci(s["kendall"]),
             _ci(s["versus_best_baseline"]) if "versus_best_baseline" in s else "",
             "analytic" if s["kind"] == "baseline" else f"{s['seconds_per_point'] * 1000:.0f} ms", s.get("verdict", "")]
            for s in report["scores"]]
    head = (f"{report['bench']}: {report['points']} trained points; rank correlation with {report['metric']} "
            f"({pct}% bootstrap intervals, {report['bootstrap']} resamples)\n")
    return head + render(["score", "kind", "Spearman rho", "Kendall tau", f"rho - {report['best_baseline']}'s rho",
                          "cost/point", "verdict"], rows) + "\n"


def format_search(report: dict) -> str:
    """The per-sampler table of mean hypervolume [interval] at each N, and the search target's check."""
    at = report["at"]
    cells = {(s["sampler"], s["trials"]): s for s in report["summary"]}

    def cell(sampler: str, n: int) -> str:
        s = cells[(sampler, n)]
        return "-" if s["mean"] is None or math.isnan(s["mean"]) else f"{s['mean']:.4f} [{s['lo']:.4f}, {s['hi']:.4f}]"

    rows = [[sampler] + [cell(sampler, n) for n in at] for sampler in report["samplers"]]
    pct = round(100 * report["level"])
    out = (f"{report['bench']}: anytime hypervolume (val top-1 x MACs, share of the budget), mean [{pct}% interval] "
           f"over {report['seeds']} seeds; {report['wall_seconds']:.0f} s\n")
    out += render(["sampler"] + [f"@{n}" for n in at], rows) + "\n"
    if "random" in report["samplers"] and 20 in at and 40 in at:
        random40 = cells[("random", 40)]["mean"]
        for sampler in report["samplers"]:
            if sampler != "random":
                mine = cells[(sampler, 20)]["mean"]
                if mine is not None and random40 is not None:
                    sign = ">=" if mine >= random40 else "<"
                    out += f"{sampler} @20 {mine:.4f} {sign} random @40 {random40:.4f}\n"
    return out
