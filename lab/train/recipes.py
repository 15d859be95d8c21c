"""Training recipes: the lecture's named presets as data.

A recipe is every training choice that is not the architecture, the data or the seed. Presets
are starting points; any field can be overridden (`recipe("vit", epochs=3, lr=1e-3)`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lab.errors import TrainError

OPTIMIZERS = ("adamw", "sgd")
CROPS = ("pad", "rrc", "resize", "none")
DISTILL_KINDS = ("hard", "soft")


@dataclass(frozen=True)
class Recipe:
    name: str = "default"
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adamw"         # AdamW(beta1 0.9, beta2 0.999) or SGD with momentum 0.9
    lr: float = 2e-3                 # peak learning rate, reached after the warmup
    min_lr: float = 1e-5             # the end of the cosine decay
    weight_decay: float = 0.05       # never on norms, biases, tokens, position embeddings, rel-pos tables
    warmup_epochs: float = 1.0       # linear warmup from 0, then cosine to min_lr
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0         # MixUp/CutMix are off when both alphas are 0
    cutmix_alpha: float = 0.0
    mix_min_images: int = 0          # mixing only when the training split has more images (BiT-HyperRule)
    drop_path: float = 0.0           # stochastic depth of the last block (linear in depth)
    dropout: float | None = None     # None keeps the architecture's `drop` ops; a value overrides them all
    grad_clip: float = 0.0           # max global grad norm; 0 = off
    ema: float = 0.0                 # EMA decay of the weights (e.g. 0.999); 0 = off. Evaluation uses the EMA
    crop: str = "pad"                # pad (random crop with padding), rrc (random-resized), resize (BiT), none
    pad: int = 2                     # padding of the `pad` crop, in pixels
    crop_scale: float = 0.35         # smallest area fraction of the random-resized crop
    flip: bool | None = None         # horizontal flip; None: where it makes sense for the dataset
    distill: str = "hard"            # with a teacher: DeiT hard or soft distillation
    tau: float = 3.0                 # soft distillation temperature
    lam: float = 0.1                 # soft distillation weight of the teacher term

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
            ("lr", self.lr > 0, "positive"),
            ("min_lr", 0 <= self.min_lr <= self.lr, "between 0 and lr"),
            ("weight_decay", self.weight_decay >= 0, "non-negative"),
            ("warmup_epochs", self.warmup_epochs >= 0, "non-negative"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("mixup_alpha", self.mixup_alpha >= 0, "non-negative"),
            ("cutmix_alpha", self.cutmix_alpha >= 0, "non-negative"),
            ("mix_min_images", self.mix_min_images >= 0, "non-negative"),
            ("drop_path", 0 <= self.drop_path < 1, "in [0, 1)"),
            ("dropout", self.dropout is None or 0 <= self.dropout < 1, "in [0, 1)"),
            ("grad_clip", self.grad_clip >= 0, "non-negative"),
            ("ema", 0 <= self.ema < 1, "in [0, 1)"),
            ("crop", self.crop in CROPS, f"one of {', '.join(CROPS)}"),
            ("pad", self.pad >= 0, "non-negative"),
            ("crop_scale", 0 < self.crop_scale <= 1, "in (0, 1]"),
            ("distill", self.distill in DISTILL_KINDS, f"one of {', '.join(DISTILL_KINDS)}"),
            ("tau", self.tau > 0, "positive"),
            ("lam", 0 <= self.lam <= 1, "in [0, 1]"),
        ]
        for field, ok, expected in checks:
            if not ok:
                raise TrainError(f"recipe {self.name!r}: {field} = {getattr(self, field)!r} must be {expected}")

    def mixes(self, n_train: int) -> bool:
        """Whether MixUp/CutMix is on for a training split of `n_train` images."""
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and n_train > self.mix_min_images

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, Recipe] = {
    # A conv-friendly baseline: AdamW, short warmup, cosine, light padding crops.
    "default": Recipe(),
    # ViT from scratch (Dosovitskiy et al.): warmup and a high weight decay (0.1), label smoothing,
    # gradient clipping at norm 1.
    "vit": Recipe(name="vit", lr=1e-3, weight_decay=0.1, warmup_epochs=3.0, label_smoothing=0.1, grad_clip=1.0),
    # DeiT (Touvron et al.): the ViT recipe made data-efficient: random-resized crops, MixUp 0.8 and
    # CutMix 1.0, label smoothing 0.1, stochastic depth 0.1, weight decay 0.05, EMA; hard distillation
    # when a teacher is given.
    "deit": Recipe(name="deit", lr=1e-3, weight_decay=0.05, warmup_epochs=3.0, label_smoothing=0.1,
                   mixup_alpha=0.8, cutmix_alpha=1.0, drop_path=0.1, grad_clip=1.0, ema=0.999, crop="rrc"),
    # BiT-HyperRule fine-tuning (Kolesnikov et al.): SGD momentum 0.9 at lr 0.003, no weight decay, no
    # dropout, MixUp (alpha 0.1) only for datasets over 20k images, resize -> random crop -> flip.
    # (BiT decays the rate in steps; the lab uses its one warmup + cosine schedule.)
    "bit-finetune": Recipe(name="bit-finetune", optimizer="sgd", lr=3e-3, min_lr=0.0, weight_decay=0.0,
                           warmup_epochs=0.5, mixup_alpha=0.1, mix_min_images=20_000, dropout=0.0, crop="resize"),
}


# BiT-HyperRule's schedule length (optimizer steps) for downstream sets under 20k images: the default of
# lab.train.transfer's fine-tunes, kept here (no torch import) for `lab transfer --help`
HYPERRULE_STEPS = 500


def recipe(name: str = "default", **overrides) -> Recipe:
    """The preset `name` with `overrides` applied (None values are ignored)."""
    if name not in PRESETS:
        raise TrainError(f"unknown recipe {name!r} (known: {', '.join(PRESETS)})")
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TrainError(f"unknown recipe field {unknown[0]!r} (known: {', '.join(sorted(fields - {'name'}))})")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(PRESETS[name], **changes)
