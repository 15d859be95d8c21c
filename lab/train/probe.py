"""Few-shot linear probes on frozen features (BiT / ViT style transfer evaluation).

`extract_features` runs a model without its classifier; `few_shot_probe` samples k labelled
examples per class, standardizes with their statistics, fits a linear classifier on them and scores
it on the whole test set, for several k and seeds. Two fits: closed-form ridge regression onto
{-1, +1} one-vs-rest targets (the ViT paper's few-shot protocol), or L2-regularised multinomial
logistic regression by full-batch L-BFGS.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lab.data import Augment, load_dataset
from lab.data.split import few_shot
from lab.grammar import parse
from lab.kinds.tokens import DistilledHead
from lab.memory import require_fits
from lab.train.checkpoint import check_input, load_checkpoint

METHODS = ("ridge", "lbfgs")

# Default ridge penalty, as a fraction of the mean nonzero eigenvalue of the support set's Gram
# matrix (trace(X X^T) / min(n, d); about max(n, d) for standardized features): tied to the
# features' own scale, one fraction means the same relative shrinkage for any width and shot count.
# No value suits every geometry: on synthetic checks isotropic class noise wants heavy shrinkage
# (towards a nearest-class-mean rule) while strong correlated nuisance directions, as in deep
# features, want little (to whiten them away); 0.03 loses little in the first and much less than
# larger values in the second. Not tuned on any benchmark; pass l2 to choose.
RIDGE_L2_FRACTION = 0.03
# Default logistic penalty: l2 in  sum_i CE_i + l2/2 ||W||^2,  scikit-learn's default (C = 1/l2 = 1),
# a sensible strength on standardized features.
LOGISTIC_L2 = 1.0


# --- features ----------------------------------------------------------------------------


def features(model: nn.Module, x: Tensor) -> Tensor:
    """(B, D) pre-logit features: the model's head without its classifier.

    lab models (and any model with `forward_features` and an nn.Sequential `head` ending in its
    classifier) run head[:-1]; a final linear classifier leaves the pooled vector, flattened. A DeiT
    distilled head leaves the class and distillation tokens: their average is the feature, as the
    head itself returns when built without classes (and as timm's distilled DeiT pre-logits do): one
    vector of the model's width, like every other model's, rather than a concatenation. A head whose last module is
    no classifier (a model built with num_classes=0) runs whole. Other timm-style models use
    forward_head(..., pre_logits=True)."""
    head = getattr(model, "head", None)
    if hasattr(model, "forward_features") and isinstance(head, nn.Sequential) and len(head):
        x = model.forward_features(x)
        *body, last = head
        for module in body:
            x = module(x)
        if isinstance(last, DistilledHead):
            return (x[:, 0] + x[:, 1]) / 2
        if not isinstance(last, nn.Linear):
            x = last(x)
        return x.flatten(1)
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return model.forward_head(model.forward_features(x), pre_logits=True).flatten(1)
    raise TypeError(f"cannot take features of a {type(model).__name__}: expected forward_features and "
                    "an nn.Sequential head ending in the classifier (or timm's forward_head(pre_logits=True))")


@torch.no_grad()
def extract_features(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                     transform: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Features and labels of every batch -> ((N, D) float32, (N,) int64), both on the CPU.
    Runs in eval mode on the model's device; every module's train/eval mode is restored after."""
    modes = [(m, m.training) for m in model.modules()]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    feats, labels = [], []
    model.eval()
    try:
        for images, y in batches:
            images = images.to(device)
            if transform is not None:
                images = transform(images)
            feats.append(features(model, images).float().cpu())
            labels.append(torch.as_tensor(y).long().cpu())
    finally:
        for m, training in modes:
            m.training = training
    if not feats:
        raise ValueError("no batches to extract features from")
    return torch.cat(feats), torch.cat(labels)


# --- linear fits -------------------------------------------------------------------------


def standardize(support: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Centre and scale every feature by the support set's mean and (population) std; constant
    features keep scale 1 rather than dividing by zero."""
    mean = support.mean(0)
    std = support.std(0, correction=0)
    std = torch.where(std > 1e-12 * std.max().clamp_min(1e-300), std, torch.ones_like(std))
    return tuple((t - mean) / std for t in (support, *others))


def default_ridge_l2(x: Tensor) -> float:
    """RIDGE_L2_FRACTION of the mean nonzero eigenvalue of the Gram matrix of (centred) x."""
    n, d = x.shape
    return RIDGE_L2_FRACTION * float((x * x).sum()) / max(1, min(n, d))


def fit_ridge(x: Tensor, y: Tensor, num_classes: int, l2: float) -> tuple[Tensor, Tensor]:
    """Ridge regression of {-1, +1} one-vs-rest targets on x -> (W (d, K), b (K,)), unpenalised
    intercept. Primal (X^T X + l2 I) W = X^T Y when n >= d, else the dual W = X^T (X X^T + l2 I)^-1 Y
    (the same solution, at the cost of an n x n system)."""
    x = x.double()
    targets = 2.0 * F.one_hot(y, num_classes).double() - 1.0
    x_mean, t_mean = x.mean(0), targets.mean(0)
    xc, tc = x - x_mean, targets - t_mean
    n, d = xc.shape
    if n >= d:
        w = torch.linalg.solve(xc.T @ xc + l2 * torch.eye(d, dtype=xc.dtype), xc.T @ tc)
    else:
        w = xc.T @ torch.linalg.solve(xc @ xc.T + l2 * torch.eye(n, dtype=xc.dtype), tc)
    return w, t_mean - x_mean @ w


def fit_logistic(x: Tensor, y: Tensor, num_classes: int, l2: float,
                 max_iter: int = 500) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression minimising  sum_i CE_i + l2/2 ||W||^2  (intercept
    unpenalised; scikit-learn's objective with C = 1/l2) by full-batch L-BFGS with a strong-Wolfe
    line search, in float64 from zero -> (W (d, K), b (K,))."""
    x = x.double()
    n, d = x.shape
    w = torch.zeros(d, num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-10,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        # divided by n: the same minimiser, gradients of order one for the tolerances
        loss = (F.cross_entropy(x @ w + b, y, reduction="sum") + 0.5 * l2 * (w * w).sum()) / n
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


sample_support = few_shot  # the k-shot support of a probe: the images a k-shot fine-tune trains on


# --- the probe ---------------------------------------------------------------------------


def few_shot_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                   shots: Sequence[int] = (1, 5, 10, 25), seeds: Sequence[int] = (0, 1, 2),
                   method: str = "ridge", l2: float | None = None) -> dict:
    """k-shot linear-probe accuracy on the whole test set, for every k in `shots` over `seeds`.

    Returns {"method", "l2", "shots": {k: {"mean", "std", "seeds": [acc per seed]}}, "skipped":
    {k: why}}; accuracies in [0, 1], std over seeds with Bessel's correction (0 for one seed). A k
    above the smallest class's size is skipped, with the reason under "skipped". `l2` None picks
    the default penalty of the method (see RIDGE_L2_FRACTION and LOGISTIC_L2)."""
    if method not in METHODS:
        raise ValueError(f"probe method must be one of {', '.join(METHODS)}, got {method!r}")
    if l2 is not None and not l2 > 0:
        raise ValueError(f"probe l2 penalty must be > 0, got {l2}")
    if not seeds:
        raise ValueError("probe needs at least one seed")
    if any(int(k) != k or k < 1 for k in shots):
        raise ValueError(f"shots must be positive integers, got {list(shots)}")
    train_x, test_x = torch.as_tensor(train_x).double(), torch.as_tensor(test_x).double()
    train_y, test_y = torch.as_tensor(train_y).long(), torch.as_tensor(test_y).long()
    if train_x.dim() != 2 or test_x.dim() != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"features must be (N, D) with one D, got {tuple(train_x.shape)} and {tuple(test_x.shape)}")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError("features and labels differ in length")
    # the classifier's outputs cover every label seen in either set, so unseen test classes score as errors
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    smallest = int(torch.unique(train_y, return_counts=True)[1].min())

    result: dict = {"method": method,
                    "l2": l2 if l2 is not None else
                    (f"{RIDGE_L2_FRACTION} x mean Gram eigenvalue" if method == "ridge" else LOGISTIC_L2),
                    "shots": {}, "skipped": {}}
    for k in shots:
        if k > smallest:
            result["skipped"][k] = f"{k}-shot needs {k} examples per class; the smallest class has {smallest}"
            continue
        accs = []
        for seed in seeds:
            idx = sample_support(train_y, k, seed)
            sx, tx = standardize(train_x[idx], test_x)
            sy = train_y[idx]
            if method == "ridge":
                w, b = fit_ridge(sx, sy, num_classes, l2 if l2 is not None else default_ridge_l2(sx))
            else:
                w, b = fit_logistic(sx, sy, num_classes, l2 if l2 is not None else LOGISTIC_L2)
            accs.append(float(((tx @ w + b).argmax(1) == test_y).double().mean()))
        result["shots"][k] = {"mean": statistics.fmean(accs),
                              "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                              "seeds": accs}
    return result


def probe_checkpoint(checkpoint, dataset: str, shots: Sequence[int] = (1, 5, 10, 25), seeds: Sequence[int] = (0, 1, 2),
                     method: str = "ridge", device: str = "cpu", data_root: str | None = None,
                     max_memory: int | None = None) -> dict:
    """BiT few-shot probe of a lab checkpoint's frozen features on `dataset`: supports are drawn from
    its train split, accuracy is measured on its test split. Returns few_shot_probe's dict plus the
    checkpoint, dataset and feature width. A model whose estimated inference memory (lab.memory) exceeds
    `max_memory` bytes (default: what `device` has available) is refused (TrainError) before it runs."""
    model, meta = load_checkpoint(checkpoint)
    ds = load_dataset(dataset, root=data_root, size=meta["res"])
    frames = check_input(meta, ds)
    require_fits(parse(meta["text"]), 256, meta["num_classes"], meta["in_chans"], max_memory, device=device,
                 train=False, label=str(checkpoint))
    model = model.to(device)
    transform = Augment(ds, res=meta["res"], train=False, frames=frames)
    train_x, train_y = extract_features(model, ds.train.batches(256, shuffle=False, device=device), transform)
    test_x, test_y = extract_features(model, ds.test.batches(256, shuffle=False, device=device), transform)
    result = few_shot_probe(train_x, train_y, test_x, test_y, shots=shots, seeds=seeds, method=method)
    result.update(checkpoint=str(checkpoint), dataset=ds.name, features=int(train_x.shape[1]))
    return result
