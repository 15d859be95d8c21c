"""Transfer a pretrained checkpoint to a downstream dataset, BiT style (Kolesnikov et al.).

For each k in `shots` and each seed: a k-shot linear probe on the checkpoint's frozen features,
and a fine-tune of the whole network with the bit-finetune recipe on the same k-shot support set
(a new classifier). Each is repeated on the same network randomly initialized, the baseline a
transfer must beat. Every probe and fine-tune is one row of the run table (`runs.parquet`):
recipe "probe" or "bit-finetune", `init` the checkpoint or null, `shots` k.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lab import __version__
from lab.build import build
from lab.catalog import family_of
from lab.cost import cost
from lab.data import Augment, load_dataset
from lab.errors import DataError, TrainError
from lab.grammar import parse
from lab.memory import require_fits
from lab.train.checkpoint import check_input, load_checkpoint
from lab.train.probe import extract_features, few_shot_probe
from lab.train.recipes import HYPERRULE_STEPS, recipe
from lab.train.record import RUN_SCHEMA, append_record
from lab.train.run import RUNS_TABLE, check_memory, pick_device, train

PROBE = "probe"
FINETUNE = "bit-finetune"


@dataclasses.dataclass
class TransferResult:
    records: list[dict]  # the rows appended to the run table, probes first

    def summary(self) -> list[dict]:
        """Per (recipe, init, shots): mean and sd of test top-1 over seeds, and the seed count."""
        groups: dict[tuple, list[float]] = {}
        for r in self.records:
            if r["state"] == "complete":
                groups.setdefault((r["recipe"], r["init"] or "random", r["shots"]), []).append(r["test_top1"])
        return [{"recipe": recipe, "init": init, "shots": shots, "mean": statistics.fmean(accs),
                 "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0, "seeds": len(accs)}
                for (recipe, init, shots), accs in groups.items()]


def _probe_record(base: dict, ds, k: int, seed: int, init: str | None, method: str, l2, accuracy: float,
                  seconds: float) -> dict:
    started = datetime.now(UTC).replace(microsecond=0)
    return {**base, "run_id": f"{started:%Y%m%d-%H%M%S}-{base['arch_id']}-probe-{uuid.uuid4().hex[:6]}",
            "started_at": started, "n_train": k * ds.num_classes, "fraction": k * ds.num_classes / ds.n_train,
            "recipe": PROBE, "probe": {"method": method, "l2": None if l2 is None else str(l2)}, "seed": seed,
            "init": init, "shots": k, "test_top1": accuracy, "train_seconds": seconds}


def transfer(checkpoint: str | Path, dataset: str = "digits", *, shots: Sequence[int] = (1, 5, 10),
             seeds: Sequence[int] = (0, 1, 2), method: str = "ridge", finetune: bool = True,
             steps: int = HYPERRULE_STEPS, baseline: bool = True, device: str = "auto",
             out: str | Path | None = "runs", data_root: str | None = None, progress: bool = False,
             on_record: Callable[[dict], None] | None = None, max_memory: int | None = None) -> TransferResult:
    """Probe and fine-tune the lab checkpoint at `checkpoint` on `dataset` (resized to the
    checkpoint's resolution) for every k in `shots` and seed in `seeds`, with a randomly
    initialized baseline unless `baseline` is False. Fine-tunes run `steps` optimizer steps of the
    bit-finetune recipe (BiT-HyperRule's 500 for small sets; whole epochs, rounded up). Rows go to
    `out/runs.parquet` as they finish (and to `on_record`). A network whose estimated memory (lab.memory)
    to probe or fine-tune exceeds `max_memory` bytes (default: what the device has available) is refused
    (TrainError) before any probe runs."""

    if not shots or any(int(k) != k or k < 1 for k in shots):
        raise TrainError(f"shots must be positive integers, got {list(shots)}")
    if not seeds:
        raise TrainError("transfer needs at least one seed")
    if steps < 1:
        raise TrainError(f"fine-tune steps must be >= 1, got {steps}")
    model, meta = load_checkpoint(checkpoint)
    ds = load_dataset(dataset, root=data_root, size=meta["res"])
    check_input(meta, ds)
    smallest = int(torch.unique(ds.train.labels, return_counts=True)[1].min())
    if max(shots) > smallest:
        raise DataError(f"{ds.name}: {max(shots)}-shot needs {max(shots)} training images per class; its smallest "
                        f"class has {smallest}")
    spec = parse(meta["text"])
    dev = pick_device(device)
    source = str(checkpoint)
    require_fits(spec, 256, ds.num_classes, ds.in_chans, max_memory, device=dev, train=False, label=source)
    if finetune:
        ft = recipe(FINETUNE)
        check_memory(spec, min(ft.batch_size, max(shots) * ds.num_classes), ds.num_classes, ds.in_chans, ft, dev,
                     max_memory, label=source)
    inits: list[str | None] = [source] + ([None] if baseline else [])
    records: list[dict] = []

    def keep(record: dict, written: bool = False) -> None:
        records.append(record)
        if out is not None and not written:  # train() appends its own rows
            append_record(Path(out) / RUNS_TABLE, record)
        if on_record is not None:
            on_record(record)

    # --- probes: frozen features of the checkpoint (and of a random network) ---------------
    report = cost(spec, num_classes=ds.num_classes, in_chans=ds.in_chans)
    base: dict[str, Any] = {name: None for name in RUN_SCHEMA.names}
    base.update(state="complete", arch_id=spec.arch_id, text=spec.text, family=family_of(spec), params=report.params,
                macs=report.macs, res=spec.res, frames=spec.frames, dataset=ds.name, epochs=0, epochs_done=0,
                device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                lab_version=__version__)
    transform = Augment(ds, res=spec.res, train=False, frames=spec.frames)
    for init in inits:
        if init is None:
            torch.manual_seed(0)
            net: nn.Module = build(spec, num_classes=ds.num_classes, in_chans=ds.in_chans).eval()
        else:
            net = model
        net = net.to(dev)
        train_x, train_y = extract_features(net, ds.train.batches(256, shuffle=False, device=dev), transform)
        test_x, test_y = extract_features(net, ds.test.batches(256, shuffle=False, device=dev), transform)
        for k in shots:
            for seed in seeds:
                t0 = time.perf_counter()
                result = few_shot_probe(train_x, train_y, test_x, test_y, shots=[k], seeds=[seed], method=method)
                keep(_probe_record(base, ds, k, seed, init, method, result["l2"], result["shots"][k]["mean"],
                                   time.perf_counter() - t0))

    # --- fine-tunes: the whole network, a new classifier, on the same k-shot supports -----
    if finetune:
        rec = recipe(FINETUNE)
        for k in shots:
            for seed in seeds:
                support = ds.with_shots(k, seed)
                batch = min(rec.batch_size, support.n_train)
                epochs = math.ceil(steps / math.ceil(support.n_train / batch))
                for init in inits:
                    try:
                        run = train(spec, support, recipe=rec, epochs=epochs, seed=seed, init=init, new_head=True,
                                    device=device, out=out, progress=progress, max_memory=max_memory)
                        keep(run.record, written=True)
                    except TrainError as e:  # a diverged run is recorded by train(); go on with the rest
                        if e.record is None:
                            raise
                        keep(e.record, written=True)
    return TransferResult(records)
