"""Classification losses for hard or soft (mixed, smoothed) targets, and DeiT's distillation losses.

Distillation follows Touvron et al. 2021 (DeiT), with Z_s the student's logits, Z_t the teacher's,
psi the softmax and y the ground truth:

    soft:  (1 - lam) CE(psi(Z_s), y) + lam tau^2 KL(psi(Z_t / tau) || psi(Z_s / tau))
    hard:  1/2 CE(psi(Z_s), y) + 1/2 CE(psi(Z_s), argmax Z_t)

A model with a distillation token returns (class logits, distillation logits): the ground-truth term
then uses the class logits and the teacher term the distillation logits, which is how DeiT trains
its two heads. A model without one uses the same logits in both terms.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

KINDS = ("none", "soft", "hard")


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of -sum_k targets_k log softmax(logits)_k; `targets` (B, K) are probabilities."""
    if logits.shape != targets.shape:
        raise ValueError(f"soft targets {tuple(targets.shape)} must match the logits {tuple(logits.shape)}")
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def classification_loss(logits: Tensor, targets: Tensor, smoothing: float = 0.0) -> Tensor:
    """Cross-entropy against int64 class indices (B,) or float probabilities (B, K). `smoothing`
    applies to class indices only (soft targets already carry theirs, see mix.one_hot_smooth)."""
    if targets.is_floating_point():
        return soft_cross_entropy(logits, targets)
    return F.cross_entropy(logits, targets, label_smoothing=smoothing)


def _split(student_out: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """(logits for the ground truth, logits for the teacher)."""
    if isinstance(student_out, Tensor):
        return student_out, student_out
    if isinstance(student_out, (tuple, list)) and len(student_out) == 2:
        return student_out[0], student_out[1]
    raise ValueError("student output must be logits or a (class logits, distillation logits) pair, "
                     f"got {type(student_out).__name__}")


def check_distillation(kind: str, tau: float, lam: float) -> None:
    """Raise ValueError for a distillation setting that makes no sense (a config error, not a bug)."""
    if kind not in KINDS:
        raise ValueError(f"distillation kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"distillation temperature tau must be > 0, got {tau}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"distillation weight lam must be in [0, 1], got {lam}")


def distillation_loss(student_out: Tensor | tuple[Tensor, Tensor], targets: Tensor,
                      teacher_logits: Tensor | None, kind: str = "hard", tau: float = 3.0,
                      lam: float = 0.1, smoothing: float = 0.0) -> Tensor:
    """DeiT's loss (see the module doc). `targets`: int64 (B,) or soft (B, K) ground truth;
    `teacher_logits` (B, K) are detached here (no gradient flows into the teacher).

    Normalisation as in DeiT's official code (facebookresearch/deit, losses.py, DistillationLoss):
    the soft term is ``F.kl_div(log_softmax(Z_s/tau), log_softmax(Z_t/tau), reduction='sum',
    log_target=True) * tau**2 / Z_s.numel()``, i.e. the KL summed over the batch and classes and then
    divided by B*K (not by B): the legacy elementwise mean, kept on purpose by the authors so their
    results reproduce (deit issue #61). `tau` and `lam` matter for kind='soft' only: 'hard' is the
    paper's fixed 1/2 + 1/2 (DeiT's code weighs it by its alpha, 0.5 by default: the same loss),
    and 'none' is the classification loss of the class logits alone. `smoothing` is label smoothing
    of int targets in the ground-truth term."""
    check_distillation(kind, tau, lam)
    cls_logits, dist_logits = _split(student_out)
    base = classification_loss(cls_logits, targets, smoothing)
    if kind == "none":
        return base
    if teacher_logits is None:
        raise ValueError(f"{kind} distillation needs the teacher's logits")
    if teacher_logits.shape != dist_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} must match the student's "
                         f"{tuple(dist_logits.shape)}")
    teacher_logits = teacher_logits.detach()
    if kind == "hard":
        return 0.5 * base + 0.5 * F.cross_entropy(dist_logits, teacher_logits.argmax(dim=-1))
    kl = F.kl_div(F.log_softmax(dist_logits / tau, dim=-1), F.log_softmax(teacher_logits / tau, dim=-1),
                  reduction="sum", log_target=True)
    return (1.0 - lam) * base + lam * kl * (tau * tau) / dist_logits.numel()
