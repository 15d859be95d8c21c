"""`train()`: one training run of a grammar point on a dataset, from text to a checkpoint and a record.

The CLI (`lab train`) and studies call this same function. It is three steps with typed seams:
`prepare()` resolves the recipe, device, dataset, architecture, model, teacher and batches into a
`Prepared`; `fit()` runs Lightning's Trainer on it into a `Fitted` (status, history, timings, the
final weights); `record()` evaluates the final weights and writes the run down (row, checkpoint).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import resource
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lab import __version__
from lab.build import build
from lab.catalog import family_of, resolve
from lab.cost import Report, cost
from lab.data import Augment, Dataset, Split, load_dataset
from lab.data.split import Batches
from lab.errors import LabError, TrainError
from lab.grammar import Spec, scale
from lab.interop.timm import init_weights
from lab.kinds import traits
from lab.memory import precision_name, require_fits
from lab.train import loggers
from lab.train.checkpoint import load_checkpoint, save_run
from lab.train.recipes import Recipe
from lab.train.recipes import recipe as make_recipe

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

    from lab.train.module import Teacher

RUNS_TABLE = "runs.parquet"
MAX_VALIDATIONS = 16   # a long run validates every k-th epoch (and the last): evaluation stays a small share


@dataclass
class RunResult:
    record: dict                      # the row appended to the run table (RUN_SCHEMA)
    model: nn.Module | None           # the trained model (EMA weights when the recipe keeps them), eval mode
    checkpoint: Path | None
    history: list[dict] = field(default_factory=list)   # per epoch: loss, val_top1
    init_note: str | None = None      # what a pretrained start loaded and adapted (init_weights' account)
    log: str | None = None            # where the run's --logger log is (lab.train.loggers.where)


class _Epochs:
    """An iterable over a split whose every pass is the next epoch's seeded order (what Lightning iterates)."""

    def __init__(self, split: Split, batch_size: int, seed: int, device: torch.device) -> None:
        self.split, self.batch_size, self.seed, self.device = split, batch_size, seed, device
        self.epoch = 0

    def _batches(self) -> Batches:
        return self.split.batches(self.batch_size, shuffle=True, seed=self.seed, epoch=self.epoch,
                                  device=self.device, drop_last=True)

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self._batches()
        self.epoch += 1
        return iter(batches)


def pick_device(device: str) -> torch.device:
    """The torch device of `--device`: auto (CUDA when available), cpu, cuda or cuda:N."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise TrainError(f"--device {device!r}: expected cpu, cuda, cuda:N or auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {device}: no CUDA device is available on this machine")
    return torch.device(device)


def resolve_arch(arch: str | Spec, res: int | None, dataset_size: int, dataset_frames: int = 1) -> Spec:
    """The Spec to train: `arch` at `res`; a bare name (no @ multipliers) adopts the dataset's image
    size (and a video model its clip length). Image models train on images, video models on clips."""
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


@dataclass(frozen=True)
class Prepared:
    """Everything a run trains and records, resolved before anything is written (prepare's result)."""
    recipe: Recipe                    # the preset with the run's overrides
    device: torch.device
    dataset: Dataset
    spec: Spec                        # the architecture at the resolution (and clip length) it trains at
    model: nn.Module                  # built, seeded, initialized (pretrained when `init`), dropout set
    teacher: Teacher | None           # the frozen distillation teacher
    report: Report                    # the analytic cost of `spec`
    batch_size: int                   # the recipe's, capped at the training split's size
    train_batches: _Epochs            # every pass is the next epoch's seeded order
    val_batches: Batches
    train_aug: Augment
    eval_aug: Augment
    seed: int
    started: datetime                 # when the run began (UTC, to the second): the run id's prefix
    distill_from: str | None = None   # as given, for the record
    name: str | None = None           # the architecture as given when a string (its family: lab.catalog.family_of)
    init: str | None = None
    init_note: str | None = None      # what a pretrained start loaded and adapted
    precision: str = "32"             # lab.memory's name: 32, bf16-mixed or 16-mixed (resolve_precision)
    compile: bool = False             # the training step's forward (and backward) through torch.compile
    channels_last: bool = False       # model and training inputs in channels_last (a conv point: is_conv)

    @property
    def val_every(self) -> int:
        """Validate every k-th epoch (and the last): at most MAX_VALIDATIONS or so per run."""
        return math.ceil(self.recipe.epochs / MAX_VALIDATIONS)


@dataclass(frozen=True)
class Fitted:
    """What the Trainer left (fit's result)."""
    model: nn.Module                  # the final weights (the EMA when the recipe keeps one), eval mode
    status: str                       # "ok" or "diverged"
    error: str | None                 # where the loss stopped being finite
    history: list[dict]               # per epoch: {"epoch", "loss", "val_top1", "seconds"}
    last_val: dict | None             # the last validation's {"top1", "top5", "loss"} (the last epoch's when ok)
    train_seconds: float              # training epochs only: data, augmentation, steps (not validation)
    images_seen: int
    compile_seconds: float | None = None   # a compiled run: the first step's extra seconds (the compilation)

    @property
    def loss(self) -> float | None:
        """The last completed epoch's mean training loss."""
        return self.history[-1]["loss"] if self.history else None


LIGHTNING_PRECISION = {"32": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}   # lab.memory's -> Lightning's


def precision_of(device: torch.device) -> str:
    """The precision a run trains in on `device`: bf16 mixed precision on a GPU that has it, else fp32."""
    return "bf16-mixed" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "32"


def resolve_precision(precision: str, device: torch.device, flag: str = "--precision") -> str:
    """The precision a run trains in: "auto" is precision_of(device); else lab.memory.precision_name's
    (32, bf16-mixed or its alias bf16, 16-mixed or 16). bf16 on a GPU without it is refused (TrainError)."""
    if str(precision).strip().lower() == "auto":
        return precision_of(device)
    try:
        name = precision_name(precision, flag)
    except LabError:
        raise TrainError(f"{flag} {precision!r}: expected auto, 32, bf16-mixed (bf16) or 16-mixed (16)") from None
    if name == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainError(f"{flag} {precision}: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                         f"use {flag} 16-mixed or 32")
    return name


def is_conv(spec: Spec) -> bool:
    """Whether `spec` is a conv point: an image model every stage of which is a conv block (its
    mixer_family, lab.kinds.traits), whose maps channels_last memory format suits."""
    return spec.frames == 1 and all(traits(type(s.block))["mixer_family"] == "conv" for s in spec.stages)


def wants_channels_last(spec: Spec, device: torch.device, channels_last: bool | None) -> bool:
    """channels_last for this run: as asked (True or False); None (auto) is a conv point on a CUDA device,
    where cuDNN's NHWC kernels are the fast ones (on this CPU it measured no faster: BENCHMARKS.md)."""
    if channels_last is None:
        return device.type == "cuda" and is_conv(spec)
    return bool(channels_last) and spec.frames == 1   # a clip's 5-D tensors have no channels_last format


def check_memory(spec: Spec, batch_size: int, num_classes: int, in_chans: int, rec: Recipe, device: torch.device,
                 max_memory: int | None = None, label: str | None = None, precision: str | None = None) -> None:
    """Refuse (TrainError, one line) a run whose estimated training memory (lab.memory) exceeds
    `max_memory` bytes, or the memory available on `device` when it is None; nothing is built.
    `precision` is the run's (default: precision_of(device))."""
    require_fits(spec, batch_size, num_classes, in_chans, max_memory, device=device,
                 precision=precision or precision_of(device), optimizer=rec.optimizer, ema=rec.ema > 0, label=label)


def prepare(arch: str | Spec, dataset: str | Dataset = "mnist5k", *, recipe: str | Recipe = "default",
            epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
            fraction: float = 1.0, seed: int = 0, res: int | None = None, distill_from: str | Path | None = None,
            init: str | None = None, new_head: bool = False, device: str = "auto",
            data_root: str | None = None, max_memory: int | None = None, precision: str = "auto",
            compile: bool = False, channels_last: bool | None = None, decoder: str = "pil") -> Prepared:
    """Resolve a run's inputs (train's arguments): the recipe with its overrides, the device, the
    dataset, the Spec, the seeded model (pretrained when `init`), the teacher, batches and augmentations,
    the precision (resolve_precision) and memory format (wants_channels_last).
    Bad input raises a LabError; nothing is written. A point whose estimated training memory exceeds
    `max_memory` bytes (default: what the device has available) is refused before anything is built."""
    started = datetime.now(UTC).replace(microsecond=0)
    rec = recipe if isinstance(recipe, Recipe) else make_recipe(recipe)
    overrides: dict[str, Any] = {k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr).items()
                                 if v is not None}
    rec = dataclasses.replace(rec, **overrides)
    dev = pick_device(device)
    prec = resolve_precision(precision, dev)
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, seed=seed, fraction=fraction,
                                                                   root=data_root, size=res, decoder=decoder)
    spec = resolve_arch(arch, res, ds.image_size, ds.frames)
    batch = min(rec.batch_size, ds.n_train)
    check_memory(spec, batch, ds.num_classes, ds.in_chans, rec, dev, max_memory,
                 label=arch if isinstance(arch, str) else None, precision=prec)
    teacher = None
    if distill_from is not None:
        from lab.train.module import Teacher  # lazy: start-up time

        teacher_model, meta = load_checkpoint(distill_from)
        if meta["num_classes"] != ds.num_classes or meta["in_chans"] != ds.in_chans:
            raise TrainError(f"--distill-from {distill_from}: the teacher has {meta['num_classes']} classes and "
                             f"{meta['in_chans']} input channels, {ds.name} has {ds.num_classes} and {ds.in_chans}")
        teacher = Teacher(teacher_model, meta["res"])

    import lightning as L  # lazy: start-up time (after the checks above: a refusal stays fast)

    L.seed_everything(seed, verbose=False)
    model = build(spec, num_classes=ds.num_classes, in_chans=ds.in_chans, drop_path=rec.drop_path)
    init_note = init_weights(model, str(init), new_head=new_head) if init is not None else None
    if rec.dropout is not None:
        _set_dropout(model, rec.dropout)
    report = cost(spec, num_classes=ds.num_classes, in_chans=ds.in_chans)
    nhwc = wants_channels_last(spec, dev, channels_last)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)

    train_batches = _Epochs(ds.train, batch, seed, dev)
    train_aug = Augment(ds, res=spec.res, train=True, crop=rec.crop, pad=rec.pad, flip=rec.flip,
                        scale=(rec.crop_scale, 1.0), frames=spec.frames)
    eval_aug = Augment(ds, res=spec.res, train=False, frames=spec.frames)
    return Prepared(
        recipe=rec, device=dev, dataset=ds, spec=spec, model=model, teacher=teacher, report=report,
        batch_size=batch, train_batches=train_batches, val_batches=ds.val.batches(256, shuffle=False, device=dev),
        train_aug=train_aug, eval_aug=eval_aug, seed=seed, started=started,
        distill_from=str(distill_from) if distill_from is not None else None, name=arch if isinstance(arch, str) else None,
        init=str(init) if init is not None else None, init_note=init_note,
        precision=prec, compile=bool(compile), channels_last=nhwc,
    )


def fit(prepared: Prepared, progress: bool = False, on_epoch: Callable[[dict], None] | None = None,
        logger: Logger | None = None, callbacks: list | None = None) -> Fitted:
    """Train `prepared.model` with Lightning's Trainer: validation every `val_every`-th epoch and the
    last, the EMA and the history as callbacks. A non-finite loss stops training (status "diverged").
    `logger` (lab.train.loggers) gets every epoch's metrics at step = the epoch; `callbacks` are more
    Lightning callbacks (a benchmark's per-step loss), after the lab's own."""
    import lightning as L  # lazy: start-up time

    from lab.train.callbacks import EMA, EpochHistory, FirstStep, ValidateLastEpoch  # lazy: start-up time
    from lab.train.module import CompileFailed, Diverged, LabModule  # lazy: start-up time

    p, rec, dev = prepared, prepared.recipe, prepared.device
    module = LabModule(p.model, rec, p.dataset.num_classes, p.dataset.n_train, len(p.train_batches),
                       p.train_aug, p.eval_aug, p.seed, p.teacher, compile=p.compile, channels_last=p.channels_last)

    def epoch_end(epoch: dict) -> None:
        if logger is not None:   # the epoch's validation is the module's last when the epoch validated
            lr = module.trainer.optimizers[0].param_groups[0]["lr"]
            loggers.log_epoch(logger, epoch, module.last_val if epoch["val_top1"] is not None else None, lr)
        if on_epoch is not None:
            on_epoch(epoch)

    history = EpochHistory(epoch_end)
    first_step = FirstStep()
    extra = list(callbacks or [])
    callbacks = [history, ValidateLastEpoch()] + ([first_step] if p.compile else [])
    if rec.ema > 0:
        callbacks.append(EMA(rec.ema))
    callbacks += extra

    _quiet_lightning()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    trainer = L.Trainer(
        accelerator="gpu" if dev.type == "cuda" else "cpu",
        devices=[dev.index or 0] if dev.type == "cuda" else 1,
        max_epochs=rec.epochs,
        **_precision_args(p.precision, dev),
        gradient_clip_val=rec.grad_clip or None,
        check_val_every_n_epoch=p.val_every, num_sanity_val_steps=0,
        inference_mode=False,   # validate under no_grad: tensors cached in eval (lru_cache'd masks) stay trainable
        callbacks=callbacks, logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=progress,
        log_every_n_steps=max(1, min(50, len(p.train_batches))), default_root_dir=None,
    )
    status, error = "ok", None
    try:
        trainer.fit(module, train_dataloaders=p.train_batches, val_dataloaders=p.val_batches)
    except Diverged as e:
        status, error = "diverged", e.where
    except CompileFailed as e:
        raise TrainError(f"--compile: {p.name or 'this point'} failed to compile: {e.reason}") from None
    return Fitted(model=module.eval_model.eval(), status=status, error=error, history=history.history,
                  last_val=module.last_val, train_seconds=history.train_seconds, images_seen=history.images_seen,
                  compile_seconds=first_step.extra_seconds if p.compile else None)


def _precision_args(precision: str, device: torch.device) -> dict:
    """The Trainer's precision arguments. Lightning turns 16-mixed on a CPU into bf16-mixed (with a
    warning): there the lab passes its own float16 autocast plugin with a CPU GradScaler instead."""
    if precision == "16-mixed" and device.type == "cpu":
        from lightning.pytorch.plugins.precision import MixedPrecision  # lazy: start-up time

        return {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}
    return {"precision": LIGHTNING_PRECISION[precision]}


def new_run_id(prepared: Prepared) -> str:
    """A run's unique id: its start time, arch_id and a random suffix (its checkpoint folder and log run name)."""
    return f"{prepared.started:%Y%m%d-%H%M%S}-{prepared.spec.arch_id}-{uuid.uuid4().hex[:6]}"


def hyperparameters(prepared: Prepared, run_id: str) -> dict:
    """What a --logger records of a run before it trains: the point, its costs, the data, the recipe, the seed."""
    p, spec = prepared, prepared.spec
    return {"run_id": run_id, "text": spec.text, "arch_id": spec.arch_id, "family": family_of(spec, p.name),
            "params": p.report.params, "macs": p.report.macs, "res": spec.res, "frames": spec.frames,
            "dataset": p.dataset.name, "fraction": p.dataset.fraction, "n_train": p.dataset.n_train,
            "batch_size": p.batch_size, "seed": p.seed, "device": str(p.device), "init": p.init,
            "distill_from": p.distill_from, "recipe": p.recipe.to_dict(), "precision": p.precision,
            "compile": p.compile, "channels_last": p.channels_last}


def record(prepared: Prepared, fitted: Fitted, out: str | Path | None = "runs", run_id: str | None = None) -> RunResult:
    """Evaluate the final weights (val: the last epoch's validation, reused; test), build the run's
    row and, unless `out` is None, save the checkpoint in `out/RUN_ID/` (when the run is ok) and
    append the row to `out/runs.parquet`. A diverged run gets its row too (state "failed", error "diverged: ...")."""
    from lab.train.module import evaluate  # lazy: start-up time

    p, f, rec, ds, spec, dev = prepared, fitted, prepared.recipe, prepared.dataset, prepared.spec, prepared.device
    run_id = run_id or new_run_id(p)
    val = test = {"top1": None, "top5": None, "loss": None}
    if f.status == "ok":
        # the weights have not changed since the last epoch's validation: reuse it
        val = f.last_val or evaluate(f.model, p.val_batches, p.eval_aug)
        test = evaluate(f.model, ds.test.batches(256, shuffle=False, device=dev), p.eval_aug)
    row = {
        "run_id": run_id, "started_at": p.started, "state": "complete" if f.status == "ok" else "failed",
        "error": None if f.status == "ok" else f"{f.status}: {f.error}",
        "arch_id": spec.arch_id, "text": spec.text, "family": family_of(spec, p.name),
        "params": p.report.params, "macs": p.report.macs, "res": spec.res, "frames": spec.frames,
        "dataset": ds.name, "fraction": ds.fraction, "n_train": ds.n_train,
        "epochs": rec.epochs, "epochs_done": len(f.history), "batch_size": p.batch_size, "lr": rec.lr,
        "recipe": rec.name, "recipe_fields": rec.to_dict(), "probe": None, "seed": p.seed,
        "distill_from": p.distill_from, "init": p.init, "shots": ds.shots,
        "val_top1": val["top1"], "val_top5": val["top5"], "test_top1": test["top1"], "test_top5": test["top5"],
        "loss": f.loss, "val_loss": val["loss"],
        "precision": p.precision, "compile": p.compile, "channels_last": p.channels_last,
        "compile_seconds": f.compile_seconds, "train_seconds": f.train_seconds,
        "images_per_second": f.images_seen / f.train_seconds if f.train_seconds > 0 else None,
        "peak_memory": _peak_memory(dev),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "checkpoint": None, "lab_version": __version__,
    }
    checkpoint = None
    if out is not None:
        weights = None
        if f.status == "ok":
            meta = {"text": spec.text, "num_classes": ds.num_classes, "in_chans": ds.in_chans, "res": spec.res,
                    "dataset": ds.name, "mean": list(ds.mean), "std": list(ds.std), "recipe": rec.name,
                    "run_id": run_id, "lab_version": __version__}
            weights = (f.model, meta)
        # all or nothing: the checkpoint folder and the row, or neither (a full disk is one TrainError)
        checkpoint = save_run(out, row, RUNS_TABLE, weights)
    return RunResult(row, f.model, checkpoint, f.history, p.init_note)


def train(arch: str | Spec, dataset: str | Dataset = "mnist5k", *, recipe: str | Recipe = "default",
          epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
          fraction: float = 1.0, seed: int = 0, res: int | None = None, distill_from: str | Path | None = None,
          init: str | None = None, new_head: bool = False, device: str = "auto",
          out: str | Path | None = "runs", data_root: str | None = None, progress: bool = False,
          on_epoch: Callable[[dict], None] | None = None, max_memory: int | None = None,
          logger: str | Logger | None = None, log_dir: str | Path | None = None, precision: str = "auto",
          compile: bool = False, channels_last: bool | None = None, decoder: str = "pil") -> RunResult:
    """Train `arch` (a name with multipliers, grammar text or a Spec) on `dataset` and record the run.

    `dataset` is a dataset string, or a loaded `lab.data.Dataset` (studies load it once per
    worker; its own fraction and seed of the training split then apply). The run's row is appended
    to `out/runs.parquet` and its weights saved in `out/RUN_ID/` (`out=None` keeps nothing on disk).
    `init` starts from pretrained weights instead of a random initialization: `timm:NAME` or a
    checkpoint file, lab's or timm's (lab.interop.timm.init_weights; `new_head` re-initializes the
    classifier even when its shape fits). `on_epoch` is called after every epoch with
    {"epoch", "loss", "val_top1", "seconds"}; runs of more than 16 epochs validate every
    ceil(epochs / 16)-th epoch and the last (val_top1 is None on the others). A run
    whose loss stops being finite is recorded as failed (error "diverged: ...") and raises TrainError; bad
    input raises a LabError before anything is written, and so does a point whose estimated training
    memory (lab.memory) exceeds `max_memory` bytes (default: what the device has available).
    `logger` logs the run (lab.train.loggers): tensorboard, csv, mlflow or wandb, in `log_dir`
    (default OUT/logs, runs/logs when `out` is None) as a run named by its run_id in the
    experiment "lab"; or a Lightning logger made by the caller.
    `precision` is auto (bf16-mixed on a GPU that has it, else 32), 32, bf16-mixed (bf16) or 16-mixed (16;
    on a CPU too, with float16 autocast and a GradScaler). `compile` runs the training step's forward and
    backward through torch.compile (the model's validation and evaluation stay eager); the first step's
    extra seconds are the row's compile_seconds. `channels_last` (None: auto, a conv point on a GPU) trains
    the model and its inputs in channels_last memory format. `decoder` (imagefolder/parquet datasets) is
    pil (in DataLoader workers) or cuda (JPEGs by nvjpeg on the GPU: lab.data.load_dataset).
    """
    if isinstance(logger, str):   # an unknown kind or a missing package is refused before anything is done
        loggers.require(logger)
    prepared = prepare(arch, dataset, recipe=recipe, epochs=epochs, batch_size=batch_size, lr=lr, fraction=fraction,
                       seed=seed, res=res, distill_from=distill_from, init=init, new_head=new_head, device=device,
                       data_root=data_root, max_memory=max_memory, precision=precision, compile=compile,
                       channels_last=channels_last, decoder=decoder)
    run_id = new_run_id(prepared)
    log = (loggers.make_logger(logger, log_dir or Path("runs" if out is None else out) / "logs", "lab", run_id)
           if isinstance(logger, str) else logger)
    if log is not None:
        loggers.start(log, hyperparameters(prepared, run_id))
    try:
        fitted = fit(prepared, progress, on_epoch, log)
        result = record(prepared, fitted, out, run_id)
    except BaseException as e:
        if log is not None:
            loggers.abandon(log, stopped=isinstance(e, (KeyboardInterrupt, SystemExit)))
        raise
    if log is not None:
        loggers.finish(log, result.record, fitted.status == "ok")
        result.log = loggers.where(log)
    if result.record["state"] != "complete":
        where = f"; recorded as {result.record['run_id']} in {Path(out) / RUNS_TABLE}" if out is not None else ""
        failure = TrainError(f"training {result.record['error']}{where}")   # "training diverged: WHERE; ..."
        failure.record = result.record   # studies keep the row of a failed trial too
        raise failure
    return result
