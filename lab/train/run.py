"""`train()`: one training run of a grammar point on a dataset, from text to a checkpoint and a record.

The CLI (`lab train`) and studies call this same function.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import resource
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from lab.errors import TrainError

RUNS_TABLE = "runs.parquet"
MAX_VALIDATIONS = 16   # a long run validates every k-th epoch (and the last): evaluation stays a small share


@dataclass
class RunResult:
    record: dict                      # the row appended to the run table (RUN_SCHEMA)
    model: nn.Module | None           # the trained model (EMA weights when the recipe keeps them), eval mode
    checkpoint: Path | None
    history: list[dict] = field(default_factory=list)   # per epoch: loss, val_top1
    init_note: str | None = None      # what a pretrained start loaded and adapted (init_weights' account)


class _Epochs:
    """An iterable over a split whose every pass is the next epoch's seeded order (what Lightning iterates)."""

    def __init__(self, split, batch_size: int, seed: int, device: torch.device):
        self.split, self.batch_size, self.seed, self.device = split, batch_size, seed, device
        self.epoch = 0

    def _batches(self):
        return self.split.batches(self.batch_size, shuffle=True, seed=self.seed, epoch=self.epoch,
                                  device=self.device, drop_last=True)

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self):
        batches = self._batches()
        self.epoch += 1
        return iter(batches)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise TrainError(f"--device {device!r}: expected cpu, cuda, cuda:N or auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {device}: no CUDA device is available on this machine")
    return torch.device(device)


def resolve_arch(arch, res: int | None, dataset_size: int, dataset_frames: int = 1):
    """The Spec to train: `arch` at `res`; a bare name (no @ multipliers) adopts the dataset's image
    size (and a video model its clip length). Image models train on images, video models on clips."""
    from lab.catalog import resolve
    from lab.grammar import Spec, scale

    if isinstance(arch, Spec):
        spec, explicit = arch, True
    else:
        spec, explicit = resolve(arch), "@" in arch   # grammar text starts with @res; names carry @NNpx
    name = arch if isinstance(arch, str) and not arch.lstrip().startswith("@") else "this point"
    if spec.frames == 1 and dataset_frames > 1:
        raise TrainError(f"{name} is an image model, but the dataset holds clips of {dataset_frames} frames: "
                         "train a video model (its text starts @FRAMESxRES, like video_swin_t)")
    if spec.frames > 1 and dataset_frames == 1:
        raise TrainError(f"{name} is a video model (clips of {spec.frames} frames), but the dataset holds "
                         "images: use a video dataset such as moving-digits")
    target = res if res is not None else (spec.res if explicit else dataset_size)
    frames = spec.frames if explicit or spec.frames == 1 else dataset_frames
    return spec if (target, frames) == (spec.res, spec.frames) else scale(spec, res=target, frames=frames)


def _set_dropout(model: nn.Module, p: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning 2.6 vs torch 2.14 pytree
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # the frozen distillation teacher


def train(arch, dataset="mnist5k", *, recipe="default", epochs: int | None = None,
          batch_size: int | None = None, lr: float | None = None, fraction: float = 1.0, seed: int = 0,
          res: int | None = None, distill_from: str | Path | None = None, init: str | None = None,
          new_head: bool = False, device: str = "auto",
          out: str | Path | None = "runs", data_root: str | None = None, progress: bool = False,
          on_epoch: Callable[[dict], None] | None = None) -> RunResult:
    """Train `arch` (a name with multipliers, grammar text or a Spec) on `dataset` and record the run.

    `dataset` is a dataset string, or a loaded `lab.data.Dataset` (studies load it once per
    worker; its own fraction and seed of the training split then apply). The run's row is appended
    to `out/runs.parquet` and its weights saved in `out/RUN_ID/` (`out=None` keeps nothing on disk).
    `init` starts from pretrained weights instead of a random initialization: `timm:NAME` or a
    checkpoint file, lab's or timm's (lab.interop.timm.init_weights; `new_head` re-initializes the
    classifier even when its shape fits). `on_epoch` is called after every epoch with {"epoch", "loss", "val_top1", "seconds"}; runs of
    more than 16 epochs validate every ceil(epochs / 16)-th epoch and the last (val_top1 is None
    on the others). A run
    whose loss stops being finite is recorded with status "diverged" and raises TrainError; bad
    input raises a LabError before anything is written.
    """
    import lightning as L

    import lab
    from lab.catalog import family_of
    from lab.cost import cost
    from lab.data import Augment, Dataset, load_dataset
    from lab.build import build
    from lab.train.checkpoint import load_checkpoint, save_checkpoint
    from lab.train.module import Diverged, LabModule, Teacher, evaluate
    from lab.train.recipes import Recipe, recipe as make_recipe
    from lab.train.record import append_record

    started = datetime.now(timezone.utc).replace(microsecond=0)
    rec = recipe if isinstance(recipe, Recipe) else make_recipe(recipe)
    rec = dataclasses.replace(rec, **{k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr).items()
                                      if v is not None})
    dev = pick_device(device)
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, seed=seed, fraction=fraction,
                                                                   root=data_root, size=res)
    spec = resolve_arch(arch, res, ds.image_size, ds.frames)
    teacher = None
    if distill_from is not None:
        teacher_model, meta = load_checkpoint(distill_from)
        if meta["num_classes"] != ds.num_classes or meta["in_chans"] != ds.in_chans:
            raise TrainError(f"--distill-from {distill_from}: the teacher has {meta['num_classes']} classes and "
                             f"{meta['in_chans']} input channels, {ds.name} has {ds.num_classes} and {ds.in_chans}")
        teacher = Teacher(teacher_model, meta["res"])

    L.seed_everything(seed, verbose=False)
    model = build(spec, num_classes=ds.num_classes, in_chans=ds.in_chans, drop_path=rec.drop_path)
    init_note = None
    if init is not None:
        from lab.interop.timm import init_weights
        init_note = init_weights(model, str(init), new_head=new_head)
    if rec.dropout is not None:
        _set_dropout(model, rec.dropout)
    report = cost(spec, num_classes=ds.num_classes, in_chans=ds.in_chans)

    batch = min(rec.batch_size, ds.n_train)
    train_batches = _Epochs(ds.train, batch, seed, dev)
    flip = rec.flip
    train_aug = Augment(ds, res=spec.res, train=True, crop=rec.crop, pad=rec.pad, flip=flip,
                        scale=(rec.crop_scale, 1.0), frames=spec.frames)
    eval_aug = Augment(ds, res=spec.res, train=False, frames=spec.frames)
    val_batches = ds.val.batches(256, shuffle=False, device=dev)
    module = LabModule(model, rec, ds.num_classes, ds.n_train, len(train_batches), train_aug, eval_aug,
                       val_batches, seed, teacher, on_epoch, val_every=math.ceil(rec.epochs / MAX_VALIDATIONS))

    _quiet_lightning()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    trainer = L.Trainer(
        accelerator="gpu" if dev.type == "cuda" else "cpu",
        devices=[dev.index or 0] if dev.type == "cuda" else 1,
        max_epochs=rec.epochs,
        precision="bf16-mixed" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "32-true",
        gradient_clip_val=rec.grad_clip or None,
        logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=progress, num_sanity_val_steps=0, limit_val_batches=0,
        log_every_n_steps=max(1, min(50, len(train_batches))), default_root_dir=None,
    )
    status, error = "ok", None
    try:
        trainer.fit(module, train_dataloaders=train_batches)
    except Diverged as e:
        status, error = "diverged", e.where

    run_id = f"{started:%Y%m%d-%H%M%S}-{spec.arch_id}-{uuid.uuid4().hex[:6]}"
    final = module.eval_model.eval()
    val = test = {"top1": None, "top5": None, "loss": None}
    if status == "ok":
        # the weights have not changed since the last epoch's validation: reuse it
        val = module.last_val or evaluate(final, val_batches, eval_aug)
        test = evaluate(final, ds.test.batches(256, shuffle=False, device=dev), eval_aug)
    record = {
        "run_id": run_id, "started_at": started, "status": status, "error": error,
        "arch_id": spec.arch_id, "text": spec.text, "family": family_of(spec),
        "params": report.params, "macs": report.macs, "res": spec.res, "frames": spec.frames,
        "dataset": ds.name, "fraction": ds.fraction, "n_train": ds.n_train,
        "epochs": rec.epochs, "epochs_done": len(module.history), "batch_size": batch, "lr": rec.lr,
        "recipe": rec.name, "recipe_json": json.dumps(rec.to_dict(), sort_keys=True), "seed": seed,
        "distill_from": str(distill_from) if distill_from is not None else None,
        "init": str(init) if init is not None else None, "shots": ds.shots,
        "val_top1": val["top1"], "val_top5": val["top5"], "test_top1": test["top1"], "test_top5": test["top5"],
        "loss": module.last_loss if module.history else None, "val_loss": val["loss"],
        "train_seconds": module.train_seconds,
        "images_per_second": module.images_seen / module.train_seconds if module.train_seconds > 0 else None,
        "peak_memory": _peak_memory(dev),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "checkpoint": None, "lab_version": lab.__version__,
    }
    checkpoint = None
    if out is not None:
        out = Path(out)
        if status == "ok":
            meta = {"text": spec.text, "num_classes": ds.num_classes, "in_chans": ds.in_chans, "res": spec.res,
                    "dataset": ds.name, "mean": list(ds.mean), "std": list(ds.std), "recipe": rec.name,
                    "run_id": run_id, "lab_version": lab.__version__}
            checkpoint = save_checkpoint(out / run_id, final, meta)
            record["checkpoint"] = str(checkpoint)
        append_record(out / RUNS_TABLE, record)
    if status != "ok":
        where = f"; recorded as {run_id} in {out / RUNS_TABLE}" if out is not None else ""
        failure = TrainError(f"training diverged: {error}{where}")
        failure.record = record   # studies keep the row of a failed trial too
        raise failure
    return RunResult(record, final, checkpoint, module.history, init_note)
