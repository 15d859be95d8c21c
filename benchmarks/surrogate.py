"""How well, and how fast, each surrogate model predicts a benchmark table's points.

    PYTHONPATH=. python benchmarks/surrogate.py /work/benchstudies/bench-hybrid.parquet
    PYTHONPATH=. python benchmarks/surrogate.py --synthetic 300     # tests/test_surrogate.py's made-up table

Quality: k-fold held-out Kendall tau, Spearman rho and mean absolute error of the final val_top1
(lab.tabular.surrogate.quality; every point predicted by a model not fitted on it), mean ± sd
over --repeats fold shuffles, and the held-out Kendall tau of the total training seconds. Time: the
fit of the full surrogate (three curves) on the whole table, one single-point prediction (the
replay's call, median of 40), and a replay's worth of them (40 calls, one point each).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.stats

from lab.tabular.features import vars_of
from lab.tabular.surrogate import MODELS, fit_surrogate, full_rows, quality


def held_out_seconds(table, model: str, folds: int, seed: int) -> float:
    """Kendall tau of the predicted total training seconds against the table's, each fold predicted by
    a surrogate fitted on the others (quality() covers accuracy only)."""
    frame, _ = full_rows(table)
    fold = np.random.default_rng(seed).permutation(len(frame)) % folds
    predicted = np.empty(len(frame))
    for f in range(folds):
        held = fold == f
        s = fit_surrogate(frame[~held], model, seed)
        test = frame[held]
        predicted[held] = s.predict(vars_of(test), test["params"].to_numpy(float), test["macs"].to_numpy(float)).seconds[:, -1]
    truth = np.array([c[-1] for c in frame["curve_seconds"]])
    return float(scipy.stats.kendalltau(truth, predicted).statistic)


def measure(table, models: list[str], folds: int, seed: int, repeats: int) -> None:
    frame, epochs = full_rows(table)
    print(f"{table.num_rows} rows, {len(frame)} with full {epochs}-epoch curves; {folds}-fold, "
          f"fold seeds {seed}..{seed + repeats - 1}")
    vars_list, params, macs = vars_of(frame), frame["params"].to_numpy(float), frame["macs"].to_numpy(float)
    for model in models:
        t = time.perf_counter()
        qs = [quality(table, model, folds, seed + r) for r in range(repeats)]
        cv = (time.perf_counter() - t) / repeats
        t = time.perf_counter()
        s = fit_surrogate(table, model, seed)
        fit = time.perf_counter() - t
        calls = []
        for i in range(40):
            j = i % len(frame)
            t = time.perf_counter()
            s.predict(vars_list[j:j + 1], params[j], macs[j], epochs)
            calls.append(time.perf_counter() - t)
        stat = {k: (np.mean([q[k] for q in qs]), np.std([q[k] for q in qs])) for k in ("kendall", "spearman", "mae")}
        print(f"  {model:4s} val_top1: kendall {stat['kendall'][0]:.3f} ± {stat['kendall'][1]:.3f}  "
              f"spearman {stat['spearman'][0]:.3f} ± {stat['spearman'][1]:.3f}  mae {stat['mae'][0]:.4f}  (n {qs[0]['n']}); "
              f"seconds: kendall {held_out_seconds(table, model, folds, seed):.3f}; "
              f"fit {fit:.2f} s, predict {1e3 * np.median(calls):.2f} ms/point, 40 calls {sum(calls):.3f} s; "
              f"cross-validation {cv:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tables", nargs="*", type=Path, help="benchmark Parquet files")
    p.add_argument("--synthetic", type=int, metavar="N", help="also a made-up table of N random hybrid points")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="cross-validations with fold seeds seed, seed+1, ...")
    args = p.parse_args()
    for path in args.tables:
        print(path)
        measure(pq.read_table(path), args.models, args.folds, args.seed, args.repeats)
    if args.synthetic:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from test_surrogate import synthetic_table

        print(f"synthetic ({args.synthetic} points of the hybrid space)")
        measure(synthetic_table(args.synthetic, seed=args.seed), args.models, args.folds, args.seed, args.repeats)


if __name__ == "__main__":
    main()
