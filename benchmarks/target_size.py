"""What a --target-size study spends to reach its pick, against a study that trains every point on
the full data, and how the two picks compare when both are trained on the full data.

    PYTHONPATH=. python benchmarks/target_size.py --root /work/bench21 --trials 20 --seeds 3
    PYTHONPATH=. python benchmarks/target_size.py --root /work/bench21 --trials 20 --target-trials 60 \
        --name bench-target-60     # the same compute as the full-data study, about

Both studies search the same space with the same sampler, seed, epochs and trial budget:
- target: `--target-size N --fraction F --rungs R` (N the full training split by default), each trial
  climbing the ladder F/3^(R-1) .. F, halving on the accuracy predicted at N;
- full: the default study on the full training split (Pareto-rank ASHA over epochs).
Compute: training MACs (3 x MACs per image x images seen, forward + backward, summed over every
trained trial and size), the workers' seconds, and the wall time of each study's run. The picks are
the best predicted accuracy at N (target) and the best measured val_top1 (full); both are then
trained on the full split for --seeds seeds with the studies' recipe, and their val/test accuracy
compared (mean and spread over the seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pandas as pd

from lab.data import load_dataset
from lab.study.config import StudyConfig
from lab.study.runner import create, resume
from lab.study.store import StudyStore
from lab.train.recipes import recipe
from lab.train.run import train


def run_study(config: StudyConfig, root: Path) -> float:
    """Create (or finish) the study; the seconds this call ran it."""
    start = time.perf_counter()
    if (root / config.name / "study.yaml").exists():
        resume(config.name, root=root, verbose=0)
    else:
        create(config, root=root, verbose=0)
    return time.perf_counter() - start


def spent(trials: pd.DataFrame, epochs: int) -> dict:
    """Training MACs, worker seconds and wall time of a study's trained trials."""
    trained = trials[trials["state"].isin(["complete", "pruned", "failed"]) & trials["macs"].notna()]
    images = []
    for r in trained.to_dict("records"):
        sizes = r.get("sizes")
        if sizes is not None and len(sizes):
            # every size but the last trained its full epochs; the last one its epochs_done
            images.append(sum(sizes[:-1]) * epochs + sizes[-1] * (r["epochs_done"] or epochs))
        else:
            images.append((r["n_train"] or 0) * (r["epochs_done"] or 0))
    macs = sum(3.0 * m * i for m, i in zip(trained["macs"], images))
    seconds = [sum(r["sizes_seconds"]) if r.get("sizes_seconds") is not None and len(r["sizes_seconds"])
               else (r["train_seconds"] or 0.0) for r in trained.to_dict("records")]
    wall = (trials["finished_at"].max() - trials["started_at"].min()).total_seconds()
    return {"trained": len(trained), "complete": int((trials["state"] == "complete").sum()),
            "train_tmacs": macs / 1e12, "train_seconds": float(sum(seconds)),
            "worker_seconds": float(trained["worker_seconds"].fillna(0).sum()), "wall_seconds": wall}


def retrain(text: str, config: StudyConfig, seeds: int) -> list[dict]:
    """The point trained on the full split with the study's recipe, once per seed."""
    out = []
    for seed in range(config.seed, config.seed + seeds):
        data = load_dataset(config.dataset, seed=seed)
        rec = recipe(config.recipe, batch_size=config.batch_size, epochs=config.epochs)
        record = train(text, data, recipe=rec, seed=seed, device="cpu", out=None).record
        out.append({"seed": seed, "val_top1": record["val_top1"], "test_top1": record.get("test_top1")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("bench21"))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--rungs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--target", type=int, default=None, help="N (default: the full training split)")
    parser.add_argument("--target-trials", type=int, default=None, help="the target study's budget (default --trials)")
    parser.add_argument("--name", default="bench-target", help="the target study's name")
    args = parser.parse_args()
    full_split = load_dataset("mnist5k", seed=0).n_train
    target = args.target or full_split
    common = dict(space="hybrid", dataset="mnist5k", trials=args.trials, epochs=args.epochs, seed=0, concurrency=2)
    configs = {"target": StudyConfig(name=args.name, target_size=target, fraction=args.fraction, rungs=args.rungs,
                                     **dict(common, trials=args.target_trials or args.trials)),
               "full": StudyConfig(name="bench-full", **common)}
    report: dict = {"target_size": target, "full_split": full_split, "settings": {k: str(v) for k, v in common.items()}}
    for key, config in configs.items():
        seconds = run_study(config, args.root)
        trials = StudyStore(args.root / config.name).trials().to_pandas()
        report[key] = {"run_seconds": seconds, **spent(trials, args.epochs)}
        done = trials[trials["state"] == "complete"]
        column = "pred_top1" if key == "target" else "val_top1"
        best = done.loc[done[column].idxmax()]
        report[key]["pick"] = {"number": int(best["number"]), "text": best["text"], "macs": int(best["macs"]),
                               column: float(best[column]), "val_top1_at_size": float(best["val_top1"]),
                               "n_train": int(best["n_train"])}
        if key == "target":
            report[key]["pick"]["interval"] = [float(best["pred_top1_lo"]), float(best["pred_top1_hi"])]
        print(json.dumps({key: report[key]}, indent=1), flush=True)
    done = json.loads((args.root / "report.json").read_text()) if (args.root / "report.json").exists() else {}
    for key, config in configs.items():
        earlier = done.get(key, {}).get("pick", {})
        if earlier.get("text") == report[key]["pick"]["text"] and "full_data" in earlier:   # trained already
            report[key]["pick"]["full_data"] = earlier["full_data"]
            continue
        runs = retrain(report[key]["pick"]["text"], config, args.seeds)
        vals = [r["val_top1"] for r in runs]
        report[key]["pick"]["full_data"] = {"runs": runs, "val_mean": statistics.mean(vals),
                                            "val_sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}
        print(json.dumps({key: report[key]["pick"]["full_data"]}, indent=1), flush=True)
    t, f = report["target"], report["full"]
    print(f"\ntraining MACs: target {t['train_tmacs']:.3f} T vs full {f['train_tmacs']:.3f} T "
          f"({t['train_tmacs'] / f['train_tmacs']:.2f}x); training seconds {t['train_seconds']:.0f} vs "
          f"{f['train_seconds']:.0f} ({t['train_seconds'] / f['train_seconds']:.2f}x); wall {t['run_seconds']:.0f} s vs "
          f"{f['run_seconds']:.0f} s ({t['run_seconds'] / f['run_seconds']:.2f}x)")
    tp, fp = t["pick"], f["pick"]
    print(f"picks on the full data ({args.seeds} seeds): target's #{tp['number']} (predicted {tp['pred_top1']:.3f} "
          f"[{tp['interval'][0]:.3f}, {tp['interval'][1]:.3f}]) {tp['full_data']['val_mean']:.4f} ± "
          f"{tp['full_data']['val_sd']:.4f}; full's #{fp['number']} {fp['full_data']['val_mean']:.4f} ± "
          f"{fp['full_data']['val_sd']:.4f}")
    (args.root / f"report-{args.name}.json").write_text(json.dumps(report, indent=1, default=str))
    if args.name == "bench-target":
        (args.root / "report.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
