"""The LightningModule that trains any grammar point: the science of a training step.

Batches arrive as uint8 images already on the device; augmentation, MixUp/CutMix, the loss (with
DeiT distillation when a teacher is given), the optimizer and its schedule live here. The Trainer
(lab/train/run.py) holds the engineering: device, precision, clipping, progress bar.
"""

from __future__ import annotations

import time

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lab.train.losses import classification_loss, distillation_loss
from lab.train.mix import Mixer, one_hot_smooth
from lab.train.optim import make_optimizer, make_schedule
from lab.train.recipes import Recipe


class Diverged(Exception):
    """The training loss stopped being finite; `where` says when."""

    def __init__(self, where: str):
        super().__init__(where)
        self.where = where


class Teacher(nn.Module):
    """A frozen classifier whose logits guide distillation; resizes inputs to its own resolution."""

    def __init__(self, model: nn.Module, res: int):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.res = res

    def train(self, mode: bool = True) -> "Teacher":  # a teacher is always in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.res or x.shape[-2] != self.res:
            x = F.interpolate(x, size=(self.res, self.res), mode="bilinear", align_corners=False, antialias=True)
        return self.model(x)


def ema_with_warmup(decay: float):
    """An EMA update for AveragedModel whose decay ramps as min(decay, (1 + n) / (10 + n)) over the n
    updates so far (timm's EMA warmup): a short run's average is not dominated by the initial weights."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        if not averaged[0].is_floating_point():   # counters such as BatchNorm's num_batches_tracked
            torch._foreach_copy_(averaged, current)
            return
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return update


@torch.no_grad()
def evaluate(model: nn.Module, batches, augment) -> dict:
    """Top-1, top-5 and mean cross-entropy of `model` (in eval mode) over `batches` of uint8 images."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = loss_sum = 0.0
    n = 0
    for images, labels in batches:
        logits = model(augment(images)).float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == labels[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        n += labels.numel()
    model.train(was_training)
    n = max(n, 1)
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss_sum / n}


class LabModule(L.LightningModule):
    def __init__(self, model: nn.Module, recipe: Recipe, num_classes: int, n_train: int, steps_per_epoch: int,
                 train_augment, eval_augment, val_batches, seed: int, teacher: Teacher | None = None,
                 on_epoch=None, val_every: int = 1):
        super().__init__()
        self.model = model
        self.recipe = recipe
        self.num_classes = num_classes
        self.steps_per_epoch = steps_per_epoch
        self.train_augment, self.eval_augment = train_augment, eval_augment
        self.val_batches = val_batches
        self.teacher = teacher
        self.seed = seed
        self.on_epoch = on_epoch
        self.val_every = val_every
        self.mixer = (Mixer(num_classes, mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha,
                            smoothing=recipe.label_smoothing) if recipe.mixes(n_train) else None)
        self.ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_with_warmup(recipe.ema), use_buffers=True)
                    if recipe.ema > 0 else None)
        self.generator: torch.Generator | None = None
        self.train_seconds = 0.0
        self.images_seen = 0
        self.last_loss = float("nan")
        self.history: list[dict] = []
        self.last_val: dict | None = None   # the last epoch's full validation result (top-1, top-5, loss)
        self._epoch_start = 0.0

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved: the EMA when the recipe keeps one."""
        return self.ema.module if self.ema is not None else self.model

    def on_fit_start(self) -> None:
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)

    def on_train_epoch_start(self) -> None:
        self._loss_sum = torch.zeros((), device=self.device)
        self._steps = 0
        self._epoch_start = time.perf_counter()

    def targets(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (possibly mixed) inputs and their targets: class indices, or soft targets when smoothing or mixing."""
        if self.mixer is not None:
            return self.mixer(x, labels, generator=self.generator)
        if self.recipe.label_smoothing > 0:
            return x, one_hot_smooth(labels, self.num_classes, self.recipe.label_smoothing)
        return x, labels

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        x, targets = self.targets(self.train_augment(images, generator=self.generator), labels)
        out = self.model(x)
        if self.teacher is not None:
            loss = distillation_loss(out, targets, self.teacher(x), kind=self.recipe.distill,
                                     tau=self.recipe.tau, lam=self.recipe.lam)
        elif isinstance(out, tuple):  # a distillation head trained without a teacher: both heads learn the labels
            loss = sum(classification_loss(o, targets) for o in out) / len(out)
        else:
            loss = classification_loss(out, targets)
        if not torch.isfinite(loss.detach()):
            raise Diverged(f"loss became {loss.item()} at epoch {self.current_epoch + 1}, step {batch_idx + 1}")
        self._loss_sum += loss.detach()
        self._steps += 1
        self.images_seen += labels.shape[0]
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def on_train_epoch_end(self) -> None:
        self.train_seconds += time.perf_counter() - self._epoch_start
        self.last_loss = (self._loss_sum / max(self._steps, 1)).item()
        number = self.current_epoch + 1
        top1 = None
        if number % self.val_every == 0 or number == self.trainer.max_epochs:
            self.last_val = evaluate(self.eval_model, self.val_batches, self.eval_augment)
            top1 = self.last_val["top1"]
            self.log("val_top1", top1, prog_bar=True, logger=False)
        epoch = {"epoch": number, "loss": self.last_loss, "val_top1": top1, "seconds": self.train_seconds}
        self.history.append(epoch)
        self.log("loss", self.last_loss, prog_bar=True, logger=False)
        if self.on_epoch is not None:
            self.on_epoch(dict(epoch))

    def configure_optimizers(self):
        optimizer = make_optimizer(self.model, self.recipe)
        schedule = make_schedule(optimizer, self.recipe, self.steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
