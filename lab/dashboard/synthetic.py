"""Synthetic study stores, for the dashboard's tests and benchmark and for trying `lab dashboard`
without training anything: plausible rows of a hybrid-space study (accuracy rising with MACs and
data, a few named points, pruned, failed and rejected trials, learning curves for a subset).

    python -m lab.dashboard.synthetic studies/demo --trials 300 --fractions 0.1 0.3 1
    python -m lab.dashboard.synthetic studies/scaling-demo --scaling --fractions 0.05 0.1 0.2 0.4 0.7 1 --seeds 3
    python -m lab.dashboard.synthetic studies/target-demo --target-size 12000 --trials 60

`--scaling` writes a scaling study instead: named architectures x fractions x seeds whose errors
follow known saturating laws (SCALING_LAWS) with multiplicative noise, for `lab scale fit`.
`--target-size N` writes a --target-size study: every trial a ladder of three nested sizes and its
prediction at N (`write_target_study`), for the dashboard's "Predicted at N".
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lab.catalog import entries, family_of, kinds_family, resolve
from lab.cost import cost
from lab.scaling.predict import predict
from lab.study.fidelity import curve_of, prediction_columns
from lab.study.space import describe, load_space
from lab.study.store import EPOCH_SCHEMA, TRIAL_SCHEMA, StudyStore

NAMED = ("resnet18@28px,w=0.25", "swin_t@28px,w=0.25", "convnext_t@32px,w=0.25")


# the made-up accuracy model: what each kind adds to a synthetic point's accuracy (any other kind: 0)
KIND_BONUS = {"basic": 0.0, "bottleneck": 0.01, "convnext": 0.015, "mhsa": -0.03, "swin": -0.005, "nat": 0.0,
              "mixer": -0.04}


def _mixers() -> list[str]:
    """The block kinds the hybrid space chooses among (the registry's conv kinds it names and every token mixer)."""
    space = load_space("hybrid")
    assert space.stages is not None  # the hybrid space has per-stage variables
    return list(next(v for v in space.stages.vars if v.name == "mixer").choices)


def _arch(rng: np.random.Generator, mixers: list[str]) -> dict:
    """One random hybrid point: its choices, text, kinds, layout and cost."""
    layout = str(rng.choice(["isotropic", "hierarchical"]))
    stem = str(rng.choice(["conv", "patch"]))
    width = int(rng.choice([16, 32, 48, 64]))
    n_stages = int(rng.integers(1, 4))
    choices: dict = {"layout": layout, "stem": stem, "width": width, "n_stages": n_stages}
    if stem == "patch":
        choices["patch"] = int(rng.choice([2, 4, 7]))
    else:
        choices["stride"] = int(rng.choice([2, 4]))
    stages, kinds = [], []
    for i in range(n_stages):
        mixer = str(rng.choice(mixers))
        depth = int(rng.integers(1, 4))
        choices[f"mixer_{i}"], choices[f"depth_{i}"] = mixer, depth
        if mixer == "bottleneck":
            choices[f"e_{i}"] = int(rng.choice([1, 2, 4]))
        if mixer == "swin":
            choices[f"w_{i}"] = int(rng.choice([2, 4, 7]))
        w = width * 2 ** i if layout == "hierarchical" else width
        stages.append(f"{mixer} {depth}x{w}{'/2' if i and layout == 'hierarchical' else ''}")
        kinds.append(mixer)
    stem_text = f"patch(p={choices['patch']},c={width}),pos" if stem == "patch" else f"conv(c={width},s=2),bn,relu"
    text = f"@28 | {stem_text} | {' | '.join(stages)} | ln,gap,fc"
    blocks = sum(choices[f"depth_{i}"] for i in range(n_stages))
    macs = int(min(4e7, max(1e6, math.exp(rng.normal(math.log(6e6), 0.8)) * blocks / 4)))
    params = int(min(3e6, max(1e4, macs * rng.uniform(0.02, 0.2))))
    return {"choices": choices, "text": text, "kinds": sorted(set(kinds)), "layout": layout, "stem": stem,
            "macs": macs, "params": params, "res": 28,
            "arch_id": hashlib.blake2b(text.encode(), digest_size=5).hexdigest(),   # as Spec.arch_id hashes its text
            "family": kinds_family(kinds)}


def _named(name: str) -> dict:
    spec = resolve(name)
    report = cost(spec, num_classes=10, in_chans=1)
    shape = describe(spec)
    return {"choices": {"named": name.split("@")[0]}, "text": spec.text, "kinds": shape["kinds"],
            "layout": shape["layout"], "stem": shape["stem"], "macs": report.macs, "params": report.params,
            "res": spec.res, "arch_id": spec.arch_id, "family": family_of(spec, name)}


def synthetic_rows(trials: int, fractions: Sequence[float] = (1.0,), epochs: int = 8, curves: int | None = None,
                   seed: int = 0, pool: int = 200, named: bool = True,
                   states: tuple[float, float, float, float] = (0.78, 0.12, 0.05, 0.05)) -> tuple[list[dict], dict]:
    """`trials` trial rows (TRIAL_SCHEMA) and {number: epoch rows} for the first `curves` trained ones."""
    rng = np.random.default_rng(seed)
    mixers = _mixers()
    archs = [_arch(rng, mixers) for _ in range(pool)]
    if named:
        archs += [_named(n) for n in NAMED]
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows: list[dict] = []
    curves_of: dict[int, list[dict]] = {}
    curves = trials if curves is None else curves
    for number in range(trials):
        arch = archs[int(rng.integers(len(archs)))]
        fraction = float(fractions[number % len(fractions)])
        state = str(rng.choice(["complete", "pruned", "failed", "rejected"], p=states))
        lr = float(math.exp(rng.uniform(math.log(3e-4), math.log(3e-3))))
        row = {"number": number, "state": state, "arch_id": arch["arch_id"], "text": arch["text"],
               "family": arch["family"], "kinds": arch["kinds"], "layout": arch["layout"], "stem": arch["stem"],
               "params": arch["params"], "macs": arch["macs"], "res": arch["res"], "dataset": "mnist5k",
               "fraction": fraction, "n_train": round(4500 * fraction), "epochs": epochs, "recipe": "default",
               "hparams": {"vars": arch["choices"], "recipe": {"lr": lr}}, "seed": 0,
               "started_at": start + dt.timedelta(minutes=number), "lab_version": "0.1.0"}
        if state == "rejected":
            row.update(error="over budget: 41.2 MMACs > 40 MMACs")
            rows.append(row)
            continue
        quality = (0.04 * math.log(arch["macs"] / 1e6) + 0.05 * math.log10(fraction)
                   + np.mean([KIND_BONUS.get(k, 0) for k in arch["kinds"]]) - 2 * abs(math.log10(lr / 1e-3)) * 0.02)
        final = float(np.clip(0.86 + quality + rng.normal(0, 0.015), 0.1, 0.995))
        done = epochs if state == "complete" else int(rng.integers(1, max(2, epochs)))
        curve = [final - (final - 0.3) * math.exp(-0.6 * e) * 0.9 - 0.01 * (epochs - e) / epochs
                 for e in range(1, done + 1)]
        losses = [2.3 * math.exp(-0.45 * e) + (1 - final) for e in range(1, done + 1)]
        row.update(epochs_done=done, val_top1=curve[-1], val_top5=min(1.0, curve[-1] + 0.08), loss=losses[-1],
                   train_seconds=done * arch["macs"] / 2e6,
                   images_per_second=float(5e9 / arch["macs"] * rng.uniform(0.7, 1.3)),
                   device="cpu", finished_at=start + dt.timedelta(minutes=number + 1))
        if state == "complete":
            row.update(test_top1=curve[-1] - 0.005, test_top5=min(1.0, curve[-1] + 0.07))
        elif state == "pruned":
            row.update(error=f"stopped by the scheduler after {done} epoch(s)")
        else:
            row.update(error="TrainError: the loss stopped being finite", val_top1=0.1, epochs_done=done)
        rows.append(row)
        if len(curves_of) < curves:
            curves_of[number] = [{"number": number, "epoch": e + 1, "loss": losses[e], "val_top1": curve[e],
                                  "seconds": (e + 1) * arch["macs"] / 2e6} for e in range(done)]
    return rows, curves_of


def write_synthetic_study(folder: str | Path, trials: int, name: str | None = None, fractions: Sequence[float] = (1.0,),
                          objectives: str = "val_acc:max,macs:min", bulk: bool = False, **kw) -> StudyStore:
    """A study folder with `trials` synthetic trials. Fragments through the store's own writers,
    or (bulk) the compacted tables written at once, as a finished study leaves them."""
    store = StudyStore(folder)
    store.save_config({"name": name or Path(folder).name, "space": "hybrid", "dataset": "mnist5k", "trials": trials,
                       "objectives": objectives, "epochs": kw.get("epochs", 8), "fraction": float(max(fractions)),
                       "res": None, "recipe": "default", "batch_size": 64, "sampler": "tpe", "scheduler": "asha",
                       "seed": 0})
    rows, curves = synthetic_rows(trials, list(fractions), **kw)
    if bulk:
        for r in rows:
            r["hparams"] = json.dumps(r["hparams"], sort_keys=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=TRIAL_SCHEMA), store.trials_path)
        pq.write_table(pa.Table.from_pylist([e for c in curves.values() for e in c], schema=EPOCH_SCHEMA),
                       store.epochs_path)
    else:
        for r in rows:
            if r["number"] in curves:
                store.write_epochs(r["number"], curves[r["number"]])
            store.write_trial(r)
    return store


def _catalog_family(name: str) -> str | None:
    entry = entries().get(name.split("@")[0])   # None for grammar text
    return entry.family if entry is not None else None


# named point -> (a, b, c): test error = a * n_train^-b + c. The ConvNet leads with little data,
# the Swin (steeper) overtakes it at about 625 images (1.2 n^-0.35 = 6 n^-0.6).
SCALING_LAWS = {"resnet18@28px,w=0.25": (1.2, 0.35, 0.01), "swin_t@28px,w=0.25": (6.0, 0.6, 0.01)}


def scaling_rows(laws: dict[str, tuple[float, float, float]] | None = None,
                 fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.4, 0.7, 1.0), seeds: int = 3, n_full: int = 4500,
                 noise: float = 0.03, seed: int = 0) -> list[dict]:
    """Trial rows (TRIAL_SCHEMA) of a scaling study: every architecture of `laws` (named points,
    or grammar text) at every fraction with `seeds` seeds, its test and validation errors drawn
    as law(n_train) times exp(N(0, noise))."""
    rng = np.random.default_rng(seed)
    rows, number = [], 0
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for name, (a, b, c) in (laws or SCALING_LAWS).items():
        try:
            arch = _named(name)
        except Exception:
            arch = None
        arch = arch or {"text": name, "kinds": ["basic"], "layout": "hierarchical", "stem": "conv", "macs": 10**6,
                        "params": 10**4, "res": 28, "family": name.split("@")[0],
                        "arch_id": hashlib.blake2b(name.encode(), digest_size=5).hexdigest()}
        arch["family"] = _catalog_family(name) or arch["family"]
        for fraction in fractions:
            n_train = round(n_full * fraction)
            for s in range(seeds):
                err = (a * n_train ** -b + c) * math.exp(rng.normal(0, noise))
                val = (a * n_train ** -b + c) * math.exp(rng.normal(0, noise))
                rows.append({"number": number, "state": "complete", "arch_id": arch["arch_id"], "text": arch["text"],
                             "family": arch["family"], "kinds": arch["kinds"], "layout": arch["layout"],
                             "stem": arch["stem"], "params": arch["params"], "macs": arch["macs"], "res": arch["res"],
                             "dataset": "mnist5k", "fraction": float(fraction), "n_train": n_train, "epochs": 8,
                             "epochs_done": 8, "recipe": "default", "seed": s, "hparams": {"vars": {"arch": name}},
                             "val_top1": float(min(1.0, max(0.0, 1 - val))),
                             "test_top1": float(min(1.0, max(0.0, 1 - err))), "loss": 0.1,
                             "train_seconds": n_train * arch["macs"] / 1e9,
                             "images_per_second": float(5e9 / arch["macs"]), "device": "cpu",
                             "started_at": start + dt.timedelta(minutes=number),
                             "finished_at": start + dt.timedelta(minutes=number + 1), "lab_version": "0.1.0"})
                number += 1
    return rows


def write_scaling_study(folder: str | Path, name: str | None = None, **kw) -> StudyStore:
    """A scaling study folder (see `scaling_rows` for the rows and `kw`)."""
    store = StudyStore(folder)
    laws = kw.get("laws") or SCALING_LAWS
    fractions = list(kw.get("fractions", (0.05, 0.1, 0.2, 0.4, 0.7, 1.0)))
    store.save_config({"name": name or Path(folder).name, "kind": "scaling", "archs": list(laws),
                       "fractions": fractions, "seeds": kw.get("seeds", 3), "dataset": "mnist5k",
                       "objectives": "val_acc:max,macs:min", "epochs": 8, "recipe": "default", "seed": 0})
    for row in scaling_rows(**kw):
        store.write_trial(row)
    return store


def target_rows(trials: int, target: int = 12000, fraction: float = 0.8, rungs: int = 3, n_full: int = 4500,
                seed: int = 0, pool: int = 60) -> list[dict]:
    """Trial rows (TRIAL_SCHEMA) of a --target-size study: hybrid points, each trained on the ladder
    fraction / 3^(rungs-1) .. fraction of `n_full` images (pruned ones stop after two sizes, failed
    ones train none), their accuracies a power law per point (error a n^-b + c, noisy), and each
    trial's prediction at `target` as lab.scaling.predict makes it from its sizes."""
    rng = np.random.default_rng(seed)
    mixers = _mixers()
    archs = [_arch(rng, mixers) for _ in range(pool)]
    ladder = [fraction / 3 ** k for k in range(rungs - 1, -1, -1)]
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows: list[dict] = []
    for number in range(trials):
        arch = archs[int(rng.integers(len(archs)))]
        state = str(rng.choice(["complete", "pruned", "failed"], p=[0.6, 0.35, 0.05]))
        a = 3.0 * (arch["macs"] / 6e6) ** -0.3 * math.exp(rng.normal(0, 0.15))
        b = float(rng.uniform(0.4, 0.6))
        reached = {"complete": rungs, "pruned": min(2, rungs), "failed": 0}[state]
        sizes = [round(n_full * f) for f in ladder[:reached]]
        top1 = [float(np.clip(1 - (a * n ** -b + 0.01) * math.exp(rng.normal(0, 0.02)), 0.1, 0.999)) for n in sizes]
        row = {"number": number, "state": state, "arch_id": arch["arch_id"], "text": arch["text"],
               "family": arch["family"], "kinds": arch["kinds"], "layout": arch["layout"], "stem": arch["stem"],
               "params": arch["params"], "macs": arch["macs"], "res": arch["res"], "dataset": "mnist5k",
               "fraction": ladder[max(reached, 1) - 1], "n_train": sizes[-1] if sizes else None, "epochs": 4,
               "recipe": "default", "hparams": {"vars": arch["choices"]}, "seed": 0, "target_size": target,
               "started_at": start + dt.timedelta(minutes=number), "lab_version": "0.1.0"}
        if state == "failed":
            row.update(error="TrainError: the loss stopped being finite")
        else:
            row.update(sizes=sizes, sizes_top1=top1, sizes_seconds=[n * arch["macs"] / 1e9 for n in sizes],
                       val_top1=top1[-1], epochs_done=4, loss=0.1, device="cpu",
                       finished_at=start + dt.timedelta(minutes=number + 1))
            if state == "pruned":
                row.update(error=f"stopped by the scheduler after {reached} data size(s)")
        rows.append(row)
    trained = [r for r in rows if r.get("sizes")]
    curves = [curve_of(r["number"], r["sizes"], r["sizes_top1"]) for r in trained]
    for r, p in zip(trained, predict(curves, target, n_boot=200) if curves else []):
        r.update(prediction_columns(p, target))
    return rows


def write_target_study(folder: str | Path, trials: int = 40, name: str | None = None, target: int = 12000,
                       fraction: float = 0.8, rungs: int = 3, **kw) -> StudyStore:
    """A --target-size study folder (see `target_rows` for the rows and `kw`)."""
    store = StudyStore(folder)
    store.save_config({"name": name or Path(folder).name, "kind": "search", "space": "hybrid", "dataset": "mnist5k",
                       "trials": trials, "objectives": "pred_acc:max,macs:min", "epochs": 4, "fraction": fraction,
                       "target_size": target, "rungs": rungs, "recipe": "default", "sampler": "tpe",
                       "scheduler": "asha", "seed": 0})
    for row in target_rows(trials, target=target, fraction=fraction, rungs=rungs, **kw):
        store.write_trial(row)
    return store


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0])
    p.add_argument("--curves", type=int, default=None, help="trials with learning curves (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scaling", action="store_true", help="a scaling study (SCALING_LAWS x fractions x seeds)")
    p.add_argument("--seeds", type=int, default=3, help="with --scaling: seeds per (architecture, fraction)")
    p.add_argument("--target-size", type=int, default=None, help="a --target-size study predicting at N images")
    a = p.parse_args(argv)
    if a.target_size:
        print(write_target_study(a.folder, a.trials, target=a.target_size, seed=a.seed).folder)
        return 0
    if a.scaling:
        fractions = a.fractions if a.fractions != [1.0] else [0.05, 0.1, 0.2, 0.4, 0.7, 1.0]
        print(write_scaling_study(a.folder, fractions=fractions, seeds=a.seeds, seed=a.seed).folder)
        return 0
    store = write_synthetic_study(a.folder, a.trials, fractions=a.fractions, curves=a.curves, seed=a.seed,
                                  bulk=a.trials > 500)
    print(store.folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
