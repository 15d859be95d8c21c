"""The LightningModule that trains any grammar point: the science of a training step.

Batches arrive as uint8 images already on the device; augmentation, MixUp/CutMix, the loss (with
DeiT distillation when a teacher is given), the optimizer and its schedule live here. The Trainer
(lab/train/run.py) holds the engineering: device, precision, clipping, progress bar, validation
cadence; lab/train/callbacks.py the EMA of the weights and the per-epoch history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lab.train.losses import classification_loss, distillation_loss
from lab.train.mix import Mixer, one_hot_smooth
from lab.train.optim import make_optimizer, make_schedule
from lab.train.recipes import Recipe

Augmentation = Callable[..., torch.Tensor]   # lab.data.Augment: uint8 batch (and a generator) -> float32 inputs


class Diverged(Exception):
    """The training loss stopped being finite; `where` says when."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


class CompileFailed(Exception):
    """torch.compile could not compile the training step; `reason` is the first line of why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else 'no detail'}"


class Teacher(nn.Module):
    """A frozen classifier whose logits guide distillation; resizes inputs to its own resolution."""

    def __init__(self, model: nn.Module, res: int) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.res = res

    def train(self, mode: bool = True) -> Teacher:  # a teacher is always in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.res or x.shape[-2] != self.res:
            x = F.interpolate(x, size=(self.res, self.res), mode="bilinear", align_corners=False, antialias=True)
        return self.model(x)


class _Scores:
    """Top-1 and top-5 hits and summed cross-entropy, accumulated batch by batch."""

    def __init__(self) -> None:
        self.correct1 = self.correct5 = self.loss_sum = 0.0
        self.n = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == labels[:, None]
        self.correct1 += hits[:, 0].sum().item()
        self.correct5 += hits.any(dim=1).sum().item()
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        self.n += labels.numel()

    def result(self) -> dict:
        n = max(self.n, 1)
        return {"top1": self.correct1 / n, "top5": self.correct5 / n, "loss": self.loss_sum / n}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             augment: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    """Top-1, top-5 and mean cross-entropy of `model` (in eval mode) over `batches` of uint8 images."""
    was_training = model.training
    model.eval()
    scores = _Scores()
    for images, labels in batches:
        scores.add(model(augment(images)), labels)
    model.train(was_training)
    return scores.result()


class LabModule(L.LightningModule):
    """Trains `model` with `recipe`; validates `averaged` (the EMA callback's weights) when set, else `model`.

    Training batches are augmented with `train_augment` (random crops and flips drawn from the
    module's own generator, seeded with `seed`), then mixed (MixUp/CutMix) or label-smoothed as the
    recipe says. Validation (Lightning's loop: eval mode, no gradients) scores the val batches
    after `eval_augment`; `last_val` holds the latest result {"top1", "top5", "loss"}. The per-epoch
    history, the EMA and the last-epoch validation are callbacks (lab.train.callbacks).

    `compile` runs the training forward (and so its backward) through torch.compile: a compiled view
    of `model` that shares its parameters, kept outside the module tree (the state dict, the EMA copy
    and validation see the eager model). `channels_last` puts the augmented inputs in that format.
    """

    def __init__(self, model: nn.Module, recipe: Recipe, num_classes: int, n_train: int, steps_per_epoch: int,
                 train_augment: Augmentation, eval_augment: Augmentation, seed: int,
                 teacher: Teacher | None = None, compile: bool = False, channels_last: bool = False) -> None:
        super().__init__()
        self.model = model
        # not an attribute nn.Module would register: the compiled wrapper's keys (_orig_mod.*) stay out of state_dict
        object.__setattr__(self, "_compiled", torch.compile(model) if compile else None)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.recipe = recipe
        self.num_classes = num_classes
        self.steps_per_epoch = steps_per_epoch
        self.train_augment, self.eval_augment = train_augment, eval_augment
        self.teacher = teacher
        self.seed = seed
        self.mixer = (Mixer(num_classes, mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha,
                            smoothing=recipe.label_smoothing) if recipe.mixes(n_train) else None)
        self.averaged: nn.Module | None = None   # set by lab.train.callbacks.EMA (a submodule once set)
        self.generator: torch.Generator | None = None
        self.last_val: dict | None = None   # the latest validation's result (top-1, top-5, loss)
        self._scores = _Scores()

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated, evaluated and saved: the EMA when the run keeps one."""
        return self.averaged if self.averaged is not None else self.model

    def on_fit_start(self) -> None:
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)

    def targets(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (possibly mixed) inputs and their targets: class indices, or soft targets when smoothing or mixing."""
        if self.mixer is not None:
            return self.mixer(x, labels, generator=self.generator)
        if self.recipe.label_smoothing > 0:
            return x, one_hot_smooth(labels, self.num_classes, self.recipe.label_smoothing)
        return x, labels

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        x, targets = self.targets(self.train_augment(images, generator=self.generator), labels)
        out = self.forward_train(x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x)
        if self.teacher is not None:
            loss = distillation_loss(out, targets, self.teacher(x), kind=self.recipe.distill,
                                     tau=self.recipe.tau, lam=self.recipe.lam)
        elif isinstance(out, tuple):  # a distillation head trained without a teacher: both heads learn the labels
            loss = cast(torch.Tensor, sum(classification_loss(o, targets) for o in out) / len(out))  # a sum of tensors
        else:
            loss = classification_loss(out, targets)
        if not torch.isfinite(loss.detach()):
            raise Diverged(f"loss became {loss.item()} at epoch {self.current_epoch + 1}, step {batch_idx + 1}")
        return loss

    def forward_train(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The training forward: the compiled model when compiling (a compilation error is CompileFailed)."""
        compiled = self.__dict__["_compiled"]
        if compiled is None:
            return self.model(x)
        try:
            return compiled(x)
        except torch._dynamo.exc.TorchDynamoException as e:   # BackendCompilerFailed, Unsupported, InductorError
            raise CompileFailed(_first_line(e)) from e

    def on_validation_epoch_start(self) -> None:
        self._scores = _Scores()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        # in float32 like `evaluate` (the test split's): bf16-mixed training must not change how val is measured
        with torch.autocast(images.device.type, enabled=False):
            self._scores.add(self.eval_model(self.eval_augment(images)), labels)

    def on_validation_epoch_end(self) -> None:
        self.last_val = self._scores.result()
        self.log("val_top1", self.last_val["top1"], prog_bar=True, logger=False)

    def configure_optimizers(self) -> dict:
        optimizer = make_optimizer(self.model, self.recipe)
        schedule = make_schedule(optimizer, self.recipe, self.steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
