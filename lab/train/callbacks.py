"""Lightning callbacks of a training run (lab/train/run.py's Trainer): the weights' EMA, the per-epoch
history (with the training time that excludes validation), and validating the last epoch.

They work with `lab.train.module.LabModule`: its `model` is trained, its `averaged` is what its
`validation_step` runs when set (EMA sets it), its `last_val` is the latest validation's result.
Batches are (images, labels).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

# AveragedModel's multi_avg_fn: (averaged tensors, current tensors, updates so far) -> None, in place
ParamList = tuple[torch.Tensor, ...] | list[torch.Tensor]  # as AveragedModel passes them
EmaUpdate = Callable[[ParamList, ParamList, torch.Tensor | int], None]


def ema_with_warmup(decay: float) -> EmaUpdate:
    """An EMA update for AveragedModel whose decay ramps as min(decay, (1 + n) / (10 + n)) over the n
    updates so far (timm's EMA warmup): a short run's average is not dominated by the initial weights."""

    @torch.no_grad()
    def update(averaged: ParamList, current: ParamList,
               num_averaged: torch.Tensor | int) -> None:
        if not averaged[0].is_floating_point():   # counters such as BatchNorm's num_batches_tracked
            torch._foreach_copy_(averaged, current)
            return
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return update


class EMA(L.Callback):
    """An exponential moving average of `pl_module.model`'s parameters and buffers (AveragedModel with
    `ema_with_warmup(decay)`), updated after every training batch. Its averaged module becomes
    `pl_module.averaged` (a submodule, so Lightning's validation puts it in eval mode and restores it):
    what validation, the final evaluation and the checkpoint use."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.averaged: AveragedModel | None = None

    @property
    def module(self) -> nn.Module:
        """The averaged weights (an nn.Module shaped like the trained model)."""
        if self.averaged is None:
            raise RuntimeError("EMA.module before the fit started")
        return self.averaged.module

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the first update copies the weights, so the copy made here only fixes the structure and device
        self.averaged = AveragedModel(pl_module.model, device=pl_module.device,
                                      multi_avg_fn=ema_with_warmup(self.decay), use_buffers=True)
        pl_module.averaged = self.averaged.module

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.averaged is not None:
            self.averaged.update_parameters(pl_module.model)


class EpochHistory(L.Callback):
    """Per epoch {"epoch", "loss" (the mean training loss), "val_top1" (None when the epoch was not
    validated), "seconds" (training time so far)}, appended to `history` and passed to `on_epoch`.

    `train_seconds` counts training epochs only (data, augmentation, steps), not the validation
    that Lightning runs inside an epoch; `images_seen` counts the images of the steps taken."""

    def __init__(self, on_epoch: Callable[[dict], None] | None = None) -> None:
        self.on_epoch = on_epoch
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self.images_seen = 0
        self._epoch_start = self._val_start = 0.0
        self._val_seconds = 0.0
        self._loss_sum = torch.zeros(())
        self._steps = 0
        self._val_top1: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loss_sum = torch.zeros((), device=pl_module.device)
        self._steps = 0
        self._val_seconds = 0.0
        self._val_top1 = None
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._loss_sum += outputs["loss"]   # training_step's loss, detached
        self._steps += 1
        self.images_seen += batch[1].shape[0]

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_seconds += time.perf_counter() - self._val_start
        if not trainer.sanity_checking:
            self._val_top1 = pl_module.last_val["top1"]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_seconds += time.perf_counter() - self._epoch_start - self._val_seconds
        loss = (self._loss_sum / max(self._steps, 1)).item()
        epoch = {"epoch": trainer.current_epoch + 1, "loss": loss, "val_top1": self._val_top1,
                 "seconds": self.train_seconds}
        self.history.append(epoch)
        pl_module.log("loss", loss, prog_bar=True, logger=False)
        if self.on_epoch is not None:
            self.on_epoch(dict(epoch))


class FirstStep(L.Callback):
    """How much longer the first training step took than the median of the first epoch's others:
    for a compiled run, the compilation's seconds (`extra_seconds`; the whole first step when the
    epoch has one step). Steps are timed after a CUDA synchronize on a GPU."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0
        self._timing = True

    @property
    def extra_seconds(self) -> float | None:
        if not self.times:
            return None
        rest = sorted(self.times[1:])
        return max(0.0, self.times[0] - (rest[len(rest) // 2] if rest else 0.0))

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._timing:
            self._sync(pl_module)
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._timing:
            self._sync(pl_module)
            self.times.append(time.perf_counter() - self._start)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._timing = False   # the first epoch's steps are enough


class ValidateLastEpoch(L.Callback):
    """Validate the last epoch as well: the Trainer's `check_val_every_n_epoch=k` validates epochs
    k, 2k, ... only, and a run's last epoch (whose weights it returns) may fall between them. On the
    last epoch this sets the Trainer's cadence to every epoch, and puts it back when the fit ends."""

    def __init__(self) -> None:
        self._every: int | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        every = trainer.check_val_every_n_epoch
        if trainer.current_epoch + 1 == trainer.max_epochs and every is not None and every > 1:
            self._every, trainer.check_val_every_n_epoch = every, 1

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._every is not None:
            trainer.check_val_every_n_epoch, self._every = self._every, None
