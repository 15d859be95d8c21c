"""Optimizer and learning-rate schedule of a recipe."""

from __future__ import annotations

import math

import torch
from torch import nn

from lab.train.recipes import Recipe


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameters that must not be weight-decayed: every vector (norm weights, biases, layer scales)
    and what a module declares in its `no_weight_decay` (tokens, position embeddings, rel-pos tables)."""
    names = {name for name, p in model.named_parameters() if p.ndim <= 1}
    for prefix, module in model.named_modules():
        for pname in getattr(module, "no_weight_decay", ()):
            names.add(f"{prefix}.{pname}" if prefix else pname)
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    skip = no_decay_names(model)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    groups = param_groups(model, recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.999))


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak rate at `step`: linear warmup from 0, then cosine down to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_schedule(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule for `recipe.epochs` epochs of `steps_per_epoch` steps."""
    total = recipe.epochs * steps_per_epoch
    warmup = min(total, round(recipe.warmup_epochs * steps_per_epoch))
    min_ratio = recipe.min_lr / recipe.lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, min_ratio))
