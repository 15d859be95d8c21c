"""Zero-cost proxies: scores of an untrained network on one batch, which NAS papers use to rank
architectures before training them. Each is only worth its cost where it ranks trained accuracy
better than the two free baselines, #params and MACs (`lab bench proxies` measures exactly that).

- synflow (Tanaka et al. 2020): the network with every weight made positive, on an all-ones input in
  float64 and eval mode; R = sum of the outputs; score = sum over weights of theta * dR/dtheta.
- naswot (Mellor et al. 2021): the binary codes of which activation inputs are positive, one code per
  image of the batch; K[i, j] = units where images i and j agree; score = log|det K|.
- grad_norm (Abdelfattah et al. 2021): the sum over weight tensors of the L2 norm of the loss's gradient.
- snip (Lee et al. 2019): sum over weights of |theta * dL/dtheta|.

"Weights" are every parameter. grad_norm and snip use the cross-entropy of the batch in train mode
(batch statistics, as the first training step sees them). A proxy that fails or is not finite is None.

    scores = score_point(spec, dataset, seed=0)   # {"synflow": (value, seconds), ...}
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from lab.build import build
from lab.data import Augment, Dataset
from lab.grammar import Spec
from lab.train.record import PROXIES

PROXY_BATCH = 64   # images in the one batch every proxy sees

# the activation functions whose inputs' signs make NASWOT's codes (F.relu, nn.ReLU, F.gelu, nn.GELU, ...)
_ACTIVATIONS = frozenset({"relu", "relu_", "gelu", "silu", "hardswish", "leaky_relu", "elu", "mish"})


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, tuple):   # a distilled model trains two heads: both count
        out = torch.cat(out, dim=-1)
    return out


def synflow(model: nn.Module, x: torch.Tensor) -> float:
    """Synaptic flow of `model` at the shape of `x` (the input's values are not used)."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64)
    _outputs(net, ones).sum().backward()
    return float(sum((p.detach() * p.grad).sum() for p in net.parameters() if p.grad is not None))


class _Codes(TorchFunctionMode):
    """Collects, for every activation function called, which inputs are positive (per batch row)."""

    def __init__(self) -> None:
        super().__init__()
        self.codes: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in _ACTIVATIONS and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            self.codes.append((x.detach() > 0).reshape(x.shape[0], -1).to(torch.float64))
        return func(*args, **(kwargs or {}))


def naswot(model: nn.Module, x: torch.Tensor) -> float:
    """log |det K| of the batch's activation-pattern kernel (one row per image of `x`)."""
    net = copy.deepcopy(model).train()
    mode = _Codes()
    with torch.no_grad(), mode:
        _outputs(net, x)
    if not mode.codes:
        raise ValueError("the network calls no activation function")
    c = torch.cat(mode.codes, dim=1)
    kernel = c @ c.T + (1 - c) @ (1 - c).T
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if float(sign) != 0 else -math.inf


def _loss_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """A copy of `model` (train mode) holding the gradients of the batch's cross-entropy."""
    net = copy.deepcopy(model).train()
    out = net(x)
    outs = out if isinstance(out, tuple) else (out,)
    sum(F.cross_entropy(o, y) for o in outs).backward()
    return net


def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Sum over parameter tensors of the L2 norm of dL/dtheta."""
    net = _loss_grads(model, x, y)
    return float(sum(p.grad.norm() for p in net.parameters() if p.grad is not None))


def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Sum over parameters of |theta * dL/dtheta|."""
    net = _loss_grads(model, x, y)
    return float(sum((p.detach() * p.grad).abs().sum() for p in net.parameters() if p.grad is not None))


SCORERS: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], float]] = {
    "synflow": lambda m, x, y: synflow(m, x),
    "naswot": lambda m, x, y: naswot(m, x),
    "grad_norm": grad_norm,
    "snip": snip,
}


def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
          which: tuple[str, ...] = PROXIES) -> dict[str, tuple[float | None, float]]:
    """Each proxy of `which` on `model` (left unchanged) and the batch (x, y): name -> (value or None, seconds)."""
    out: dict[str, tuple[float | None, float]] = {}
    for name in which:
        start = time.perf_counter()
        try:
            value: float | None = SCORERS[name](model, x, y)
        except Exception:   # a proxy that cannot be computed on this network is missing, not fatal
            value = None
        if value is not None and not math.isfinite(value):
            value = None
        out[name] = (value, time.perf_counter() - start)
    return out


def proxy_batch(data: Dataset, spec: Spec, seed: int, size: int = PROXY_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `size` training images in the seed's order, normalized as evaluation sees them."""
    images, labels = next(iter(data.train.batches(min(size, data.n_train), shuffle=True, seed=seed)))
    return Augment(data, res=spec.res, train=False, frames=spec.frames)(images), labels


def columns(scores: dict[str, tuple[float | None, float]]) -> dict[str, float | None]:
    """`score`'s result as a trial row's columns: zc_NAME (the value) and zc_NAME_seconds (its cost)."""
    out: dict[str, float | None] = {}
    for name, (value, seconds) in scores.items():
        out[f"zc_{name}"], out[f"zc_{name}_seconds"] = value, seconds
    return out


def score_point(spec: Spec, data: Dataset, seed: int = 0,
                which: tuple[str, ...] = PROXIES) -> dict[str, tuple[float | None, float]]:
    """The proxies of `spec` as a run with `seed` would initialize it, on one batch of `data`. Torch's
    random state is restored afterwards: the training that follows draws the same numbers as without."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(spec, num_classes=data.num_classes, in_chans=data.in_chans)
        x, y = proxy_batch(data, spec, seed)
        return score(model, x, y, which)
