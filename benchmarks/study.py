"""Where a study's worker time goes, and the hypervolume its sampler reached.

    lab study create --space hybrid --name bench-tpe --root /tmp/studies            # the default study
    lab study create --space hybrid --name bench-random --sampler random --trials 40 --root /tmp/studies
    PYTHONPATH=. python benchmarks/study.py /tmp/studies/bench-tpe /tmp/studies/bench-random --at 20 40

Time share: the sum of the trials' training seconds (data, augmentation, steps) over the sum of
their time in the worker (`worker_seconds`: model build, Lightning set-up, training, evaluation),
and over their wall time as the driver sees it (from the ask to the last report, adding Ray's
actor start, scheduling and reporting). Hypervolume: of (val top-1 max, MACs min) over
the first N trained trials, reference (0, the space's MAC budget).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lab.pareto import hypervolume_2d
from lab.study.space import load_space
from lab.study.store import StudyStore


def report(folder: Path, at: list[int]) -> None:
    store = StudyStore(folder)
    config = store.load_config()
    rows = store.trials().to_pylist()
    trained = [r for r in rows if r["state"] in ("complete", "pruned", "failed")]
    states = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "failed", "rejected")}
    wall = np.array([(r["finished_at"] - r["started_at"]).total_seconds() for r in trained])
    train = np.array([r["train_seconds"] or 0.0 for r in trained])
    span = (max(r["finished_at"] for r in trained) - min(r["started_at"] for r in rows)).total_seconds()
    print(f"{config['name']}: space {config['space']}, sampler {config['sampler']}, scheduler {config['scheduler']}, "
          f"{config['epochs']} epochs, fraction {config['fraction']}, concurrency {config['concurrency']}; {states}")
    print(f"  study wall {span:.0f} s from the first ask to the last trial; {3600 * len(trained) / span:.0f} trials/hour")
    worker = np.array([r.get("worker_seconds") or np.nan for r in trained])
    ok = np.isfinite(worker)
    print(f"  training share of worker time {train[ok].sum() / worker[ok].sum():.3f} "
          f"(sum {train[ok].sum():.0f} s of {worker[ok].sum():.0f} s, {ok.sum()} trials); "
          f"of wall time {train.sum() / wall.sum():.3f} (sum {train.sum():.0f} s of {wall.sum():.0f} s)")
    print(f"  per-trial overhead {np.mean(wall - train):.2f} s (median {np.median(wall - train):.2f}): in the worker "
          f"outside training steps (build, Lightning set-up, evaluation) {np.mean(worker[ok] - train[ok]):.2f} s; "
          f"Ray actor start, scheduling and reporting {np.mean(wall[ok] - worker[ok]):.2f} s")
    space = load_space(config["space"])
    ordered = sorted((r for r in rows if r["state"] == "complete"), key=lambda r: r["number"])
    trained_order = sorted(trained, key=lambda r: r["number"])
    for n in at:
        first = {r["number"] for r in trained_order[:n]}
        pts = [(r["val_top1"], r["macs"]) for r in ordered if r["number"] in first]
        if len(trained_order) < n:
            print(f"  hypervolume @{n}: only {len(trained_order)} trained trials")
            continue
        hv = hypervolume_2d(pts, ["max", "min"], (0.0, space.max_macs))
        print(f"  hypervolume @{n} trained trials: {hv / space.max_macs:.4f} (accuracy x MACs share of the budget)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--at", nargs="+", type=int, default=[20])
    args = p.parse_args()
    for folder in args.folders:
        report(folder, args.at)


if __name__ == "__main__":
    main()
